"""Executing one run: given its id and lease, read everything it needs from the store, train, and
write everything back. This is all an executor runs, in a thread here or, later, elsewhere.

A job holds the run's lease from the moment it was claimed. Its :class:`Committer` thread is its
link to the database from the start (loading a large dataset may outlast a lease): every
``heartbeat_seconds`` it renews the lease, reads whether a cancel was asked for and commits the
epochs since its last commit (so that watchers and listings follow a run as it trains), and
every ``checkpoint_interval`` seconds it commits them with a checkpoint taken at the latest epoch
boundary. Epochs committed past the checkpoint are safe: a resume from the checkpoint computes
them again, to the same bits, and the store keeps those it has. At most one write is in
flight: the trainer never waits for the database, and writes never queue up. The end of the
run (its last epochs, its new version by compare-and-set, its status and receipt) is one
transaction, retried while the database is unavailable, for at most ``db_retry_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from copy import copy
from dataclasses import dataclass, replace
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

from gradwire.engine import (
    FitResult,
    InvalidArgument,
    Network,
    NetworkSpec,
    OptimizerState,
    TrainConfig,
    Trainer,
    TrainingState,
    carry_optimizer_state,
    export_state,
    final_state,
    restore_trainer,
)
from gradwire.engine.training import EpochRecord
from gradwire.storage import (
    Checkpoint,
    CorruptBlob,
    LeaseLost,
    NewEpoch,
    NotFound,
    Outcome,
    RunRecord,
    Store,
    Unavailable,
    VersionConflict,
    VersionState,
)
from gradwire.v1.digest import weights_digest
from gradwire.v1.vocabulary import RunStatus, StopReason

from ..core.metrics import TRAINED
from ..core.settings import Settings
from ..core.tuning import BlasThreads
from .signals import RunEvents, StopFlags

log = logging.getLogger(__name__)

FAILURE_KINDS: dict[type[BaseException], StopReason] = {
    VersionConflict: StopReason.VERSION_CONFLICT,
    NotFound: StopReason.MISSING_DATA,
    CorruptBlob: StopReason.CORRUPT_DATA,
    InvalidArgument: StopReason.INVALID,
    MemoryError: StopReason.OUT_OF_MEMORY,
}
"""A failed run's stop reason, by the class of what failed it; anything else is ``error``."""

YIELD_SECONDS = 0.0005
"""While a run's commit is being written, its training thread gives the GIL away (between
minibatches) at most this often. Small networks train in NumPy calls too short to release the
GIL, so a run holds it almost always; the commit thread gives it up at each of its dozens of
database calls and waits to get it back, holding SQLite's write lock meanwhile, and other
writers time out. Only while writing: yielding always slows small runs (figures in
docs/benchmarks.md, "Figures behind constants")."""

STATUS_AT_STOP: dict[str, RunStatus] = {
    StopReason.MAX_EPOCHS: RunStatus.COMPLETED,
    StopReason.LOSS_THRESHOLD: RunStatus.COMPLETED,
    StopReason.EARLY_STOPPING: RunStatus.COMPLETED,
    StopReason.NON_FINITE: RunStatus.COMPLETED,  # the best (finite) weights so far are kept
    StopReason.STOP_REQUESTED: RunStatus.CANCELLED,
    StopReason.CALLBACK: RunStatus.INTERRUPTED,  # the process is shutting down; resumes from this epoch
}
"""A run's status by the engine's stop reason."""

REASON_AT_STOP: dict[str, StopReason] = {
    RunStatus.CANCELLED: StopReason.CANCELLED,
    RunStatus.INTERRUPTED: StopReason.SHUTDOWN,
}
"""The stop reason a run keeps where its status says more than the engine's reason, by status."""

Epochs = list[NewEpoch]


def failure_kind(exc: BaseException) -> str:
    return next((kind for cls, kind in FAILURE_KINDS.items() if isinstance(exc, cls)), StopReason.ERROR)


@cache
def gradwire_version() -> str:
    """The installed gradwire's version, asked once: the code running is the code first read."""
    try:
        return metadata.version("gradwire")
    except metadata.PackageNotFoundError:
        return "unknown"


def checkpoint_of(trainer: Trainer) -> Checkpoint:
    """The trainer's whole state at an epoch boundary, for an exact resume (no history)."""
    state = export_state(trainer, with_history=False)
    return Checkpoint(trainer.epoch, state.arrays, state.meta)


@dataclass
class Loaded:
    """What a job reads before it trains."""

    run: RunRecord
    trainer: Trainer
    data: dict[str, np.ndarray]
    seconds: float
    last_loss: float | None  # the training loss of the epoch the checkpoint ends, when resuming


def new_epoch(record: EpochRecord, offset: float = 0.0) -> NewEpoch:
    """An engine's epoch as the store keeps it: its loss columns, and the whole record, whose
    ``elapsed`` counts from the run's start (``offset``: seconds trained by earlier attempts)."""
    entry = {name: copy(value) for name, value in vars(record).items()}  # asdict without its deep
    # copy: the record's dicts hold numbers only
    entry["elapsed"] += offset
    return NewEpoch(record.epoch, record.train_loss, record.val_loss, entry)


class Committer:
    """The job's link to the database, on a thread of its own (see the module's docstring).

    A write that fails for another reason than the database being away fails the run:
    ``failure`` holds it and the trainer stops within a minibatch.
    """

    def __init__(
        self, store: Store, run_id: str, owner: str, settings: Settings, changes: RunEvents, flags: StopFlags
    ) -> None:
        self.store, self.run_id, self.owner, self.settings = store, run_id, owner, settings
        self.changes, self.flags = changes, flags
        self.trainer: Trainer | None = None  # set once loaded: checkpoints come from it
        # Seconds trained by earlier attempts, as far as they committed: added to each epoch's elapsed.
        self.offset = 0.0
        self.pending: Epochs = []
        self.in_flight: tuple[Epochs, Checkpoint | None] | None = None
        self.last_commit = time.monotonic()
        self.failure: Exception | None = None
        self.wake = threading.Condition()
        self.closing = False
        self.next_yield = 0.0
        self.writing = False  # the commit thread is writing: the training thread yields the GIL
        self.threads = 0  # the BLAS threads last set from flags.threads
        self.thread = threading.Thread(target=self._loop, name=f"gradwire-commit-{run_id[:8]}", daemon=True)

    def __enter__(self) -> Committer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify_all()
        self.thread.join()

    def should_stop(self) -> bool:
        """Asked before every minibatch. While this run's database write is under way, gives the
        GIL away at most every :data:`YIELD_SECONDS`, so the write ends soon."""
        if self.writing:
            now = time.perf_counter()
            if now >= self.next_yield:
                time.sleep(0)
                self.next_yield = now + YIELD_SECONDS
        if self.flags.threads != self.threads:
            self.threads = self.flags.threads
            in_effect = BlasThreads.use(self.threads)
            what = {"run": self.run_id, "asked": self.threads, "threads": in_effect}
            log.info("BLAS threads set", extra=what)
        return self.flags.now() or self.failure is not None

    def epoch_ended(self, record: EpochRecord) -> bool:
        """On the training thread, after every epoch; True asks the trainer to stop here."""
        TRAINED.add(record.samples)
        epoch = new_epoch(record, self.offset)
        due = time.monotonic() - self.last_commit >= self.settings.checkpoint_interval
        with self.wake:  # the commit thread may take the pending epochs at a heartbeat
            self.pending.append(epoch)
            if due and self.in_flight is None and self.trainer is not None:
                self.in_flight = (self.pending, checkpoint_of(self.trainer))
                self.pending = []
                self.wake.notify_all()
        return self.flags.shutdown.is_set()

    def leftover(self) -> Epochs:
        """After the thread stopped: the epochs no commit is known to have landed, in order (a
        commit whose answer was lost may have: the store skips those it has)."""
        return [*(self.in_flight[0] if self.in_flight else ()), *self.pending]

    def _loop(self) -> None:
        while True:
            with self.wake:
                self.wake.wait_for(
                    lambda: self.closing or self.in_flight is not None, self.settings.heartbeat_seconds
                )
                if self.closing:
                    return
                if self.in_flight is None and self.pending:  # a heartbeat: show the epochs so far
                    self.in_flight, self.pending = (self.pending, None), []
                work = self.in_flight
            try:
                cancel = self._write(work)
            except LeaseLost:
                log.warning("run lost its lease; stopping", extra={"run": self.run_id})
                self.flags.lost.set()
                return
            except Unavailable as exc:
                log.warning("run commit failed; will retry", extra={"run": self.run_id, "error": str(exc)})
                with self.wake:  # back off; the work stays in flight for the next try
                    self.wake.wait_for(lambda: self.closing, self.settings.heartbeat_seconds)
                continue
            except Exception as exc:
                log.exception("run commit failed; the run fails", extra={"run": self.run_id})
                self.failure = exc
                return
            if cancel:
                self.flags.cancel.set()

    def _write(self, work: tuple[Epochs, Checkpoint | None] | None) -> bool:
        self.writing = True
        try:
            cancel = self._write_now(work)
        finally:
            self.writing = False
        return cancel

    def _write_now(self, work: tuple[Epochs, Checkpoint | None] | None) -> bool:
        runs = self.store.runs
        if work is None:
            return runs.heartbeat(self.run_id, self.owner)
        epochs, checkpoint = work
        # The run's clock, earlier attempts included, kept as far as the checkpoint: a resume
        # starts there, and counts from there.
        seconds = epochs[-1].record["elapsed"] if epochs and checkpoint is not None else 0.0
        cancel = runs.commit(self.run_id, self.owner, epochs, checkpoint, seconds)
        with self.wake:
            self.in_flight = None
            if checkpoint is not None:
                self.last_commit = time.monotonic()
        self.changes.bump(self.run_id)
        return cancel


class RunJob:
    """One run, executed once by the process holding its lease (``owner``)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        owner: str,
        settings: Settings,
        changes: RunEvents,
        flags: StopFlags,
        closing: threading.Event,
    ) -> None:
        self.store, self.run_id, self.owner, self.settings = store, run_id, owner, settings
        self.changes, self.flags, self.closing = changes, flags, closing

    def execute(self) -> None:
        """Run to the end; whatever happens, the run's row says how it ended, or (database gone
        for longer than ``db_retry_seconds``, lease lost) its lease runs out and it is reaped."""
        committer = Committer(self.store, self.run_id, self.owner, self.settings, self.changes, self.flags)
        try:
            with committer:
                outcome = self._attempt(committer)
            self._finish(replace(outcome, epochs=tuple(committer.leftover())))
        finally:
            self.changes.finished(self.run_id)  # however it went: its watchers here look again

    def execute_logged(self) -> None:
        """:meth:`execute`, for an executor's loop: a crash is logged with its run, never raised
        into the loop (the run's lease, renewed no more, runs out and a supervisor reaps it)."""
        try:
            self.execute()
        except Exception:
            log.exception("run job crashed", extra={"run": self.run_id})

    def _attempt(self, committer: Committer) -> Outcome:
        try:
            loaded = self._load()
        except Exception as exc:
            log.exception("run could not start", extra={"run": self.run_id})
            return self._failed(exc)
        committer.trainer, committer.offset = loaded.trainer, loaded.run.train_seconds
        try:
            outcome = self._train(loaded, committer)
        except Exception as exc:
            log.exception("run failed", extra={"run": self.run_id})
            outcome = self._failed(exc)
        return replace(outcome, load_seconds=loaded.seconds)

    # ------------------------------------------------------------------ phases

    def _load(self) -> Loaded:
        started = time.perf_counter()
        load = self.store.runs.load(self.run_id)  # one read
        run, config = load.run, TrainConfig.from_dict(load.run.options)
        if load.checkpoint is not None:
            trainer = restore_trainer(TrainingState(load.checkpoint.arrays, load.checkpoint.meta))
        else:
            assert load.base is not None  # a run without a checkpoint starts from its base version
            trainer = self._fresh_trainer(load.base, NetworkSpec.from_dict(load.spec), config)
        return Loaded(run, trainer, load.data, time.perf_counter() - started, load.last_loss)

    @staticmethod
    def _fresh_trainer(base: VersionState, spec: NetworkSpec, config: TrainConfig) -> Trainer:
        """The run's start: its base version's weights, and the optimiser state that belongs to
        exactly those weights (if the run that made them left one and it fits)."""
        trainer = Trainer(Network.from_state(spec, base.weights), config)
        if base.optimizer is not None and base.optimizer_meta is not None:
            meta = base.optimizer_meta
            carry_optimizer_state(trainer, OptimizerState(meta["name"], int(meta["t"]), base.optimizer))
        return trainer

    def _train(self, loaded: Loaded, committer: Committer) -> Outcome:
        run, trainer, data = loaded.run, loaded.trainer, loaded.data
        started = time.perf_counter()
        due = None if loaded.last_loss is None else trainer.rule_stop(loaded.last_loss)
        if due is not None:  # the checkpoint is of the epoch that stopped it: nothing more to train
            return replace(self._outcome(run, trainer, due), train_seconds=committer.offset)
        validation = None
        if "validation_inputs" in data:
            validation = (data["validation_inputs"], data["validation_targets"])
        result: FitResult = trainer.fit(
            data["inputs"],
            data["targets"],
            epochs=max(trainer.config.epochs - trainer.epoch, 0),
            validation_data=validation,
            callback=committer.epoch_ended,
            should_stop=committer.should_stop,
        )
        if committer.failure is not None:
            raise committer.failure
        outcome = self._outcome(run, trainer, result.stop_reason)
        return replace(outcome, train_seconds=committer.offset + time.perf_counter() - started)

    def _outcome(self, run: RunRecord, trainer: Trainer, stop_reason: str) -> Outcome:
        status = STATUS_AT_STOP[stop_reason]
        common: dict[str, Any] = {
            "status": status,
            "stop_reason": REASON_AT_STOP.get(status, stop_reason),
            "best_epoch": trainer.best.epoch,
            "best_loss": trainer.best.loss,
        }
        if status == RunStatus.INTERRUPTED:
            return Outcome(**common, checkpoint=checkpoint_of(trainer))
        if status == RunStatus.CANCELLED or trainer.epoch == 0:  # abandoned, or nothing learnt
            return Outcome(**common)  # no new version: a cancelled run keeps nothing, however it ends
        weights, optimizer = final_state(trainer, trainer.config.restore_best)
        receipt = {
            "seed": trainer.config.seed,
            "spec_seed": trainer.network.spec.seed,
            "datasets": dict(run.datasets),
            "numpy_version": np.__version__,
            "gradwire_version": gradwire_version(),
            "weights_sha256": weights_digest(weights),
            "base_version": run.base_version,
        }
        return Outcome(
            **common,
            weights=weights,
            optimizer=optimizer.slots,
            optimizer_meta=optimizer.meta,
            receipt=receipt,
        )

    def _failed(self, exc: BaseException) -> Outcome:
        """How a run ends when something failed: the database away is no fault of the run's (it
        is interrupted, to resume from its checkpoint); anything else fails it, saying why."""
        if isinstance(exc, Unavailable):
            return Outcome(RunStatus.INTERRUPTED, StopReason.DATABASE_UNAVAILABLE, error=str(exc))
        return Outcome(RunStatus.FAILED, failure_kind(exc), error=f"{type(exc).__name__}: {exc}")

    def _finish(self, outcome: Outcome) -> None:
        """Commit the end, retrying while the database is unavailable (bounded)."""
        if self.flags.lost.is_set():
            return  # the run is someone else's now (reaped or cancelled elsewhere)
        deadline = time.monotonic() + self.settings.db_retry_seconds
        pause = 0.1
        while True:
            try:
                done = self.store.runs.finish(self.run_id, self.owner, outcome)
                break
            except VersionConflict as exc:
                log.warning("run lost the race to publish", extra={"run": self.run_id})
                outcome = Outcome(
                    RunStatus.FAILED, StopReason.VERSION_CONFLICT, epochs=outcome.epochs, error=str(exc)
                )
            except LeaseLost:
                log.warning("run lost its lease before it could finish", extra={"run": self.run_id})
                return
            except Unavailable as exc:
                log.warning(
                    "run end not recorded yet; will retry", extra={"run": self.run_id, "error": str(exc)}
                )
                if time.monotonic() + pause > deadline or self.closing.wait(pause):
                    log.error(
                        "run could not record its end; its lease will run out", extra={"run": self.run_id}
                    )
                    return
                pause = min(pause * 2, 2.0)
            except Exception as exc:
                if outcome.status == RunStatus.FAILED and outcome.weights is None:
                    log.exception("run could not record its failure", extra={"run": self.run_id})
                    return
                log.exception("run could not record its end; it fails", extra={"run": self.run_id})
                outcome = replace(self._failed(exc), epochs=outcome.epochs)
        log.info(
            "run finished",
            extra={
                "run": self.run_id,
                "status": done.status,
                "reason": done.stop_reason,
                "version": done.version,
            },
        )
