"""Exact resume: a trainer's complete state as plain arrays plus JSON, never a pickle.

A :class:`TrainingState` holds

* ``arrays``: the current weights and buffers (``weights/<name>``), the best epoch's
  (``best/<name>``), the optimiser's slots over the flat parameter buffer
  (``optimizer/<slot>``) and the optimiser's slots at the best epoch (``best_optimizer/<slot>``);
* ``meta``: the spec, the training config, the epoch counter, the shuffle generator's state,
  the schedule's and optimiser's counters, the best-so-far bookkeeping and the history.

Training N epochs in one go and training k, exporting, importing and training N − k more give
bit-identical weights and history (elapsed times aside). :func:`save` and :func:`load` write
one ``.npz`` file with the JSON inside it as bytes, readable with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .config import TrainConfig
from .errors import InvalidArgument
from .network import Network
from .optimizers import OptimizerState
from .spec import NetworkSpec
from .training import Best, EpochRecord, Trainer

Array = np.ndarray

FORMAT = "gradwire.training-state/2"
FORMAT_1 = "gradwire.training-state/1"
"""States of format 1 lack the best epoch's optimiser state; they load with the optimiser's
current state standing in for it."""
META_KEY = "__meta__"


@dataclass(frozen=True)
class TrainingState:
    arrays: dict[str, Array]
    meta: dict[str, Any]


def _prefixed(prefix: str, arrays: dict[str, Array]) -> dict[str, Array]:
    return {f"{prefix}/{name}": a for name, a in arrays.items()}


def _unprefixed(prefix: str, arrays: dict[str, Array]) -> dict[str, Array]:
    start = len(prefix) + 1
    return {name[start:]: a for name, a in arrays.items() if name.startswith(f"{prefix}/")}


def export_state(trainer: Trainer, with_history: bool = True) -> TrainingState:
    """Everything needed to continue ``trainer`` exactly; the arrays are copies.

    ``with_history=False`` leaves the per-epoch history out (a caller that keeps it elsewhere
    saves writing it again every epoch); such a state resumes with an empty history.
    """
    net = trainer.network
    slots, opt_meta = trainer.optimizer.export_state()
    best = trainer.best
    arrays = {
        **_prefixed("weights", net.state_arrays()),
        **_prefixed("best", {k: v.copy() for k, v in best.arrays.items()}),
        **_prefixed("optimizer", slots),
        **_prefixed("best_optimizer", {k: v.copy() for k, v in best.optimizer.slots.items()}),
    }
    meta = {
        "format": FORMAT,
        "spec": net.spec.to_dict(),
        "config": trainer.config.to_dict(),
        "epoch": trainer.epoch,
        "rng": trainer.rng.bit_generator.state,
        "schedule": trainer.schedule.export_state(),
        "optimizer": opt_meta,
        "best": {
            "loss": best.loss if math.isfinite(best.loss) else None,
            "epoch": best.epoch,
            "bad_epochs": best.bad_epochs,
            "optimizer": best.optimizer.meta,
        },
        "history": [asdict(r) for r in trainer.history] if with_history else [],
    }
    return TrainingState(arrays, meta)


def restore_trainer(state: TrainingState) -> Trainer:
    """A new :class:`Trainer`, and its network, continuing from ``state``."""
    meta = state.meta
    if meta.get("format") not in (FORMAT, FORMAT_1):
        raise InvalidArgument("state.format", f"expected {FORMAT!r}, got {meta.get('format')!r}")
    network = Network.from_state(NetworkSpec.from_dict(meta["spec"]), _unprefixed("weights", state.arrays))
    trainer = Trainer(network, TrainConfig.from_dict(meta["config"]))
    trainer.optimizer.import_state(_unprefixed("optimizer", state.arrays), meta["optimizer"])
    trainer.schedule.import_state(meta["schedule"])
    trainer.rng.bit_generator.state = meta["rng"]
    trainer.epoch = int(meta["epoch"])
    b = meta["best"]
    best_optimizer = trainer.optimizer.snapshot()
    if "optimizer" in b:
        best_optimizer = OptimizerState(
            b["optimizer"]["name"], int(b["optimizer"]["t"]), _unprefixed("best_optimizer", state.arrays)
        )
    trainer.best = Best(
        math.inf if b["loss"] is None else float(b["loss"]),
        int(b["epoch"]),
        _unprefixed("best", state.arrays),
        best_optimizer,
        int(b["bad_epochs"]),
    )
    trainer.history = [EpochRecord(**r) for r in meta["history"]]
    return trainer


def save(state: TrainingState, file: str | Path | IO[bytes]) -> None:
    """Write ``state`` as one ``.npz`` (the JSON stored as a byte array)."""
    contents: dict[str, Any] = {
        **state.arrays,
        META_KEY: np.frombuffer(json.dumps(state.meta).encode(), np.uint8),
    }
    np.savez(file, **contents)


def load(file: str | Path | IO[bytes]) -> TrainingState:
    """Read a state written by :func:`save`; refuses pickled content."""
    with np.load(file, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != META_KEY}
        meta = json.loads(data[META_KEY].tobytes().decode())
    return TrainingState(arrays, meta)


def to_bytes(state: TrainingState) -> bytes:
    buffer = io.BytesIO()
    save(state, buffer)
    return buffer.getvalue()


def from_bytes(blob: bytes) -> TrainingState:
    return load(io.BytesIO(blob))


def final_state(trainer: Trainer, restore_best: bool) -> tuple[dict[str, Array], OptimizerState]:
    """What a finished run leaves: the best epoch's weights and optimiser state (or the last
    ones, without ``restore_best``), always a pair that belongs together. Copies."""
    if restore_best:
        best = trainer.best
        return {k: v.copy() for k, v in best.arrays.items()}, best.optimizer
    return trainer.network.state_arrays(), trainer.optimizer.snapshot()


def carry_optimizer_state(trainer: Trainer, state: OptimizerState) -> bool:
    """Continue ``trainer``'s optimiser from ``state``, left by an earlier run together with the
    weights ``trainer`` starts from (see :func:`final_state`).

    The slots (velocities, moment estimates) and the step count carry over when the earlier run
    used the same optimiser on the same parameter layout; returns whether they did. Weights,
    schedule and counters stay the trainer's own: a new run starts its epochs at 1.
    """
    mine = trainer.optimizer.state
    compatible = state.name == trainer.config.optimizer.name and set(state.slots) == set(mine)
    if not compatible or any(state.slots[k].shape != v.shape for k, v in mine.items()):
        return False
    trainer.optimizer.restore(state)
    trainer.rebase_best()
    return True
