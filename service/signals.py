"""Process-local fast paths around the database, which stays the truth.

* :class:`Changes` wakes the watchers of a run in this process as soon as a commit of that run
  lands here; watchers still read what changed from the database, and poll it anyway (with a
  bound) for commits made by other processes.
* :class:`StopFlags` are how the threads of this process ask a job executing here to stop: a
  cancel (also learnt from the database at the job's next heartbeat), a lost lease, a shutdown.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable


class Changes:
    """A counter per run, bumped on each change; waiters block until theirs moves, with a bound."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._moved = threading.Condition()

    def bump(self, run_id: str) -> None:
        with self._moved:
            self._counts[run_id] += 1
            self._moved.notify_all()

    def seen(self, run_id: str) -> int:
        with self._moved:
            return self._counts[run_id]

    def wait(
        self, run_id: str, seen: int, timeout: float, give_up: Callable[[], bool] = lambda: False
    ) -> int:
        """Block until ``run_id`` changed since ``seen``, ``give_up()`` holds, or ``timeout`` passed."""
        with self._moved:
            self._moved.wait_for(lambda: self._counts[run_id] != seen or give_up(), timeout)
            return self._counts[run_id]

    def wake_all(self) -> None:
        """Make every waiter look at its ``give_up`` condition again."""
        with self._moved:
            self._moved.notify_all()

    def finished(self, run_id: str) -> None:
        """A last change: waiters wake (their count differs from the fresh one) and the run's
        counter goes, so that the table does not grow with every run ever executed."""
        with self._moved:
            self._counts.pop(run_id, None)
            self._moved.notify_all()


class StopFlags:
    """Why a job should stop early. ``cancel`` and ``lost`` stop it within a minibatch; ``shutdown``
    at the end of the epoch, so that its state can be kept for an exact resume."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.shutdown = threading.Event()

    def now(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()
