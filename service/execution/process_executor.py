"""Runs in worker processes of this server: every core trains, and the server stays responsive.

:class:`ProcessExecutor` keeps ``train_workers`` worker processes (:mod:`.worker`), started ahead
and reused, so a run handed to one starts at once: no interpreter start, no NumPy import. Each
worker runs ``worker_nice`` below the server's priority, with its share of the CPUs as BLAS
threads, its own database connections, and one run at a time; a run's datasets are loaded by
the worker that trains it and by no other process.

A reader thread per worker hears its answers (the protocol is in :mod:`.worker`). A worker that
ends, whatever ended it, costs its run only the work since its last checkpoint: the run's lease
is ended at once (interrupted, ``worker_died``), the supervisor queues it again, and a new
worker takes the dead one's place. A worker silent for ``lease_seconds`` (stopped, or stuck
where not even its heartbeat thread runs) is killed, and the same follows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradwire.storage import StorageError, Store
from gradwire.v1.vocabulary import StopReason

from ..core.logformat import logs_json
from ..core.metrics import TRAINED
from ..core.settings import Settings, usable_cpus
from .signals import Changes
from .worker import BLAS_VARIABLES, MODULE, Setup

log = logging.getLogger(__name__)

EXIT_SECONDS = 5.0
"""How long a worker may take to exit once its orders end, before it is killed."""


@dataclass(eq=False)
class WorkerProcess:
    """One worker, as its server sees it."""

    process: subprocess.Popen[str]
    ready: bool = False
    run: tuple[str, str] | None = None  # (run id, lease) of the run it executes
    threads: int = 0  # the BLAS threads it was last told to compute with
    heard: float = field(default_factory=time.monotonic)  # when it last said anything

    def order(self, op: str, **fields: Any) -> None:
        """Write one order; a worker that is gone is its reader's to handle, not the caller's."""
        self.write(json.dumps({"op": op, **fields}))

    def write(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(OSError, ValueError):  # gone, or its pipe closed at shutdown
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()

    def close(self) -> None:
        """No more orders: the worker stops its run at the epoch end, then exits."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):  # a broken pipe: it is gone already
            self.process.stdin.close()


class ProcessExecutor:
    """Runs on ``settings.train_workers`` worker processes (see the module's docstring)."""

    def __init__(
        self, store: Store, settings: Settings, changes: Changes, on_done: Callable[[], None] = lambda: None
    ) -> None:
        self.store, self.settings, self.changes, self.on_done = store, settings, changes, on_done
        self._lock = threading.Condition()
        self._workers: list[WorkerProcess] = []
        self._closing = False
        self._wake = threading.Event()
        self._cpus = usable_cpus()
        self._setup = Setup(
            settings=settings,
            blas_threads=max(1, self._cpus // settings.train_workers),
            nice=settings.worker_nice,
            log_json=logs_json(),
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        self._watchdog = threading.Thread(target=self._watch, name="gradwire-workers", daemon=True)

    # ------------------------------------------------------------------ the Executor protocol

    def start(self) -> None:
        with self._lock:
            self._fill()
        self._watchdog.start()

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._closing else len(self._idle())

    def submit(self, run_id: str, lease: str) -> None:
        with self._lock:
            idle = self._idle()  # there was one when the supervisor asked; it may have died since
            if idle:
                idle[0].run = (run_id, lease)
                idle[0].order("run", run=run_id, lease=lease)
                self._share()
                return
        log.warning("no worker left for a claimed run; it is queued again", extra={"run": run_id})
        self._release(run_id, lease)

    def executing(self) -> set[str]:
        with self._lock:
            return {w.run[0] for w in self._workers if w.run is not None}

    def cancel(self, run_id: str) -> None:
        with self._lock:
            for worker in self._workers:
                if worker.run is not None and worker.run[0] == run_id:
                    worker.order("cancel", run=run_id)

    def wake(self) -> None:
        pass  # the supervisor claims for this executor

    def shutdown(self, grace: float) -> None:
        with self._lock:
            self._closing = True
            for worker in self._workers:
                worker.order("shutdown")
            self._lock.wait_for(lambda: not any(w.run for w in self._workers), grace)
            workers = list(self._workers)
        self._wake.set()
        for worker in workers:
            worker.close()
            if not worker.ready:  # still importing, it holds nothing: it need not finish to exit
                worker.process.terminate()
        deadline = time.monotonic() + EXIT_SECONDS
        for worker in workers:
            try:
                worker.process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker did not exit; killed", extra={"pid": worker.process.pid, "run": worker.run}
                )
                worker.process.kill()
        if self._watchdog.is_alive():
            self._watchdog.join()

    # ------------------------------------------------------------------ workers

    def _share(self) -> None:
        """Share the CPUs among the workers executing runs (under the lock): a run alone computes
        with every core, two with half each; the sum never exceeds the cores once each has taken
        up its share (before its next minibatch)."""
        busy = [w for w in self._workers if w.run is not None]
        share = max(1, self._cpus // max(len(busy), 1))
        for worker in busy:
            if worker.threads != share:
                worker.threads = share
                worker.order("threads", n=share)

    def _idle(self) -> list[WorkerProcess]:
        return [w for w in self._workers if w.ready and w.run is None]

    def _fill(self) -> None:
        """Start workers until there are ``train_workers`` (under the lock)."""
        while not self._closing and len(self._workers) < self.settings.train_workers:
            env = {**os.environ, **dict.fromkeys(BLAS_VARIABLES, str(self._setup.blas_threads))}
            process = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            worker = WorkerProcess(process, threads=self._setup.blas_threads)
            worker.write(self._setup.to_json())
            self._workers.append(worker)
            name = f"gradwire-worker-{process.pid}"
            threading.Thread(target=self._listen, args=(worker,), name=name, daemon=True).start()

    def _listen(self, worker: WorkerProcess) -> None:
        """The worker's answers until its stdout ends; then, whatever happened, its end."""
        assert worker.process.stdout is not None
        try:
            for line in worker.process.stdout:
                worker.heard = time.monotonic()
                self._answer(worker, line)
        finally:
            self._gone(worker, worker.process.wait())

    def _answer(self, worker: WorkerProcess, line: str) -> None:
        try:
            answer = json.loads(line)
            ANSWERS[answer["op"]](self, worker, answer)
        except Exception:  # one answer misread: the worker and its run go on
            what = {"pid": worker.process.pid, "line": line[:200]}
            log.exception("worker answer not understood", extra=what)

    def _ready(self, worker: WorkerProcess, answer: dict[str, Any]) -> None:
        with self._lock:
            worker.ready = True
        what = {
            "pid": worker.process.pid,
            "blas_threads": answer["blas_threads"],
            "nice": self.settings.worker_nice,
        }
        log.info("worker started", extra=what)
        self.on_done()  # a slot opened: the supervisor looks for work

    def _alive(self, worker: WorkerProcess, answer: dict[str, Any]) -> None:
        if answer["epochs"]:
            TRAINED.add(answer["samples"], answer["epochs"])

    def _changed(self, worker: WorkerProcess, answer: dict[str, Any]) -> None:
        self.changes.bump(answer["run"])

    def _done(self, worker: WorkerProcess, answer: dict[str, Any]) -> None:
        self._alive(worker, answer)
        with self._lock:
            worker.run = None
            self._share()
            self._lock.notify_all()
        self.changes.finished(answer["run"])
        self.on_done()

    def _gone(self, worker: WorkerProcess, code: int) -> None:
        """The worker's process ended: end its run's lease, and have it replaced."""
        with self._lock:
            self._workers.remove(worker)
            run, worker.run = worker.run, None
            self._share()
            self._lock.notify_all()
            stopped = self._closing and not worker.ready  # by shutdown, while it was starting
        if (code and not stopped) or run is not None:
            how = f"signal {signal.strsignal(-code)}" if code < 0 else f"exit status {code}"
            log.warning("worker process ended", extra={"pid": worker.process.pid, "how": how, "run": run})
        if run is not None:
            self._release(*run)
            self.changes.finished(run[0])
        if worker.ready:  # a worker that never started waits for the watchdog's next round
            self._wake.set()
        self.on_done()

    def _release(self, run_id: str, lease: str) -> None:
        # A stop's kill is no fault of the run's.
        reason = StopReason.SHUTDOWN if self._closing else StopReason.WORKER_DIED
        try:
            if self.store.runs.release(run_id, lease, reason):
                log.warning("run interrupted: its worker process ended", extra={"run": run_id})
        except StorageError as exc:
            log.warning(
                "could not end a dead worker's lease; it will expire",
                extra={"run": run_id, "error": str(exc)},
            )

    def _watch(self) -> None:
        """Replace workers that ended; kill those silent for ``lease_seconds``."""
        while True:
            self._wake.wait(self.settings.heartbeat_seconds)
            self._wake.clear()
            with self._lock:
                if self._closing:
                    return
            try:
                self._tend()
            except Exception:  # no process could be started (out of memory, or of pids): next round
                log.exception("could not tend the workers")

    def _tend(self) -> None:
        with self._lock:
            self._fill()
            silent = [w for w in self._workers if time.monotonic() - w.heard > self.settings.lease_seconds]
        for worker in silent:
            log.warning(
                "worker silent past its lease; killed", extra={"pid": worker.process.pid, "run": worker.run}
            )
            worker.process.kill()


ANSWERS: dict[str, Callable[[ProcessExecutor, WorkerProcess, dict[str, Any]], None]] = {
    "ready": ProcessExecutor._ready,
    "alive": ProcessExecutor._alive,
    "changed": ProcessExecutor._changed,
    "done": ProcessExecutor._done,
}
"""What the server does with each answer of a worker, by its ``op``."""
