"""The one table from errors to gRPC status codes, and the rich status a client receives.

Use cases, the store and the engine raise; the servicer's handlers turn the exception into a
status code, a message, and for bad input a ``google.rpc.BadRequest`` naming the field. Anything
not in the table is a bug: it is logged with its traceback and the client gets INTERNAL with no
detail.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradwire.engine import InvalidArgument
from gradwire.storage import (
    Conflict,
    CorruptBlob,
    NotFound,
    QueueFull,
    QuotaExceeded,
    RequestReused,
    Unavailable,
    WrongState,
)
from gradwire.v1.vocabulary import RunStatus, StopReason

from ..core.errors import CannotAnswer, ClientStalled, LimitExceeded, RunFailed, ShuttingDown, Unauthenticated

log = logging.getLogger(__name__)

STATUS: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    RequestReused: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    CannotAnswer: grpc.StatusCode.FAILED_PRECONDITION,
    CorruptBlob: grpc.StatusCode.FAILED_PRECONDITION,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,  # ModelBusy, VersionConflict, LeaseLost
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    MemoryError: grpc.StatusCode.RESOURCE_EXHAUSTED,  # past the estimate: the server is short, not broken
    ClientStalled: grpc.StatusCode.CANCELLED,  # the server cancelled the call: so it ends, whatever follows
}

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
}
"""The HTTP status of an error, by the gRPC status the same error gets (500 for any other)."""
UNAUTHORIZED = 401
PAYLOAD_TOO_LARGE = 413


def http_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and message for ``exc``: those of its gRPC status; 500 without detail for
    a bug (logged)."""
    code = status_of(exc)
    if code is None or code == grpc.StatusCode.INTERNAL:
        log.error("unexpected error", exc_info=exc)
        return 500, "internal error; the server log has the details"
    return HTTP_STATUS.get(code, 500), cut(str(exc))


RUN_FAILURES: dict[str, grpc.StatusCode] = {
    StopReason.VERSION_CONFLICT: grpc.StatusCode.ABORTED,
    StopReason.MISSING_DATA: grpc.StatusCode.FAILED_PRECONDITION,
    StopReason.CORRUPT_DATA: grpc.StatusCode.FAILED_PRECONDITION,
    StopReason.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    StopReason.OUT_OF_MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StopReason.DATABASE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    RunStatus.INTERRUPTED: grpc.StatusCode.UNAVAILABLE,  # a run interrupted under its Train call
}
"""The status a Train call ends with when its run failed, by the run's stop reason; INTERNAL else."""


def status_of(exc: Exception) -> grpc.StatusCode | None:
    """The status code for ``exc`` by the first of its classes in :data:`STATUS`; None: a bug."""
    if isinstance(exc, RunFailed):
        return RUN_FAILURES.get(exc.kind, grpc.StatusCode.INTERNAL)
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


MAX_MESSAGE = 1000
"""Characters of a status message at most: status and details travel in metadata, which is bounded."""
MAX_STATUS_BYTES = 4096
"""The serialized status (message and details) at most: grpc clients refuse trailing metadata
past 8 KiB by default, and the message goes beside it again, percent-encoded (at most 3 KiB)."""


def field_violations(exc: Exception) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """Every field ``exc`` names, each with its own description (without the field's name)."""
    if isinstance(exc, InvalidArgument):
        pairs = [(v.field, v.description) for v in exc.violations]
    else:
        pairs = [(getattr(exc, "field", ""), str(exc))]
    return [
        error_details_pb2.BadRequest.FieldViolation(field=field, description=cut(description))
        for field, description in pairs
        if field
    ]


def rich_status(code: grpc.StatusCode, exc: Exception) -> status_pb2.Status:
    """A ``google.rpc.Status`` for ``exc``, with a BadRequest naming every field it is about, as
    many as fit in :data:`MAX_STATUS_BYTES` (then one more saying how many were left out), or a
    QuotaFailure naming the tenant's quota it would exceed."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=cut(str(exc)))
    if isinstance(exc, QuotaExceeded):
        failure = error_details_pb2.QuotaFailure()
        failure.violations.add(subject=f"tenant:{exc.tenant}", description=f"{exc.quota} is {exc.limit}")
        status.details.add().Pack(failure)
    violations = field_violations(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT and violations:
        status.details.add().Pack(_bounded(violations, MAX_STATUS_BYTES - len(status.message.encode()) - 64))
    return status


def _bounded(
    violations: list[error_details_pb2.BadRequest.FieldViolation], budget: int
) -> error_details_pb2.BadRequest:
    """The first violations whose bytes fit ``budget``, and a last one counting the rest."""
    kept = error_details_pb2.BadRequest()
    for i, violation in enumerate(violations):
        if kept.ByteSize() + violation.ByteSize() + 80 > budget:
            left = len(violations) - i
            kept.field_violations.add(field="request", description=f"and {left} more problems not listed")
            break
        kept.field_violations.append(violation)
    return kept


def cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    """End the call with the status the error table gives ``exc`` (INTERNAL, no detail, if none).
    A call its client already left (cancel, deadline) just ends: nobody hears a status."""
    if not context.is_active():
        raise exc  # grpc knows the call is over (it raised this very error into the request stream)
    code = status_of(exc)
    if code is None or code == grpc.StatusCode.INTERNAL:
        log.error("unexpected error", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    context.abort_with_status(rpc_status.to_status(rich_status(code, exc)))
    raise AssertionError("grpc's abort returned")  # it raises; this keeps the NoReturn honest
