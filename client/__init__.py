"""gradwire's Python SDK: a thin, typed wrapper over the gradwire.v1 stubs.

One core (records, connection, calls, replies, retry, watching, handles) decides everything that
does no I/O; two thin shells do the I/O: :mod:`.sdk` (``Client``) with ``grpc`` and :mod:`.aio`
(``AsyncClient``) with ``grpc.aio``. Depends on the generated contract only (import-linter
holds it to that).
"""

from gradwire.v1.answers import Gradients, Prediction

from .aio import AsyncClient
from .connection import TLS
from .errors import (
    ERRORS,
    CancelledError,
    ClientClosedError,
    DeadlineExceededError,
    FailedPreconditionError,
    GradwireError,
    InvalidArgumentError,
    ModelBusyError,
    NotFoundError,
    ResourceExhaustedError,
    RunFailedError,
    UnauthenticatedError,
    UnavailableError,
)
from .records import DatasetInfo, Exported, History, ModelInfo, RunInfo
from .sdk import Client, Model, Run
from .watching import print_progress

__all__ = [
    "ERRORS",
    "TLS",
    "AsyncClient",
    "CancelledError",
    "Client",
    "ClientClosedError",
    "DatasetInfo",
    "DeadlineExceededError",
    "Exported",
    "FailedPreconditionError",
    "Gradients",
    "GradwireError",
    "History",
    "InvalidArgumentError",
    "Model",
    "ModelBusyError",
    "ModelInfo",
    "NotFoundError",
    "Prediction",
    "ResourceExhaustedError",
    "Run",
    "RunFailedError",
    "RunInfo",
    "UnauthenticatedError",
    "UnavailableError",
    "print_progress",
]
