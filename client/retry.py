"""Which calls are retried on UNAVAILABLE and after what pauses, decided once for both shells.

Part of the core under both SDKs: :mod:`.sdk` sleeps with ``time.sleep`` and :mod:`.aio` with
``asyncio.sleep``; the schedule they sleep through, and the decision to retry or to raise the
typed error, are :class:`Retry`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .errors import raise_typed

RETRIED = frozenset(
    {
        "GetModel",
        "ListModels",
        "Predict",
        "GetGradients",
        "GetTrainingHistory",
        "GetDataset",
        "ListDatasets",
        "GetRun",
        "ListRuns",
        "CancelRun",
        "ResumeRun",
        "CreateModel",
        "ImportModel",
        "StartRun",
        "UploadDataset",
    }
)
"""Calls retried on UNAVAILABLE: reads, idempotent changes, and creations that carry a request id."""


@dataclass(frozen=True)
class Retry:
    """A client's retry policy: ``retries`` more attempts of a retried call, the n-th after a pause
    of ``backoff * 2**n`` seconds (exponential backoff)."""

    retries: int
    backoff: float

    def pauses(self, method: str) -> list[float]:
        """The pause after each failed attempt but the last; empty for a call that is not retried,
        so the shell makes one attempt (the last, whose error is raised typed)."""
        retries = self.retries if method in RETRIED else 0
        return [self.backoff * 2**attempt for attempt in range(retries)]

    @staticmethod
    def check(error: grpc.RpcError) -> None:
        """Return where ``error`` is worth another attempt (UNAVAILABLE: the server could not be
        reached, so the call did nothing); raise its typed exception otherwise."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise_typed(error)
