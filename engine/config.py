"""Training settings: frozen dataclasses, validated on construction, round-tripping through dicts.

``TrainConfig.from_dict(cfg.to_dict()) == cfg`` for every valid configuration, so a run's
options can be stored as JSON and replayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from .errors import InvalidArgument, Problems, cut, excerpt, require

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine", "plateau")


def _number(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def _positive(value: float, name: str) -> None:
    require(_number(value) and value > 0, name, f"must be a finite number > 0, got {excerpt(value)}")


def _non_negative(value: float, name: str) -> None:
    require(_number(value) and value >= 0, name, f"must be a finite number ≥ 0, got {excerpt(value)}")


def _fraction(value: float, name: str, upper_inclusive: bool = False) -> None:
    ok = _number(value) and value >= 0.0 and (value <= 1.0 if upper_inclusive else value < 1.0)
    require(ok, name, f"must lie in [0, 1{']' if upper_inclusive else ')'}, got {excerpt(value)}")


def _open_fraction(value: float, name: str, upper_inclusive: bool) -> None:
    ok = _number(value) and value > 0.0 and (value <= 1.0 if upper_inclusive else value < 1.0)
    require(ok, name, f"must lie in (0, 1{']' if upper_inclusive else ')'}, got {excerpt(value)}")


def _count(value: int, name: str, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, name, f"must be an integer ≥ {minimum}, got {excerpt(value)}")


def _flag(value: bool, name: str) -> None:
    require(isinstance(value, bool), name, "must be true or false")


def _one_of(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgument(name, f"unknown value {excerpt(value)}", allowed)


Rule = tuple[str, Callable[[Any, str], None]]
"""A field's name and its check, called with the field's value and its name in errors."""


def _check_all(config: object, prefix: str, rules: tuple[Rule, ...]) -> None:
    """Run every rule, then report every problem at once. None passes only where it is the
    field's default (an optional setting left unset)."""
    defaults = {f.name: f.default for f in fields(config)}  # type: ignore[arg-type]
    problems = Problems()
    for name, check in rules:
        value = getattr(config, name)
        with problems.check():
            if value is None:
                require(defaults[name] is None, f"{prefix}{name}", "must be set")
            else:
                check(value, f"{prefix}{name}")
    problems.raise_any()


class _DictMixin:
    """``to_dict`` / ``from_dict`` for flat or nested frozen dataclasses, refusing unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> Self:
        prefix = f"{path}." if path else ""
        require(isinstance(data, Mapping), path or "config", "must be an object")
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        problems = Problems()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():  # a key that fails is left out, so the rest is still checked
            with problems.check():
                if key not in known:
                    raise InvalidArgument(f"{prefix}{cut(str(key))}", "unknown field", sorted(known))
                nested = NESTED.get((cls.__name__, key))
                kwargs[key] = nested.from_dict(value, f"{prefix}{key}") if nested else value
        with problems.check():
            made = cls(**kwargs)
        problems.raise_any()
        return made


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
        _check_all(self, "optimizer.", OPTIMIZER_RULES)


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
        _check_all(self, "schedule.", SCHEDULE_RULES)


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
        _check_all(self, "", TRAIN_RULES)


OPTIMIZER_RULES: tuple[Rule, ...] = (
    ("name", lambda v, n: _one_of(v, n, OPTIMIZER_NAMES)),
    ("learning_rate", _positive),
    ("momentum", _fraction),
    ("beta1", _fraction),
    ("beta2", _fraction),
    ("epsilon", _positive),
    ("rho", _fraction),
    ("weight_decay", _non_negative),
)
SCHEDULE_RULES: tuple[Rule, ...] = (
    ("name", lambda v, n: _one_of(v, n, SCHEDULE_NAMES)),
    ("step_size", _count),
    ("gamma", lambda v, n: _open_fraction(v, n, upper_inclusive=True)),
    ("t_max", _count),
    ("min_lr", _non_negative),
    ("factor", lambda v, n: _open_fraction(v, n, upper_inclusive=False)),
    ("patience", lambda v, n: _count(v, n, minimum=0)),
    ("threshold", _non_negative),
)
TRAIN_RULES: tuple[Rule, ...] = (
    ("epochs", lambda v, n: _count(v, n, minimum=0)),
    ("batch_size", _count),
    ("shuffle", _flag),
    ("seed", lambda v, n: _count(v, n, minimum=0)),
    ("optimizer", lambda v, n: require(isinstance(v, OptimizerConfig), n, "must be an OptimizerConfig")),
    ("schedule", lambda v, n: require(isinstance(v, ScheduleConfig), n, "must be a ScheduleConfig")),
    ("clip_norm", _positive),
    ("loss_threshold", _non_negative),
    ("validation_fraction", _fraction),
    ("stratify", _flag),
    ("patience", _count),
    ("min_delta", _non_negative),
    ("restore_best", _flag),
)
"""Each configuration's checks, field by field; unset optional fields are not checked."""

NESTED: dict[tuple[str, str], type[_DictMixin]] = {
    ("TrainConfig", "optimizer"): OptimizerConfig,
    ("TrainConfig", "schedule"): ScheduleConfig,
}
