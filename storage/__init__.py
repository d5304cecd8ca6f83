"""gradwire's persistence: models, weight versions, datasets, runs, checkpoints and history in SQL.

SQLAlchemy 2.0 with Alembic migrations; SQLite by default, PostgreSQL by URL. Knows nothing of
gRPC or of the engine's classes: specs and options are JSON, weights are named NumPy arrays.
"""

from .blobs import CHUNK_BYTES
from .database import Database, check_schema, make_engine, missing_file, open_database, upgrade
from .datasets import DatasetMeta
from .errors import (
    Conflict,
    CorruptBlob,
    LeaseLost,
    ModelBusy,
    NotFound,
    QueueFull,
    QuotaExceeded,
    RequestReused,
    SchemaOutOfDate,
    StorageError,
    Unavailable,
    VersionConflict,
    WrongState,
)
from .lookup import ANY_TENANT, TenantScope
from .notices import KEYS as KEYS_CHANNEL
from .records import (
    DATASET_ROLES,
    QUOTA_WORDS,
    Checkpoint,
    DatasetRecord,
    EpochEntry,
    KeyRecord,
    ModelRecord,
    NewEpoch,
    Outcome,
    Quotas,
    RunRecord,
    TenantRecord,
    VersionState,
)
from .runs import Claim, InlineData, NewRun, RunStart, StartCheck
from .schema import DEFAULT_TENANT
from .store import Store, open_store

__all__ = [
    "ANY_TENANT",
    "CHUNK_BYTES",
    "DATASET_ROLES",
    "DEFAULT_TENANT",
    "KEYS_CHANNEL",
    "QUOTA_WORDS",
    "Checkpoint",
    "Claim",
    "Conflict",
    "CorruptBlob",
    "Database",
    "DatasetMeta",
    "DatasetRecord",
    "EpochEntry",
    "InlineData",
    "KeyRecord",
    "LeaseLost",
    "ModelBusy",
    "ModelRecord",
    "NewEpoch",
    "NewRun",
    "NotFound",
    "Outcome",
    "QueueFull",
    "QuotaExceeded",
    "Quotas",
    "RequestReused",
    "RunRecord",
    "RunStart",
    "SchemaOutOfDate",
    "StartCheck",
    "StorageError",
    "Store",
    "TenantRecord",
    "TenantScope",
    "Unavailable",
    "VersionConflict",
    "VersionState",
    "WrongState",
    "check_schema",
    "make_engine",
    "missing_file",
    "open_database",
    "open_store",
    "upgrade",
]
