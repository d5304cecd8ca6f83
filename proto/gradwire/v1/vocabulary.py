"""The contract's words that are not messages: the statuses of a run.

A run's ``status`` travels as a string (gradwire.proto lists its values); :class:`RunStatus` is
their one definition, for the service, the storage and the SDKs alike. The standard library only:
the storage, which knows nothing of gRPC, imports it too.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run stands (see ``Run.status`` in gradwire.proto)."""

    QUEUED = "queued"  # waiting for an executor to claim it
    RUNNING = "running"  # claimed: executing under a lease
    COMPLETED = "completed"  # ended by its own rule (epochs, threshold, early stop, a non-finite step)
    CANCELLED = "cancelled"  # stopped because its caller asked
    FAILED = "failed"  # ended by an error (its stop reason says which)
    INTERRUPTED = "interrupted"  # stopped before its end (a shutdown, a lost lease): it resumes


ACTIVE: tuple[str, ...] = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
"""A model has at most one run in these; a tenant's count toward ``max_active_runs``."""
FINISHED: tuple[str, ...] = (RunStatus.COMPLETED.value, RunStatus.CANCELLED.value, RunStatus.FAILED.value)
"""For good: nothing moves a run out of these."""
HOLDING: tuple[str, ...] = (*ACTIVE, RunStatus.INTERRUPTED.value)
"""A run in these may still read its datasets: they cannot be deleted."""
