"""Errors the storage layer raises on purpose; the service maps each to a status code."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of the storage errors."""


class NotFound(StorageError):
    """No such model, version or run. ``field`` names the request field that pointed at it."""

    def __init__(self, what: str, key: object, field: str) -> None:
        self.what, self.key, self.field = what, key, field
        super().__init__(f"{what} {key!r} not found")


class SchemaOutOfDate(StorageError):
    """The database schema is older (or newer) than this code; nothing was changed."""


class CorruptBlob(StorageError):
    """A stored array blob does not match its checksum."""
