"""gradwire's Python SDK: a thin, typed wrapper over the gradwire.v1 stubs.

Depends on the generated contract only (import-linter holds it to that).
"""

from gradwire.v1.answers import Gradients, Prediction

from .aio import AsyncClient
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
from .sdk import TLS, Client, DatasetInfo, Exported, History, Model, ModelInfo, Run, RunInfo, print_progress

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
