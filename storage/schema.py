"""The tables, as SQLAlchemy 2.0 typed ORM classes. Rows never leave the storage package.

Constraint and index names are explicit (the naming convention below) so that Alembic's diffs
stay stable across databases.

Large values (weights, checkpoints, datasets) never sit in one column: they are cut into
:class:`ChunkRow` rows of at most :data:`gradwire.storage.blobs.CHUNK_BYTES` each, under a blob
id that the owning row holds, so that no stored value comes near a database's limit on one
value (1 GB for PostgreSQL ``bytea``, 1e9 bytes for SQLite).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    null,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ACTIVE = "status IN ('queued', 'running')"
"""The vocabulary's ACTIVE statuses as the migrations wrote them: at most one such run per model
(a partial unique index)."""

DEFAULT_TENANT = "default"
"""The tenant of every call while authentication is off, and of everything stored before there
were tenants (revision 0003 gave it all)."""


def now() -> datetime:
    return datetime.now(UTC)


def json_value(value: Any) -> Any:
    """A value for a JSON column written by a Core statement: None is SQL NULL, as the ORM wrote it
    (Core would store JSON's ``null``, and ``IS NULL`` would no longer find it)."""
    return null() if value is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TenantRow(Base):
    """Whose models, datasets and runs: every API key belongs to one. Its quotas bound what it
    may hold at once (see :class:`gradwire.storage.records.Quotas`)."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_models: Mapped[int] = mapped_column(Integer)
    max_parameters: Mapped[int] = mapped_column(BigInteger)
    max_dataset_bytes: Mapped[int] = mapped_column(BigInteger)
    max_active_runs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of the secret is kept; ``id`` is the key's public part (it
    names the key in lists and revocations). A revoked key keeps its row, with ``revoked_at``."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelRow(Base):
    """A model: its spec and which weight version answers now."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_tenant_id_created_at", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    parameter_count: Mapped[int] = mapped_column(Integer)
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class ChunkRow(Base):
    """One piece of a large value, by blob id and position."""

    __tablename__ = "blob_chunks"

    blob_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class WeightVersionRow(Base):
    """One immutable set of weights (and batch-norm buffers) of a model, with the optimiser state
    that belongs to exactly these weights when a run left one (``optimizer_blob``)."""

    __tablename__ = "weight_versions"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    blob_id: Mapped[str] = mapped_column(String(32))
    checksum: Mapped[str] = mapped_column(String(64))
    optimizer_blob_id: Mapped[str | None] = mapped_column(String(32))
    optimizer_checksum: Mapped[str | None] = mapped_column(String(64))
    optimizer_meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class DatasetRow(Base):
    """An uploaded 2-D array. Its id is its content address (dtype, shape and the SHA-256 of its
    bytes, hashed together; the service defines it); ``checksum`` is the SHA-256 of the bytes.
    ``temporary``: brought inline by a run's request, not uploaded; it is deleted once no queued,
    running or interrupted run needs it (an upload of the same content makes it permanent)."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_id_created_at", "tenant_id", "created_at"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dtype: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[int] = mapped_column(BigInteger)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[str] = mapped_column(String(32))
    checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    temporary: Mapped[bool] = mapped_column(Boolean, default=False)


class UploadRow(Base):
    """A blob being written (an upload in progress): its chunks belong to nothing yet. Each write
    touches it (on the database's clock); a finished upload deletes it in the transaction that
    hands the blob to a dataset; the janitor deletes those left untouched for a while (a failed
    upload, a dead process), with their chunks."""

    __tablename__ = "uploads"

    blob_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    touched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RunRow(Base):
    """One training run: a job whose whole state lives here.

    ``status`` moves queued → running → completed | cancelled | failed | interrupted, and
    interrupted → queued on resume, each step a guarded update. ``owner`` and ``heartbeat_at``
    are the lease of the process executing a running run.
    """

    __tablename__ = "training_runs"
    __table_args__ = (
        Index(
            "uq_training_runs_active_model",
            "model_id",
            unique=True,
            sqlite_where=text(ACTIVE),
            postgresql_where=text(ACTIVE),
        ),
        Index("ix_training_runs_status_created_at", "status", "created_at"),
        Index("ix_training_runs_tenant_id_status", "tenant_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    stop_reason: Mapped[str] = mapped_column(String(32), default="")
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(Integer)
    base_version: Mapped[int] = mapped_column(Integer)
    version: Mapped[int | None] = mapped_column(Integer)
    best_epoch: Mapped[int] = mapped_column(Integer, default=0)
    best_loss: Mapped[float | None] = mapped_column(Float)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    receipt: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    load_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RunDatasetRow(Base):
    """Which dataset a run reads in which role (``inputs``, ``targets``, ``validation_inputs``,
    ``validation_targets``): the run's tenant's dataset of that id. Indexed by dataset, so a
    delete can ask who still needs it."""

    __tablename__ = "run_datasets"

    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(64), index=True)


class CheckpointRow(Base):
    """The latest training state of a run (weights, optimiser state, counters, RNG): what an exact
    resume needs, at an epoch boundary. One per run; replaced at each commit."""

    __tablename__ = "run_checkpoints"

    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    blob_id: Mapped[str] = mapped_column(String(32))
    checksum: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class EpochRow(Base):
    """One epoch of a run: append-only, keyed by (run, epoch)."""

    __tablename__ = "epochs"

    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class RequestRow(Base):
    """A client request id and what its first call made: a retry with the same id gets that back.
    Ids are the tenant's own: another tenant's use of the same id is another request."""

    __tablename__ = "request_ids"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
