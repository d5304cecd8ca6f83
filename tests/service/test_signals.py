"""The process-local wake-ups: a watcher hears its run's changes, its end included."""

from __future__ import annotations

import threading

from gradwire.service.execution.signals import Changes

FOREVER = 60.0  # a bound no passing test comes near: waiting it out is the failure


def test_a_watcher_wakes_for_its_run_and_for_its_end() -> None:
    changes = Changes()
    seen = changes.seen()
    changes.bump("other")
    assert not changes.wait("mine", seen, timeout=0)  # another run's change is not its own
    threading.Thread(target=changes.bump, args=("mine",)).start()
    assert changes.wait("mine", seen, timeout=FOREVER)
    seen = changes.seen()
    threading.Thread(target=changes.finished, args=("mine",)).start()
    assert changes.wait("mine", seen, timeout=FOREVER)  # the last change wakes it though its entry is gone
    assert changes.seen() > seen


def test_finished_runs_leave_no_entry_behind() -> None:
    changes = Changes()
    for run in range(1000):
        changes.bump(str(run))
        changes.finished(str(run))
    assert changes._last == {}
