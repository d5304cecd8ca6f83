"""The store: models, datasets and runs, each a part with one method per use case.

Every method is one transaction (or one read), takes and returns plain values and the frozen
records of :mod:`.records`; ORM rows never leave the package. Arrays are stored by :mod:`.blobs`
(``.npz`` without pickles, in chunks, with checksums); specs, options and epochs as JSON.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from .database import Database, open_database
from .datasets import DatasetStore
from .models import ModelStore
from .notices import Listener
from .runs import RunStore
from .tenants import TenantStore


class Store:
    """Everything gradwire keeps, in one SQL database: ``models``, ``datasets``, ``runs``, and
    ``tenants`` (with their quotas and API keys)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.models = ModelStore(db)
        self.datasets = DatasetStore(db)
        self.runs = RunStore(db)
        self.tenants = TenantStore(db)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def listen(self, channel: str, heard: Callable[[], None], wait_seconds: float) -> Listener | None:
        """A started :class:`~.notices.Listener` of ``channel`` on PostgreSQL; None on SQLite,
        which has no notices."""
        if self.engine.dialect.name != "postgresql":
            return None
        listener = Listener(self.engine, channel, heard, wait_seconds)
        listener.start()
        return listener

    def close(self) -> None:
        """Close the pooled connections."""
        self.db.engine.dispose()


def open_store(url: str, statement_timeout: float | None = None, create: bool = True) -> Store:
    """A :class:`Store` on ``url``, its schema checked (and, with ``create``, made if the database
    is empty: a server may, its workers never); on PostgreSQL no statement runs past
    ``statement_timeout`` seconds (None: no bound)."""
    return Store(open_database(url, statement_timeout, create))
