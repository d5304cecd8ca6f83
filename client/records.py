"""The SDK's records: what the server's replies become, the same for the sync and asyncio shells.

Part of the core under both SDKs (with :mod:`.connection`, :mod:`.calls`, :mod:`.replies`,
:mod:`.retry`, :mod:`.watching` and :mod:`.handles`): plain frozen data, built from messages
here and nowhere else, so that :mod:`.sdk` and :mod:`.aio` cannot describe a model or a run
differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.vocabulary import FINISHED

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    spec: dict[str, Any]
    version: int
    parameter_count: int
    classifier: bool
    training: bool
    created_at: datetime
    updated_at: datetime
    active_run_id: str = ""

    @classmethod
    def from_proto(cls, m: pb.Model) -> ModelInfo:
        return cls(
            m.model_id,
            m.name,
            codec.spec_to_dict(m.spec),
            m.version,
            m.parameter_count,
            m.classifier,
            m.training,
            m.created_at.ToDatetime(),
            m.updated_at.ToDatetime(),
            m.active_run_id,
        )


@dataclass(frozen=True)
class DatasetInfo:
    id: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    created_at: datetime

    @classmethod
    def from_proto(cls, d: pb.Dataset) -> DatasetInfo:
        dtype = codec.FLOAT_DTYPE_NAMES.get(d.dtype, "")
        return cls(d.dataset_id, d.name, dtype, tuple(d.shape), d.nbytes, d.created_at.ToDatetime())


@dataclass(frozen=True)
class RunInfo:
    """A run as the server last described it (see ``Run`` in the contract)."""

    id: str
    model_id: str
    status: str
    stop_reason: str
    error: str
    datasets: dict[str, str]
    base_version: int
    version: int
    best_epoch: int
    best_loss: float | None
    epochs_done: int
    epochs_planned: int
    attempts: int
    receipt: dict[str, Any]
    load_seconds: float
    train_seconds: float
    rows: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None  # while running; in the past: its server is gone

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_proto(cls, r: pb.Run) -> RunInfo:
        receipt: dict[str, Any] = {}
        if r.HasField("receipt"):
            receipt = {f.name: getattr(r.receipt, f.name) for f in r.receipt.DESCRIPTOR.fields}
            receipt["datasets"] = dict(r.receipt.datasets)
        return cls(
            r.run_id,
            r.model_id,
            r.status,
            r.stop_reason,
            r.error,
            dict(r.datasets),
            r.base_version,
            r.version,
            r.best_epoch,
            r.best_loss if r.HasField("best_loss") else None,
            r.epochs_done,
            r.epochs_planned,
            r.attempts,
            receipt,
            r.load_seconds,
            r.train_seconds,
            r.rows,
            codec.options_to_dict(r.options),
            r.cancel_requested,
            moment(r, "created_at"),
            moment(r, "started_at"),
            moment(r, "finished_at"),
            moment(r, "lease_expires_at"),
        )


@dataclass(frozen=True)
class Exported:
    """What :meth:`Model.exported` gives: the version, its arrays by name, their SHA-256 digest."""

    version: int
    arrays: dict[str, np.ndarray]
    sha256: str


@dataclass
class History:
    """A training run: its per-epoch records and how it ended (like Keras's ``History``)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    status: str = ""
    stop_reason: str = ""
    best_epoch: int = 0
    best_loss: float = float("nan")
    version: int = 0
    transfer_seconds: float = 0.0
    train_seconds: float = 0.0
    receipt: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> dict[str, list[float | None]]:
        """Per-epoch series: ``loss``, ``val_loss``, the metric, ``val_`` + metric, ``lr``."""
        metric = self.epochs[0]["metric_name"] if self.epochs else "metric"
        return {
            "loss": [e["train_loss"] for e in self.epochs],
            "val_loss": [e["val_loss"] for e in self.epochs],
            metric: [e["train_metric"] for e in self.epochs],
            f"val_{metric}": [e["val_metric"] for e in self.epochs],
            "lr": [e["learning_rate"] for e in self.epochs],
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """The run drawn: loss, metric, learning rate, and each layer's gradient norm over the
        epochs as a heatmap (:func:`gradwire.client.views.plot_history`); saved as ``path`` when
        given (PNG, or the format its suffix names). Needs matplotlib: ``gradwire[plot]``."""
        from .views import plot_history  # matplotlib is imported there, when a plot is drawn

        return plot_history(self, path)

    def to_frame(self) -> Any:
        """The epochs as a pandas DataFrame indexed by epoch, a ``grad_norm:<layer>`` column per
        layer (:func:`gradwire.client.views.history_frame`). Needs pandas."""
        from .views import history_frame

        return history_frame(self)

    def close(self, run: RunInfo, transfer_seconds: float = 0.0) -> History:
        """Take the run's ending into this history."""
        self.run_id, self.status, self.stop_reason = run.id, run.status, run.stop_reason
        self.best_epoch, self.version, self.receipt = run.best_epoch, run.version, run.receipt
        self.best_loss = float("nan") if run.best_loss is None else run.best_loss
        self.transfer_seconds = transfer_seconds + run.load_seconds
        self.train_seconds = run.train_seconds
        return self

    @classmethod
    def from_run(cls, run: pb.TrainingRun) -> History:
        return cls(
            [codec.epoch_to_dict(e) for e in run.epochs],
            run.run_id,
            run.status,
            run.stop_reason,
            run.best_epoch,
            version=run.version,
        )


def moment(message: Any, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime() if message.HasField(name) else None


def after_run(model: ModelInfo, run: RunInfo) -> ModelInfo:
    """A model as a run of it left it, read from the run's end without asking the server: the
    run's version (when it published one, at its finish), no longer training."""
    published = bool(run.version) and run.version != model.version  # 0: none
    updated = run.finished_at if published and run.finished_at is not None else model.updated_at
    return replace(
        model, version=run.version or model.version, training=False, active_run_id="", updated_at=updated
    )
