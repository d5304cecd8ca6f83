"""Typed exceptions for the status codes the service returns, keyed by code (one table).

Both SDK shells (:mod:`.sdk`, :mod:`.aio`) meet ``grpc.RpcError`` through :func:`typed_errors`
and :func:`raise_typed` only, so a failed call raises the same exception in either. Every
exception keeps the gRPC error as its ``__cause__``, the status code, the server's message and,
for INVALID_ARGUMENT, the field violations (``(field, description)`` pairs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class GradwireError(Exception):
    """Base class: a call to the service failed."""

    def __init__(
        self, code: grpc.StatusCode, message: str, field_violations: tuple[tuple[str, str], ...] = ()
    ):
        self.code, self.message, self.field_violations = code, message, field_violations
        super().__init__(f"{code.name}: {message}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The request fields the server named as wrong."""
        return tuple(field for field, _ in self.field_violations)


class InvalidArgumentError(GradwireError, ValueError):
    """Bad input or options; see :attr:`field_violations`."""


class NotFoundError(GradwireError, LookupError):
    """No such model or version."""


class FailedPreconditionError(GradwireError):
    """The model cannot answer."""


class ModelBusyError(GradwireError):
    """ABORTED: the model has a run queued or running already, or a run's base version is no
    longer the model's current one."""


class UnauthenticatedError(GradwireError, PermissionError):
    """No API key was sent, or the server does not know it (unknown or revoked)."""


class ResourceExhaustedError(GradwireError):
    """Past a server limit (size of the model, batch, epochs, payload, queued trainings)."""


class UnavailableError(GradwireError, ConnectionError):
    """The server cannot be reached (idempotent calls were retried first)."""


class DeadlineExceededError(GradwireError, TimeoutError):
    """The call ran past its deadline."""


class CancelledError(GradwireError):
    """The call was cancelled."""


class RunFailedError(GradwireError):
    """A run ended ``failed``: :attr:`reason` says why (``version_conflict``, ``missing_data``,
    ``out_of_memory``, ...) and :attr:`run` is the run as it ended."""

    def __init__(self, run: Any) -> None:
        self.run, self.reason = run, run.stop_reason
        super().__init__(grpc.StatusCode.UNKNOWN, f"run {run.id} failed ({run.stop_reason}): {run.error}")


class ClientClosedError(RuntimeError):
    """The client was used after :meth:`Client.close`."""


ERRORS: dict[grpc.StatusCode, type[GradwireError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: ModelBusyError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def _violations(error: grpc.Call) -> tuple[tuple[str, str], ...]:
    status = rpc_status.from_call(error)
    if status is None:
        return ()
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            out += [(v.field, v.description) for v in request.field_violations]
    return tuple(out)


def from_rpc_error(error: grpc.RpcError) -> GradwireError:
    """The typed exception for a failed call (raise it ``from error``)."""
    code = error.code()
    cls = ERRORS.get(code, GradwireError)
    return cls(code, error.details() or "", _violations(error))


def raise_typed(error: grpc.RpcError) -> NoReturn:
    """Raise the typed exception for ``error``, with ``error`` as its cause."""
    raise from_rpc_error(error) from error


@contextmanager
def typed_errors() -> Iterator[None]:
    """Any ``grpc.RpcError`` raised inside becomes its typed exception (sync and async code alike:
    the calls awaited inside an ``async def`` raise where they are awaited)."""
    try:
        yield
    except grpc.RpcError as error:
        raise_typed(error)
