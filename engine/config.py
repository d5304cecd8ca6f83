"""Training settings: frozen dataclasses, validated on construction, round-tripping through dicts.

``TrainConfig.from_dict(cfg.to_dict()) == cfg`` for every valid configuration, so a run's
options can be stored as JSON and replayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from .errors import InvalidArgument, require

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine", "plateau")


def _positive(value: float, name: str) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and value > 0
    require(ok, name, f"must be a finite number > 0, got {value!r}")


def _non_negative(value: float, name: str) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and value >= 0
    require(ok, name, f"must be a finite number ≥ 0, got {value!r}")


def _fraction(value: float, name: str, upper_inclusive: bool = False) -> None:
    ok = (
        isinstance(value, int | float) and value >= 0.0 and (value <= 1.0 if upper_inclusive else value < 1.0)
    )
    require(ok, name, f"must lie in [0, 1{']' if upper_inclusive else ')'}, got {value!r}")


def _count(value: int, name: str, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, name, f"must be an integer ≥ {minimum}, got {value!r}")


def _one_of(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgument(name, f"unknown value {value!r}", allowed)


class _DictMixin:
    """``to_dict`` / ``from_dict`` for flat or nested frozen dataclasses, refusing unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> Self:
        prefix = f"{path}." if path else ""
        require(isinstance(data, Mapping), path or "config", "must be an object")
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise InvalidArgument(f"{prefix}{key}", "unknown field", sorted(known))
            nested = NESTED.get((cls.__name__, key))
            kwargs[key] = nested.from_dict(value, f"{prefix}{key}") if nested else value
        return cls(**kwargs)


@dataclass(frozen=True)
class OptimizerConfig(_DictMixin):
    """Which optimiser, its learning rate and its constants (see :mod:`.optimizers`).

    ``weight_decay`` is L2 regularisation added to the gradient (``g + λw``) for every optimiser
    but AdamW, where it is decoupled (``w ← w − ηλw`` beside the Adam step). It applies to dense
    weight matrices only, never to biases or batch-norm parameters.
    """

    name: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    rho: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _one_of(self.name, "optimizer.name", OPTIMIZER_NAMES)
        _positive(self.learning_rate, "optimizer.learning_rate")
        _fraction(self.momentum, "optimizer.momentum")
        _fraction(self.beta1, "optimizer.beta1")
        _fraction(self.beta2, "optimizer.beta2")
        _positive(self.epsilon, "optimizer.epsilon")
        _fraction(self.rho, "optimizer.rho")
        _non_negative(self.weight_decay, "optimizer.weight_decay")


@dataclass(frozen=True)
class ScheduleConfig(_DictMixin):
    """How the learning rate moves from epoch to epoch (see :mod:`.schedules`)."""

    name: str = "constant"
    step_size: int = 10
    gamma: float = 0.5
    t_max: int = 100
    min_lr: float = 0.0
    factor: float = 0.1
    patience: int = 5
    threshold: float = 1e-4

    def __post_init__(self) -> None:
        _one_of(self.name, "schedule.name", SCHEDULE_NAMES)
        _count(self.step_size, "schedule.step_size")
        ok = isinstance(self.gamma, int | float) and 0.0 < self.gamma <= 1.0
        require(ok, "schedule.gamma", f"must lie in (0, 1], got {self.gamma!r}")
        _count(self.t_max, "schedule.t_max")
        _non_negative(self.min_lr, "schedule.min_lr")
        ok = isinstance(self.factor, int | float) and 0.0 < self.factor < 1.0
        require(ok, "schedule.factor", f"must lie in (0, 1), got {self.factor!r}")
        _count(self.patience, "schedule.patience", minimum=0)
        _non_negative(self.threshold, "schedule.threshold")


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """Everything one call to :func:`gradwire.engine.fit` needs besides the data.

    Stopping
    --------
    Training runs at most ``epochs`` epochs in this call; it stops earlier when the training loss
    reaches ``loss_threshold``, or when the monitored loss (validation loss if there is
    validation data, else training loss) has not improved by more than ``min_delta`` for
    ``patience`` epochs. Validation data is given to ``fit`` or held out: ``validation_fraction``
    of the rows, stratified by class for classification losses when ``stratify``.
    """

    epochs: int = 100
    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip_norm: float | None = None
    loss_threshold: float | None = None
    validation_fraction: float = 0.0
    stratify: bool = True
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        _count(self.epochs, "epochs", minimum=0)
        _count(self.batch_size, "batch_size")
        require(isinstance(self.shuffle, bool), "shuffle", "must be true or false")
        _count(self.seed, "seed", minimum=0)
        require(isinstance(self.optimizer, OptimizerConfig), "optimizer", "must be an OptimizerConfig")
        require(isinstance(self.schedule, ScheduleConfig), "schedule", "must be a ScheduleConfig")
        if self.clip_norm is not None:
            _positive(self.clip_norm, "clip_norm")
        if self.loss_threshold is not None:
            _non_negative(self.loss_threshold, "loss_threshold")
        _fraction(self.validation_fraction, "validation_fraction")
        require(isinstance(self.stratify, bool), "stratify", "must be true or false")
        if self.patience is not None:
            _count(self.patience, "patience")
        _non_negative(self.min_delta, "min_delta")
        require(isinstance(self.restore_best, bool), "restore_best", "must be true or false")


NESTED: dict[tuple[str, str], type[_DictMixin]] = {
    ("TrainConfig", "optimizer"): OptimizerConfig,
    ("TrainConfig", "schedule"): ScheduleConfig,
}
