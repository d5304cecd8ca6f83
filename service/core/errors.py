"""The errors the service's use cases raise on purpose (the storage layer and the engine have
their own). Nothing here knows the wire: :mod:`.status` maps every one of them to a status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of the errors the service raises on purpose."""

    field = ""


class LimitExceeded(ServiceError):
    """A request is past a configured resource limit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class Unauthenticated(ServiceError):
    """The call has no API key, or one that is malformed, unknown or revoked."""


class CannotAnswer(ServiceError):
    """The model exists but cannot compute an answer (e.g. its stored weights are unreadable)."""

    field = "model_id"


class ShuttingDown(ServiceError):
    """This server process is stopping; the call can be made again (to it once restarted, or to
    another)."""


class RunFailed(ServiceError):
    """A run ended ``failed``; ``kind`` is its stop reason (see :data:`.jobs.FAILURE_KINDS`)."""

    field = "run_id"

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class ClientStalled(ServiceError):
    """The client of a stream sent nothing for longer than the server waits; the server cancelled
    the call (its request stream may then end as if the client had finished)."""


class StartupError(ServiceError):
    """The server cannot start; the message says why in one line (``gradwire serve`` prints it)."""
