"""The plain, frozen records the store hands out: ORM rows never leave the storage package."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from gradwire.v1.vocabulary import FINISHED

DATASET_ROLES = ("inputs", "targets", "validation_inputs", "validation_targets")


@dataclass(frozen=True)
class Quotas:
    """What one tenant may hold at once; past one, the request that would go over is refused
    (:class:`gradwire.storage.QuotaExceeded`). New tenants get these defaults."""

    max_models: int = 1000
    max_parameters: int = 1_000_000_000
    """Trainable parameters of all its models together."""
    max_dataset_bytes: int = 100 << 30
    """Bytes of all its stored datasets together (inline training data is stored as datasets)."""
    max_active_runs: int = 32
    """Runs queued or running at once."""


QUOTA_WORDS = {
    "max_models": "models",
    "max_parameters": "trainable parameters",
    "max_dataset_bytes": "bytes of datasets",
    "max_active_runs": "runs queued or running",
}
"""Each quota, as what it counts."""


@dataclass(frozen=True)
class TenantRecord:
    id: str
    quotas: Quotas
    created_at: datetime


@dataclass(frozen=True)
class KeyRecord:
    """An API key as it may be shown: never its secret (nobody has it but its holder)."""

    id: str
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class ModelRecord:
    id: str
    name: str
    spec: dict[str, Any]
    parameter_count: int
    version: int
    created_at: datetime
    updated_at: datetime
    active_run_id: str | None = None


@dataclass(frozen=True)
class VersionState:
    """A weight version: the arrays, and the optimiser state that belongs to them, if a run left one."""

    version: int
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None
    optimizer_meta: dict[str, Any] | None


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    name: str
    dtype: str
    rows: int
    columns: int
    nbytes: int
    created_at: datetime


@dataclass(frozen=True)
class EpochEntry:
    epoch: int
    record: dict[str, Any]


@dataclass(frozen=True)
class RunRecord:
    id: str
    tenant: str
    model_id: str
    status: str
    stop_reason: str
    options: dict[str, Any]
    datasets: dict[str, str]
    rows: int
    base_version: int
    version: int | None
    best_epoch: int
    best_loss: float | None
    epochs_done: int
    error: str
    receipt: dict[str, Any] | None
    owner: str | None
    cancel_requested: bool
    attempts: int
    load_seconds: float
    train_seconds: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = None  # the lease's last renewal, while running
    silent_seconds: float = 0.0  # since that renewal, by the database's clock (0 unless running)
    epochs: tuple[EpochEntry, ...] = field(default=())

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Checkpoint:
    """A run's training state at the end of epoch ``epoch``: named arrays plus JSON."""

    epoch: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


@dataclass(frozen=True)
class NewEpoch:
    """One epoch as a run commits it: the columns the database keeps apart, given by the caller
    (the storage reads nothing out of ``record``), and the whole record, kept as JSON."""

    epoch: int
    train_loss: float
    val_loss: float | None
    record: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """How a run ends, as the executor reports it.

    ``weights`` (with ``optimizer``/``optimizer_meta``, the state belonging to them) become the
    model's next version when given; ``epochs`` are the records not yet committed.
    ``load_seconds`` are this attempt's; ``train_seconds`` the run's, all attempts up to its end.
    """

    status: str
    stop_reason: str
    best_epoch: int | None = None  # None: not known (a failure), the run's record keeps its own
    best_loss: float | None = None
    epochs: tuple[NewEpoch, ...] = ()
    weights: dict[str, np.ndarray] | None = None
    optimizer: dict[str, np.ndarray] | None = None
    optimizer_meta: dict[str, Any] | None = None
    receipt: dict[str, Any] | None = None
    error: str = ""
    checkpoint: Checkpoint | None = None
    load_seconds: float = 0.0
    train_seconds: float = 0.0


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None``: JSON columns accept no others."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
