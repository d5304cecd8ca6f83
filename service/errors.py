"""Domain errors and the one table that maps them to gRPC status codes.

Use cases raise; the servicer's single handler (:func:`status_of`) turns the exception into a
status code, a message, and for bad input a ``google.rpc.BadRequest`` with the field. Anything
not in the table is a bug: it is logged with its traceback and the client gets INTERNAL with
no detail.
"""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gradwire.engine import InvalidArgument
from gradwire.storage import CorruptBlob, NotFound


class ServiceError(Exception):
    """Base class of the errors the service raises on purpose."""

    field = ""


class ModelBusy(ServiceError):
    """The model is training already; one Train per model at a time."""

    field = "model_id"


class LimitExceeded(ServiceError):
    """A request is past a configured resource limit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class CannotAnswer(ServiceError):
    """The model exists but cannot compute an answer (e.g. its stored weights are unreadable)."""

    field = "model_id"


STATUS: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    CannotAnswer: grpc.StatusCode.FAILED_PRECONDITION,
    CorruptBlob: grpc.StatusCode.FAILED_PRECONDITION,
    ModelBusy: grpc.StatusCode.ABORTED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_of(exc: Exception) -> grpc.StatusCode | None:
    """The status code for ``exc`` by the first of its classes in :data:`STATUS`; None: a bug."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def rich_status(code: grpc.StatusCode, exc: Exception) -> status_pb2.Status:
    """A ``google.rpc.Status`` for ``exc``, with a BadRequest field violation when it names a field."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(exc))
    field = getattr(exc, "field", "")
    if code == grpc.StatusCode.INVALID_ARGUMENT and field:
        detail = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=str(exc))]
        )
        status.details.add().Pack(detail)
    return status


def prefixed(exc: InvalidArgument, prefix: str) -> InvalidArgument:
    """The same error with its field under ``prefix`` (``units`` → ``spec.layers[0].units``)."""
    return InvalidArgument(f"{prefix}.{exc.field}" if prefix else exc.field, exc.message, exc.allowed)
