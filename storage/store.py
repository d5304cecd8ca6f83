"""The store: one method per use case, each one transaction, plain records in and out.

Arrays are passed as ``dict[str, np.ndarray]`` and stored by :mod:`.blobs` (``.npz`` without
pickles, with a checksum); specs, options and epoch records as JSON. ORM rows are turned into the
frozen records below before they leave a method.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from . import blobs
from .errors import NotFound
from .schema import CheckpointRow, EpochRow, ModelRow, RunRow, WeightVersionRow, now

Arrays = Mapping[str, np.ndarray]

RUN_STATUSES = ("running", "completed", "cancelled", "failed", "interrupted")


@dataclass(frozen=True)
class ModelRecord:
    id: str
    name: str
    spec: dict[str, Any]
    parameter_count: int
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class EpochEntry:
    epoch: int
    record: dict[str, Any]


@dataclass(frozen=True)
class RunRecord:
    id: str
    model_id: str
    status: str
    stop_reason: str
    options: dict[str, Any]
    rows: int
    base_version: int
    version: int | None
    best_epoch: int
    started_at: datetime
    finished_at: datetime | None
    epochs: tuple[EpochEntry, ...] = field(default=())


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    epoch: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None``: JSON columns accept no others."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _model(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        row.id, row.name, row.spec, row.parameter_count, row.current_version, row.created_at, row.updated_at
    )


def _run(row: RunRow, epochs: tuple[EpochEntry, ...] = ()) -> RunRecord:
    return RunRecord(
        row.id,
        row.model_id,
        row.status,
        row.stop_reason,
        row.options,
        row.rows,
        row.base_version,
        row.version,
        row.best_epoch,
        row.started_at,
        row.finished_at,
        epochs,
    )


class Store:
    """Models, weight versions, checkpoints and training history in one SQL database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    # ------------------------------------------------------------------ models

    def create_model(
        self, name: str, spec: dict[str, Any], weights: Arrays, parameter_count: int
    ) -> ModelRecord:
        """A new model at version 1 holding ``weights`` (``parameter_count`` of them trainable)."""
        blob, checksum = blobs.pack(weights)
        with self.sessions.begin() as s:
            row = ModelRow(
                id=uuid.uuid4().hex, name=name, spec=spec, parameter_count=parameter_count, current_version=1
            )
            s.add(row)
            s.flush()
            s.add(WeightVersionRow(model_id=row.id, version=1, weights=blob, checksum=checksum))
            return _model(row)

    def get_model(self, model_id: str) -> ModelRecord:
        with self.sessions() as s:
            return _model(self._model_row(s, model_id))

    def list_models(self, limit: int, after: tuple[datetime, str] | None = None) -> list[ModelRecord]:
        """Up to ``limit`` models in creation order, after the ``(created_at, id)`` given."""
        query = select(ModelRow).order_by(ModelRow.created_at, ModelRow.id).limit(limit)
        if after is not None:
            created, key = after
            query = query.where(
                (ModelRow.created_at > created) | ((ModelRow.created_at == created) & (ModelRow.id > key))
            )
        with self.sessions() as s:
            return [_model(row) for row in s.scalars(query)]

    def delete_model(self, model_id: str) -> None:
        """Delete a model with its versions, checkpoint and history."""
        with self.sessions.begin() as s:
            self._model_row(s, model_id)
            run_ids = select(RunRow.id).where(RunRow.model_id == model_id)
            # Children first: SQLite enforces cascades only with foreign keys on, so be explicit.
            s.execute(delete(EpochRow).where(EpochRow.run_id.in_(run_ids)))
            for table in (RunRow, CheckpointRow, WeightVersionRow):
                s.execute(delete(table).where(table.model_id == model_id))
            s.execute(delete(ModelRow).where(ModelRow.id == model_id))

    def load_weights(self, model_id: str, version: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
        """``(version, arrays)`` of a version of the model, the current one by default."""
        with self.sessions() as s:
            model = self._model_row(s, model_id)
            wanted = model.current_version if version is None else version
            row = s.get(WeightVersionRow, (model_id, wanted))
            if row is None:
                raise NotFound("version", wanted, "version")
            return wanted, blobs.unpack(row.weights, row.checksum)

    # ------------------------------------------------------------------ training

    def start_run(self, model_id: str, options: dict[str, Any], rows: int) -> RunRecord:
        with self.sessions.begin() as s:
            model = self._model_row(s, model_id)
            row = RunRow(
                id=uuid.uuid4().hex,
                model_id=model_id,
                status="running",
                options=json_safe(options),
                rows=rows,
                base_version=model.current_version,
                version=None,
            )
            s.add(row)
            s.flush()
            return _run(row)

    def record_epoch(
        self, run_id: str, model_id: str, record: dict[str, Any], checkpoint: Checkpoint
    ) -> None:
        """The epoch's history row and the model's checkpoint, in one transaction."""
        blob, checksum = blobs.pack(checkpoint.arrays)
        epoch = int(record["epoch"])
        with self.sessions.begin() as s:
            s.add(
                EpochRow(
                    run_id=run_id,
                    epoch=epoch,
                    train_loss=record["train_loss"],
                    val_loss=record.get("val_loss"),
                    record=json_safe(record),
                )
            )
            row = s.get(CheckpointRow, model_id)
            if row is None:
                row = CheckpointRow(model_id=model_id)
                s.add(row)
            row.run_id, row.epoch, row.arrays, row.checksum = run_id, epoch, blob, checksum
            row.meta = json_safe(checkpoint.meta)

    def finish_run(
        self, run_id: str, status: str, stop_reason: str, best_epoch: int, weights: Arrays | None
    ) -> RunRecord:
        """Close a run; with ``weights``, store them as the model's next version and make it current."""
        with self.sessions.begin() as s:
            run = s.get(RunRow, run_id)
            if run is None:
                raise NotFound("run", run_id, "run_id")
            if weights is not None:
                model = s.scalars(select(ModelRow).where(ModelRow.id == run.model_id).with_for_update()).one()
                blob, checksum = blobs.pack(weights)
                version = model.current_version + 1
                s.add(
                    WeightVersionRow(
                        model_id=model.id, version=version, weights=blob, checksum=checksum, run_id=run_id
                    )
                )
                model.current_version = version
                model.updated_at = now()
                run.version = version
            run.status, run.stop_reason, run.best_epoch, run.finished_at = (
                status,
                stop_reason,
                best_epoch,
                now(),
            )
            return _run(run)

    def load_checkpoint(self, model_id: str) -> Checkpoint | None:
        with self.sessions() as s:
            row = s.get(CheckpointRow, model_id)
            if row is None:
                return None
            return Checkpoint(row.run_id, row.epoch, blobs.unpack(row.arrays, row.checksum), row.meta)

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a server that stopped become 'interrupted'; returns how many."""
        with self.sessions.begin() as s:
            result = s.execute(
                update(RunRow)
                .where(RunRow.status == "running")
                .values(status="interrupted", finished_at=now())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def history(self, model_id: str) -> list[RunRecord]:
        """The model's runs, oldest first, each with its epochs."""
        with self.sessions() as s:
            self._model_row(s, model_id)
            runs = s.scalars(select(RunRow).where(RunRow.model_id == model_id).order_by(RunRow.started_at))
            out = []
            for run in runs:
                epochs = s.scalars(select(EpochRow).where(EpochRow.run_id == run.id).order_by(EpochRow.epoch))
                out.append(_run(run, tuple(EpochEntry(e.epoch, e.record) for e in epochs)))
            return out

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _model_row(s: Session, model_id: str) -> ModelRow:
        row = s.get(ModelRow, model_id)
        if row is None:
            raise NotFound("model", model_id, "model_id")
        return row
