"""A worker process: executes the runs its server hands it, one at a time.

Started by :class:`.process_executor.ProcessExecutor` as ``python -m gradwire.service.execution.worker``.
The server and the worker speak JSON lines over the worker's stdin and stdout (never pickles).
The first line the server writes is the worker's :class:`Setup`; every later one is an order:

    {"op": "run", "run": ID, "lease": LEASE}   execute this run, claimed under this lease
    {"op": "cancel", "run": ID}                stop it within a minibatch
    {"op": "threads", "n": N}                  compute with N BLAS threads (runs started or ended elsewhere)
    {"op": "shutdown"}                         stop the run at its epoch end, its checkpoint kept

The worker answers on its stdout:

    {"op": "ready", "blas_threads": N}         imports done, database open: it takes runs
    {"op": "alive", "epochs": E, "samples": S} every heartbeat, with what it trained since its last word
    {"op": "changed", "run": ID}               a commit of the run landed: its watchers look again
    {"op": "done", "run": ID, "epochs": E, ...} the run ended here, however it ended (and what it trained)

When its stdin ends, the worker exits: once its run has stopped if a shutdown was ordered (the
server is stopping), at once if not (the server died, and its runs die with it, as they would on
its threads: their leases run out and another server resumes them from their checkpoints).
The job itself (:class:`.jobs.RunJob`) is the one a thread executor runs: it reads the run, its
datasets and its checkpoint from the database and writes its epochs and its end back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass, fields
from typing import IO, Any

from threadpoolctl import threadpool_info

from gradwire.storage import StorageError, open_store

from ..core.logformat import log_to_stderr
from ..core.metrics import TRAINED
from ..core.settings import Limits, Settings
from ..core.tuning import tune_worker
from .jobs import RunJob
from .signals import StopFlags

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set for a worker before it starts, so that BLAS starts no more threads than its share."""

log = logging.getLogger(__name__)

MODULE = "gradwire.service.execution.worker"
EXIT_SERVER_GONE = 3
EXIT_NO_DATABASE = 4


@dataclass(frozen=True)
class Setup:
    """What a worker is started with: the server's settings, its own BLAS threads and niceness,
    and how to log (the server's format and level)."""

    settings: Settings
    blas_threads: int
    nice: int
    log_json: bool
    log_level: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Setup:
        raw = json.loads(line)
        given = raw.pop("settings")
        limits = Limits(**given.pop("limits"))
        settings = Settings(
            **{f.name: given[f.name] for f in fields(Settings) if f.name in given}, limits=limits
        )
        return cls(settings=settings, **raw)


class Answers:
    """The worker's side of the pipe back to its server: one JSON line per answer, whole, from any
    thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, op: str, **fields: Any) -> None:
        with self.lock:
            self.stream.write(json.dumps({"op": op, **fields}) + "\n")
            self.stream.flush()


class Relay:
    """The job's run events, sent to the server, whose watchers wait on them (see
    :class:`.signals.Changes`)."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def bump(self, run_id: str) -> None:
        self.answers.send("changed", run=run_id)

    def finished(self, run_id: str) -> None:
        pass  # the server hears "done" once the job has returned


class Worker:
    """The orders loop (the main thread), the job's thread and the heartbeat thread."""

    def __init__(self, setup: Setup, answers: Answers) -> None:
        self.settings = setup.settings
        self.answers = answers
        self.store = open_store(self.settings.database_url, self.settings.db_statement_seconds, create=False)
        self.closing = threading.Event()
        self.flags = StopFlags()
        self.job: threading.Thread | None = None
        self.run_id = ""
        self.stopping = False  # a shutdown was ordered: the server is stopping
        self.reported = (0, 0)  # TRAINED's totals when last sent to the server
        self.threads = setup.blas_threads  # the BLAS threads its server last asked for
        self.counted = threading.Lock()

    def serve(self, orders: IO[str]) -> None:
        threading.Thread(target=self._beat, name="gradwire-worker-alive", daemon=True).start()
        self.answers.send("ready", blas_threads=max((p["num_threads"] for p in threadpool_info()), default=0))
        for line in orders:
            order = json.loads(line)
            ORDERS[order["op"]](self, order)
        if not self.stopping:
            log.warning("worker's server is gone; exiting", extra={"run": self.run_id or None})
            os._exit(EXIT_SERVER_GONE)
        if self.job is not None:
            self.job.join()
        self.closing.set()
        self.store.close()

    def _run(self, order: dict[str, Any]) -> None:
        if self.job is not None:  # it said "done" as its last act: it ends at once
            self.job.join()
        self.flags, self.run_id = StopFlags(self.threads), order["run"]
        if self.stopping:
            self.flags.shutdown.set()
        self.job = threading.Thread(
            target=self._execute, args=(order["run"], order["lease"], self.flags), name="gradwire-job"
        )
        self.job.start()

    def _execute(self, run_id: str, lease: str, flags: StopFlags) -> None:
        try:
            RunJob(
                self.store, run_id, lease, self.settings, Relay(self.answers), flags, self.closing
            ).execute_logged()
        finally:
            self.answers.send("done", run=run_id, **self._trained())

    def _cancel(self, order: dict[str, Any]) -> None:
        if order["run"] == self.run_id:
            self.flags.cancel.set()

    def _threads(self, order: dict[str, Any]) -> None:
        self.threads = self.flags.threads = int(order["n"])

    def _shutdown(self, order: dict[str, Any]) -> None:
        self.stopping = True
        self.flags.shutdown.set()

    def _beat(self) -> None:
        while not self.closing.wait(self.settings.heartbeat_seconds):
            self.answers.send("alive", **self._trained())

    def _trained(self) -> dict[str, int]:
        """Epochs and samples trained since the last time this was asked (the server's metrics)."""
        with self.counted:
            epochs, samples = TRAINED.totals()
            delta = {"epochs": epochs - self.reported[0], "samples": samples - self.reported[1]}
            self.reported = (epochs, samples)
            return delta


ORDERS = {
    "run": Worker._run,
    "cancel": Worker._cancel,
    "threads": Worker._threads,
    "shutdown": Worker._shutdown,
}
"""What the worker does for each order, by its ``op``."""


def main() -> int:
    answers = Answers(os.fdopen(os.dup(1), "w"))
    os.dup2(2, 1)  # whatever else prints goes to stderr, never into the answers
    first = sys.stdin.readline()
    if not first:
        return 0  # the server went before it said anything
    setup = Setup.from_json(first)
    os.nice(setup.nice)
    tune_worker()  # its BLAS threads: the variables set them at start; runs set them (BlasThreads)
    log_to_stderr(setup.log_json, setup.log_level)
    try:
        worker = Worker(setup, answers)
    except StorageError as exc:  # its server replaces it, a heartbeat later
        log.error("worker cannot use the database; exiting", extra={"error": str(exc)})
        return EXIT_NO_DATABASE
    worker.serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
