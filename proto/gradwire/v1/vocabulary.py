"""The contract's words that are not messages: a run's status, why it stopped, the optimisers.

A run's ``status`` and ``stop_reason`` travel as strings (gradwire.proto lists their values);
:class:`RunStatus` and :class:`StopReason` are their one definition, for the service, the storage
and the SDKs alike. The standard library only: the storage, which knows nothing of gRPC, imports
it too.
"""

from __future__ import annotations

from enum import StrEnum

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
"""The names ``OptimizerOptions.name`` takes (the engine's own table, which may not import this,
is held to it by a test)."""


class RunStatus(StrEnum):
    """Where a run stands (see ``Run.status`` in gradwire.proto)."""

    QUEUED = "queued"  # waiting for an executor to claim it
    RUNNING = "running"  # claimed: executing under a lease
    COMPLETED = "completed"  # ended by its own rule (epochs, threshold, early stop, a non-finite step)
    CANCELLED = "cancelled"  # stopped because its caller asked
    FAILED = "failed"  # ended by an error (its stop reason says which)
    INTERRUPTED = "interrupted"  # stopped before its end (a shutdown, a lost lease): it resumes


class StopReason(StrEnum):
    """Why a run stopped (see ``Run.stop_reason`` in gradwire.proto). The first six are the
    engine's own (``gradwire.engine.STOP_REASONS``, which may not import this); the service adds
    why it stopped a run, and for a failed run what failed it."""

    MAX_EPOCHS = "max_epochs"
    LOSS_THRESHOLD = "loss_threshold"
    EARLY_STOPPING = "early_stopping"
    CALLBACK = "callback"
    STOP_REQUESTED = "stop_requested"
    NON_FINITE = "non_finite"
    CANCELLED = "cancelled"  # its caller cancelled it before it ran, or while it was interrupted
    SHUTDOWN = "shutdown"  # its server stopped: it is queued again at once, counting no attempt
    LEASE_EXPIRED = "lease_expired"  # its server went silent
    WORKER_DIED = "worker_died"  # its worker process ended under it
    DATABASE_UNAVAILABLE = "database_unavailable"
    VERSION_CONFLICT = "version_conflict"  # its base version is no longer the model's current
    MISSING_DATA = "missing_data"
    CORRUPT_DATA = "corrupt_data"
    INVALID = "invalid"
    OUT_OF_MEMORY = "out_of_memory"
    ERROR = "error"  # anything else: a bug, logged with its traceback


ACTIVE: tuple[str, ...] = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
"""A model has at most one run in these; a tenant's count toward ``max_active_runs``."""
FINISHED: tuple[str, ...] = (RunStatus.COMPLETED.value, RunStatus.CANCELLED.value, RunStatus.FAILED.value)
"""For good: nothing moves a run out of these."""
HOLDING: tuple[str, ...] = (*ACTIVE, RunStatus.INTERRUPTED.value)
"""A run in these may still read its datasets: they cannot be deleted."""
