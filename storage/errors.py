"""Errors the storage layer raises on purpose; the service maps each to a status code."""

from __future__ import annotations

QUOTED = 40
"""Characters of a caller's key quoted in an error message at most."""


class StorageError(Exception):
    """Base class of the storage errors."""


class NotFound(StorageError):
    """No such model, version, dataset or run. ``field`` names the request field that pointed at it."""

    def __init__(self, what: str, key: object, field: str) -> None:
        self.what, self.key, self.field = what, key, field
        quoted = repr(key)
        if len(quoted) > QUOTED:  # the caller's id is echoed, never all of it
            quoted = f"{quoted[: QUOTED - 5]}…({len(quoted)} chars)"
        super().__init__(f"{what} {quoted} not found")


class SchemaOutOfDate(StorageError):
    """The database schema is older (or newer) than this code; nothing was changed."""


class CorruptBlob(StorageError):
    """Stored bytes do not match their checksum."""


class Unavailable(StorageError):
    """The database cannot be reached or refused the work for now; trying again later may succeed."""


class Conflict(StorageError):
    """A guarded update found the row in another state than it expected: someone else got there
    first. Reported, never retried blindly. ``field`` names the request field concerned."""

    field = ""


class ModelBusy(Conflict):
    """The model has a queued or running run already: one active run per model."""

    field = "model_id"


class VersionConflict(Conflict):
    """A run's base version is no longer the model's current one: publishing would overwrite
    another run's result."""

    field = "run_id"


class LeaseLost(Conflict):
    """This process no longer holds the run (it was reaped, cancelled or finished elsewhere)."""

    field = "run_id"


class WrongState(StorageError):
    """The run, or the dataset, is not in a state that allows the operation (resuming a run that
    is not interrupted, deleting a dataset a run still needs)."""

    def __init__(self, message: str, field: str) -> None:
        self.field = field
        super().__init__(message)


class QueueFull(StorageError):
    """As many runs wait in the queue as the configuration allows."""

    field = "model_id"


class QuotaExceeded(StorageError):
    """The request would take its tenant past one of its quotas (``quota``, a column of
    :class:`gradwire.storage.records.Quotas`); nothing was written."""

    def __init__(self, tenant: str, quota: str, limit: int, used: int, adds: int, words: str) -> None:
        self.tenant, self.quota, self.limit, self.used = tenant, quota, limit, used
        super().__init__(
            f"quota {quota} exceeded: tenant {tenant!r} may hold {limit} {words}, holds {used}, "
            f"and this request adds {adds}; free some, or ask the operator to raise the quota"
        )


class RequestReused(StorageError):
    """A client request id came back with a different request than the one it first named."""

    field = "request_id"
