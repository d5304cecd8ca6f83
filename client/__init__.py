"""gradwire's Python SDK: a thin, typed wrapper over the gradwire.v1 stubs.

Depends on the generated contract only (import-linter holds it to that).
"""

from gradwire.v1.codec import Gradients, Prediction

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
    UnavailableError,
)
from .sdk import Client, History, Model, ModelInfo, print_progress

__all__ = [
    "ERRORS",
    "CancelledError",
    "Client",
    "ClientClosedError",
    "DeadlineExceededError",
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
    "UnavailableError",
    "print_progress",
]
