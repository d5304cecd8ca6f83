"""Where runs execute, and the loop that feeds them.

The boundary is :class:`Executor`: it is handed a run id and the lease of the claim, and
the job (:class:`.jobs.RunJob`) reads everything it needs from the store and writes everything
back. :class:`ThreadExecutor`, the default, runs jobs on a bounded pool of threads in this
process; an executor that runs them on other machines implements the same four methods.

:class:`Supervisor` is one thread per process. Woken by a new run here or every
``poll_seconds``, it claims queued runs while the executor has room; every ``heartbeat_seconds``
it also marks interrupted the runs whose lease expired (but those its executor is executing:
their heartbeats may only be late because the database was away), queues interrupted runs
again (up to ``auto_resume`` attempts each), and deletes uploads abandoned for
``upload_ttl_seconds``. A database that cannot be reached is logged and tried again next time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from gradwire.storage import StorageError, Store

from ..core.settings import Settings
from .jobs import RunJob
from .signals import Changes, StopFlags

log = logging.getLogger(__name__)


def owner_id() -> str:
    """A name unique to this process: host, pid and a random suffix (at most 57 characters; each
    claim adds a token of its own to make the lease, at most 128)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Executor(Protocol):
    def start(self) -> None:
        """Start the workers (nothing starts before: a server that fails to start leaves none)."""

    def free_slots(self) -> int:
        """How many more runs it can take now."""

    def submit(self, run_id: str, lease: str) -> None:
        """Execute a run claimed under ``lease`` (the run's owner); returns at once."""

    def executing(self) -> set[str]:
        """The runs it executes now (alive, whatever their heartbeats say)."""

    def cancel(self, run_id: str) -> None:
        """Stop a run now if it executes here (else its job learns of it from the database)."""

    def wake(self) -> None:
        """A run was queued: an executor whose workers claim runs themselves tells them to look."""

    def shutdown(self, grace: float) -> None:
        """Ask every run to stop at its next epoch end (its checkpoint kept, it becomes
        interrupted), wait up to ``grace`` seconds, and release the workers."""


class ThreadExecutor:
    """Jobs on ``settings.train_workers`` threads of this process."""

    def __init__(
        self, store: Store, settings: Settings, changes: Changes, on_done: Callable[[], None] = lambda: None
    ) -> None:
        self.store, self.settings, self.changes, self.on_done = store, settings, changes, on_done
        self._pool = ThreadPoolExecutor(settings.train_workers, thread_name_prefix="gradwire-train")
        self._running: dict[str, tuple[str, StopFlags]] = {}  # by lease: (run id, flags)
        self._lock = threading.Condition()
        self._closing = threading.Event()

    def start(self) -> None:
        pass  # the pool starts its threads as jobs come

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._closing.is_set() else self.settings.train_workers - len(self._running)

    def submit(self, run_id: str, lease: str) -> None:
        flags = StopFlags()
        with self._lock:
            self._running[lease] = (run_id, flags)
        self._pool.submit(self._execute, run_id, lease, flags)

    def _execute(self, run_id: str, lease: str, flags: StopFlags) -> None:
        try:
            job = RunJob(self.store, run_id, lease, self.settings, self.changes, flags, self._closing)
            job.execute_logged()
        finally:
            with self._lock:
                del self._running[lease]
                self._lock.notify_all()
            self.on_done()

    def executing(self) -> set[str]:
        with self._lock:
            return {run_id for run_id, _ in self._running.values()}

    def cancel(self, run_id: str) -> None:
        with self._lock:
            for running, flags in self._running.values():
                if running == run_id:
                    flags.cancel.set()

    def wake(self) -> None:
        pass  # the supervisor claims for this executor

    def shutdown(self, grace: float) -> None:
        with self._lock:
            for _, flags in self._running.values():
                flags.shutdown.set()
            self._lock.wait_for(lambda: not self._running, grace)
            left = len(self._running)
        self._closing.set()  # jobs still retrying the database give up
        if left:
            log.warning("runs still executing at shutdown; their leases will run out", extra={"runs": left})
        self._pool.shutdown(wait=False, cancel_futures=True)


class Supervisor:
    """The per-process loop that claims runs and keeps leases honest (see the module docstring)."""

    def __init__(self, store: Store, executor: Executor, settings: Settings, owner: str) -> None:
        self.store, self.executor, self.settings, self.owner = store, executor, settings, owner
        self._wake = threading.Event()
        self._waiting = False  # a run was queued here since the last claim: one probably waits
        self._stop = threading.Event()
        self._last_sweep = -float("inf")
        self._thread = threading.Thread(target=self._loop, name="gradwire-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        """Look for work now (a job ended: a worker is free)."""
        self._wake.set()
        self.executor.wake()

    def queued(self) -> None:
        """A run was queued here: claim it now, without asking first whether one waits."""
        self._waiting = True
        self.nudge()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except StorageError as exc:
                log.warning("supervisor could not reach the database; retrying", extra={"error": str(exc)})
            except Exception:
                log.exception("supervisor tick failed")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _tick(self) -> None:
        if time.monotonic() - self._last_sweep >= self.settings.heartbeat_seconds:
            self._sweep()
            self._last_sweep = time.monotonic()
        while not self._stop.is_set() and self.executor.free_slots() > 0:
            waiting, self._waiting = self._waiting, False
            run = self.store.runs.claim_next(self.owner, waiting)
            if run is None:
                return
            log.info("run claimed", extra={"run": run.id, "attempt": run.attempts})
            self.executor.submit(run.id, run.owner)

    def _sweep(self) -> None:
        s = self.settings
        reaped = self.store.runs.reap(s.lease_seconds, self.executor.executing())
        if reaped:
            log.warning("runs whose lease expired marked interrupted", extra={"runs": reaped})
        if s.auto_resume and (
            queued := self.store.runs.requeue_interrupted(s.auto_resume, s.max_queued_runs)
        ):
            log.info("interrupted runs queued again", extra={"runs": queued})
        if swept := self.store.datasets.reap_uploads(s.upload_ttl_seconds):
            log.info("abandoned uploads deleted", extra={"uploads": swept})
        if dropped := self.store.datasets.reap_temporary():
            log.info("data runs brought inline deleted: no run needs it", extra={"datasets": dropped})
