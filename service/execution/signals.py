"""Process-local fast paths around the database, which stays the truth.

* :class:`Changes` wakes the watchers of a run in this process as soon as a commit of that run
  lands here; watchers still read what changed from the database, and poll it anyway (with a
  bound) for commits made by other processes.
* :class:`StopFlags` are how the threads of this process ask a job executing here to stop: a
  cancel (also learnt from the database at the job's next heartbeat), a lost lease, a shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class RunEvents(Protocol):
    """What a job tells about its run as it goes: :class:`Changes` in this process, or a worker
    process's relay to its server's."""

    def bump(self, run_id: str) -> None:
        """A commit of the run landed."""

    def finished(self, run_id: str) -> None:
        """The job is over."""


class Changes:
    """Wakes the watchers of a run when it changes. Changes are numbered in one sequence; a
    watcher notes the number before it reads the database, then waits (with a bound) for a later
    change of its run. A finished run's entry goes, and the number of the latest such goodbye
    stands in for every run without an entry, so the table does not grow with every run ever
    executed (a watcher of a run that never changed may then wake for nothing, and read again)."""

    def __init__(self) -> None:
        self._sequence = 0
        self._last: dict[str, int] = {}
        self._forgotten = 0
        self._moved = threading.Condition()

    def bump(self, run_id: str) -> None:
        with self._moved:
            self._sequence += 1
            self._last[run_id] = self._sequence
            self._moved.notify_all()

    def finished(self, run_id: str) -> None:
        """The run's last change: its watchers wake, and its entry goes."""
        with self._moved:
            self._sequence += 1
            self._last.pop(run_id, None)
            self._forgotten = self._sequence
            self._moved.notify_all()

    def seen(self) -> int:
        """The number of the latest change, to wait for a later one."""
        with self._moved:
            return self._sequence

    def wait(
        self, run_id: str, seen: int, timeout: float, give_up: Callable[[], bool] = lambda: False
    ) -> bool:
        """Block until ``run_id`` changed after ``seen`` (True), ``give_up()`` holds or ``timeout``
        passed (False)."""
        with self._moved:
            self._moved.wait_for(lambda: self._changed(run_id, seen) or give_up(), timeout)
            return self._changed(run_id, seen)

    def _changed(self, run_id: str, seen: int) -> bool:
        return self._last.get(run_id, self._forgotten) > seen

    def wake_all(self) -> None:
        """Make every waiter look at its ``give_up`` condition again."""
        with self._moved:
            self._moved.notify_all()


class StopFlags:
    """Why a job should stop early. ``cancel`` and ``lost`` stop it within a minibatch; ``shutdown``
    at the end of the epoch, so that its state can be kept for an exact resume.

    Beside them, ``threads``: how many BLAS threads its process should compute with (0: as they
    are), set by a worker process's server as runs start and end elsewhere; the job's own thread
    takes it up before its next minibatch (BLAS is reconfigured only from the thread that calls it)."""

    def __init__(self, threads: int = 0) -> None:
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.shutdown = threading.Event()
        self.threads = threads

    def now(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()
