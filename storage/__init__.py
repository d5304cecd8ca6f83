"""gradwire's persistence: models, weight versions, datasets, runs, checkpoints and history in SQL.

SQLAlchemy 2.0 with Alembic migrations; SQLite by default, PostgreSQL by URL. Knows nothing of
gRPC or of the engine's classes: specs and options are JSON, weights are named NumPy arrays.
"""

from .blobs import CHUNK_BYTES
from .database import Database, check_schema, make_engine, open_database, upgrade
from .datasets import DatasetMeta
from .errors import (
    Conflict,
    CorruptBlob,
    LeaseLost,
    ModelBusy,
    NotFound,
    QueueFull,
    RequestReused,
    SchemaOutOfDate,
    StorageError,
    Unavailable,
    VersionConflict,
    WrongState,
)
from .records import (
    DATASET_ROLES,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    DatasetRecord,
    EpochEntry,
    ModelRecord,
    Outcome,
    RunRecord,
    VersionState,
)
from .runs import NewRun
from .store import Store, open_store

__all__ = [
    "CHUNK_BYTES",
    "DATASET_ROLES",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "Checkpoint",
    "Conflict",
    "CorruptBlob",
    "Database",
    "DatasetMeta",
    "DatasetRecord",
    "EpochEntry",
    "LeaseLost",
    "ModelBusy",
    "ModelRecord",
    "NewRun",
    "NotFound",
    "Outcome",
    "QueueFull",
    "RequestReused",
    "RunRecord",
    "SchemaOutOfDate",
    "StorageError",
    "Store",
    "Unavailable",
    "VersionConflict",
    "VersionState",
    "WrongState",
    "check_schema",
    "make_engine",
    "open_database",
    "open_store",
    "upgrade",
]
