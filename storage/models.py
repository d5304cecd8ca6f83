"""Models and their weight versions. A model's current version changes only by a run's publish
(compare-and-set, in :mod:`.runs`); versions themselves never change."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, bindparam, delete, insert, select
from sqlalchemy.orm import Session

from gradwire.v1.vocabulary import ACTIVE

from . import blobs
from .database import Database, as_utc
from .errors import ModelBusy, NotFound
from .lookup import ANY_TENANT, TenantScope, one
from .records import ModelRecord, VersionState
from .requests import remember, settled
from .schema import (
    CheckpointRow,
    EpochRow,
    ModelRow,
    RunDatasetRow,
    RunRow,
    WeightVersionRow,
    json_value,
    now,
)
from .tenants import charge

Arrays = Mapping[str, np.ndarray]

CURRENT_VERSION = select(ModelRow.current_version).where(
    ModelRow.id == bindparam("model_id"), ModelRow.tenant_id == bindparam("tenant")
)
"""Built once: Predict asks it on every call."""


def model_row(s: Session, model_id: str, tenant: TenantScope, *, for_update: bool = False) -> ModelRow:
    """The model; with ``tenant``, only if it is that tenant's (None: the service's own reads,
    for a run it already holds)."""
    return one(s, ModelRow, model_id, "model", "model_id", "update" if for_update else "", tenant)


def active_run_id(s: Session, model_id: str) -> str | None:
    return s.scalar(select(RunRow.id).where(RunRow.model_id == model_id, RunRow.status.in_(ACTIVE)))


def _with_active_run() -> Select[ModelRow, str]:
    """Models, each beside the id of its queued or running run (None if it has none)."""
    return select(ModelRow, RunRow.id).outerjoin(
        RunRow, (RunRow.model_id == ModelRow.id) & RunRow.status.in_(ACTIVE)
    )


def _model(s: Session, tenant: str, model_id: str) -> ModelRecord:
    """The tenant's model and its active run, in one statement."""
    query = _with_active_run().where(ModelRow.id == model_id, ModelRow.tenant_id == tenant)
    found = s.execute(query).first()
    if found is None:
        raise NotFound("model", model_id, "model_id")
    row, active = found
    return model_record(row, active)


def model_record(row: ModelRow, active: str | None = None) -> ModelRecord:
    return ModelRecord(
        row.id,
        row.name,
        row.spec,
        row.parameter_count,
        row.current_version,
        as_utc(row.created_at),
        as_utc(row.updated_at),
        active,
    )


_INSERT_VERSION = insert(WeightVersionRow)


def add_version(
    s: Session,
    model_id: str,
    version: int,
    weights: Arrays,
    run_id: str | None = None,
    optimizer: Arrays | None = None,
    optimizer_meta: dict[str, Any] | None = None,
) -> None:
    """Store weight version ``version`` (and the optimiser state belonging to it, if any)."""
    written = blobs.write_array_sets(s, [weights] if optimizer is None else [weights, optimizer])
    blob_id, checksum = written[0]
    optimizer_blob_id, optimizer_checksum = written[1] if optimizer is not None else (None, None)
    row = {
        "model_id": model_id,
        "version": version,
        "blob_id": blob_id,
        "checksum": checksum,
        "run_id": run_id,
        "optimizer_blob_id": optimizer_blob_id,
        "optimizer_checksum": optimizer_checksum,
        "optimizer_meta": json_value(optimizer_meta if optimizer is not None else None),
        "created_at": now(),
    }
    s.connection().execute(_INSERT_VERSION, row)


def version_state(s: Session, row: WeightVersionRow) -> VersionState:
    """A stored version's weights, and the optimiser state that belongs to them if any."""
    weights = (row.blob_id, row.checksum)
    return read_version(
        s, row.version, weights, (row.optimizer_blob_id, row.optimizer_checksum), row.optimizer_meta
    )


def read_version(
    s: Session,
    version: int,
    weights: tuple[str, str],
    optimizer: tuple[str | None, str | None],
    optimizer_meta: dict[str, Any] | None,
) -> VersionState:
    """A version's state from its blobs, each ``(blob id, checksum)``: the optimiser's may be
    absent (no run left one)."""
    blob_id, checksum = optimizer
    state = blobs.read_arrays(s, blob_id, checksum) if blob_id and checksum else None
    return VersionState(version, blobs.read_arrays(s, *weights), state, optimizer_meta)


class ModelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        tenant: str,
        name: str,
        spec: dict[str, Any],
        weights: Arrays,
        parameter_count: int,
        request_id: str = "",
    ) -> ModelRecord:
        """A new model of ``tenant``'s at version 1 holding ``weights`` (``parameter_count`` of them
        trainable), within the tenant's model and parameter quotas. A request id used before
        returns what it made. One transaction: the request id is asked beside the quotas."""
        adds = {"max_models": 1, "max_parameters": parameter_count}

        def fetch(s: Session, key: str) -> ModelRecord:
            return _model(s, tenant, key)

        def create(s: Session) -> ModelRecord:
            made = charge(s, tenant, adds, request=(request_id, "model") if request_id else None)
            if made is not None:
                return fetch(s, made)
            row = ModelRow(
                id=blobs.new_id(),
                tenant_id=tenant,
                name=name,
                spec=spec,
                parameter_count=parameter_count,
                current_version=1,
            )
            s.add(row)
            s.flush()
            add_version(s, row.id, 1, weights)
            remember(s, tenant, request_id, "model", row.id)
            return model_record(row, None)

        return settled(
            self.db,
            tenant,
            request_id,
            "model",
            create,
            lambda s, key: model_record(model_row(s, key, tenant), None),
        )

    def get(self, tenant: str, model_id: str) -> ModelRecord:
        """The tenant's model and its active run, in one statement."""
        with self.db.single() as s:
            return _model(s, tenant, model_id)

    def addressed(self, tenant: str, name: str) -> list[ModelRecord]:
        """The tenant's model whose id is ``name``; else its models named ``name``, at most two
        (enough to tell that a name is not unique). One statement."""
        query = (
            _with_active_run()
            .where(ModelRow.tenant_id == tenant, (ModelRow.id == name) | (ModelRow.name == name))
            .order_by((ModelRow.id == name).desc(), ModelRow.created_at, ModelRow.id)
            .limit(2)
        )
        with self.db.single() as s:
            return [model_record(row, active) for row, active in s.execute(query)]

    def versions(self, tenant: str, model_id: str) -> list[int]:
        """The numbers of the tenant's model's versions, oldest first; NotFound if it has none
        (every model has its first)."""
        query = (
            select(WeightVersionRow.version)
            .join(ModelRow, ModelRow.id == WeightVersionRow.model_id)
            .where(ModelRow.id == model_id, ModelRow.tenant_id == tenant)
            .order_by(WeightVersionRow.version)
        )
        with self.db.single() as s:
            found = list(s.scalars(query))
        if not found:
            raise NotFound("model", model_id, "model_id")
        return found

    def current_version(self, tenant: str, model_id: str) -> int:
        """The version that answers now: one indexed read, so that no process serves a stale one
        (nor one of a model deleted meanwhile, nor another tenant's)."""
        version = self.db.scalar(CURRENT_VERSION, model_id=model_id, tenant=tenant)
        if version is None:
            raise NotFound("model", model_id, "model_id")
        return version

    def page(self, tenant: str, limit: int, after: tuple[datetime, str] | None = None) -> list[ModelRecord]:
        """Up to ``limit`` of the tenant's models in creation order, after the ``(created_at, id)`` given."""
        query = (
            _with_active_run()
            .where(ModelRow.tenant_id == tenant)
            .order_by(ModelRow.created_at, ModelRow.id)
            .limit(limit)
        )
        if after is not None:
            created, key = after
            query = query.where(
                (ModelRow.created_at > created) | ((ModelRow.created_at == created) & (ModelRow.id > key))
            )
        with self.db.read() as s:
            return [model_record(row, active) for row, active in s.execute(query)]

    def delete(self, tenant: str, model_id: str) -> None:
        """Delete a model with its versions, runs and history; refused while a run is queued or running."""
        with self.db.write() as s:
            model_row(s, model_id, tenant, for_update=True)
            active = active_run_id(s, model_id)
            if active is not None:
                raise ModelBusy(f"model {model_id} has run {active} queued or running; cancel it first")
            run_ids = select(RunRow.id).where(RunRow.model_id == model_id)
            checkpoints = list(
                s.scalars(select(CheckpointRow.blob_id).where(CheckpointRow.run_id.in_(run_ids)))
            )
            versions = s.execute(
                select(WeightVersionRow.blob_id, WeightVersionRow.optimizer_blob_id).where(
                    WeightVersionRow.model_id == model_id
                )
            ).all()
            blobs.drop(s, [*checkpoints, *(b for pair in versions for b in pair)])
            # Children first: SQLite enforces cascades only with foreign keys on, so be explicit.
            for child in (EpochRow, CheckpointRow, RunDatasetRow):
                s.execute(delete(child).where(child.run_id.in_(run_ids)))
            for table in (RunRow, WeightVersionRow):
                s.execute(delete(table).where(table.model_id == model_id))
            s.execute(delete(ModelRow).where(ModelRow.id == model_id))

    def load_version(self, model_id: str, version: int | None = None) -> VersionState:
        """A version of the model (the current one by default) with its optimiser state: for a
        run the service executes, whoever's it is."""
        with self.db.read() as s:
            return version_state(s, _version_row(s, model_id, ANY_TENANT, version))

    def load_weights(
        self, tenant: str, model_id: str, version: int | None = None
    ) -> tuple[int, dict[str, np.ndarray]]:
        """``(version, arrays)`` of a version of the tenant's model, the current one by default."""
        with self.db.read() as s:
            row = _version_row(s, model_id, tenant, version)
            return row.version, blobs.read_arrays(s, row.blob_id, row.checksum)


MAX_VERSION = (1 << 31) - 1
"""Versions are 32-bit integers in the database; a larger number names no version (and must not
reach a query, where PostgreSQL would refuse it as out of range)."""


def _version_row(s: Session, model_id: str, tenant: TenantScope, version: int | None) -> WeightVersionRow:
    current = model_row(s, model_id, tenant).current_version
    wanted = current if version is None else version
    row = s.get(WeightVersionRow, (model_id, wanted)) if 0 < wanted <= MAX_VERSION else None
    if row is None:
        raise NotFound("version", wanted, "version")
    return row
