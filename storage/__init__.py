"""gradwire's persistence: models, weight versions, checkpoints and training history in SQL.

SQLAlchemy 2.0 with Alembic migrations; SQLite by default, PostgreSQL by URL. Knows nothing of
gRPC or of the engine's classes: specs and options are JSON, weights are named NumPy arrays.
"""

from .database import check_schema, make_engine, open_store, upgrade
from .errors import CorruptBlob, NotFound, SchemaOutOfDate, StorageError
from .store import Checkpoint, EpochEntry, ModelRecord, RunRecord, Store

__all__ = [
    "Checkpoint",
    "CorruptBlob",
    "EpochEntry",
    "ModelRecord",
    "NotFound",
    "RunRecord",
    "SchemaOutOfDate",
    "StorageError",
    "Store",
    "check_schema",
    "make_engine",
    "open_store",
    "upgrade",
]
