"""Executing one run: given its id, read everything it needs from the store, train, and write
everything back. This is all an executor runs, in a thread here or, later, on another machine.

A job holds the run's lease from the moment it was claimed. Its :class:`Committer` thread is its
link to the database: every ``checkpoint_interval`` seconds it commits the epochs since the last
commit with a checkpoint taken at the latest epoch boundary (at most one write in flight: the
trainer never waits for the database, and never queues writes), and every ``heartbeat_seconds``
it renews the lease and reads whether a cancel was asked for. The end of the run (its last
epochs, its new version by compare-and-set, its status and receipt) is one transaction, retried
while the database is unavailable, for at most ``db_retry_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
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
    NotFound,
    Outcome,
    RunRecord,
    Store,
    Unavailable,
    VersionConflict,
)
from gradwire.v1.digest import weights_digest

from .settings import Settings
from .signals import Changes, StopFlags

log = logging.getLogger(__name__)

FAILURE_KINDS: dict[type[BaseException], str] = {
    VersionConflict: "version_conflict",
    NotFound: "missing_data",
    CorruptBlob: "corrupt_data",
    InvalidArgument: "invalid",
    MemoryError: "out_of_memory",
    Unavailable: "database_unavailable",
}
"""A failed run's stop reason, by the class of what failed it; anything else is ``error``."""

FINISHED = {
    "max_epochs": "completed",
    "loss_threshold": "completed",
    "early_stopping": "completed",
    "non_finite": "completed",  # the best (finite) weights so far are kept
    "stop_requested": "cancelled",
    "callback": "interrupted",  # the process is shutting down; resumes from this epoch
}
"""A run's status by the engine's stop reason."""


def failure_kind(exc: BaseException) -> str:
    return next((kind for cls, kind in FAILURE_KINDS.items() if isinstance(exc, cls)), "error")


def gradwire_version() -> str:
    try:
        return metadata.version("gradwire")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Loaded:
    """What a job reads before it trains."""

    run: RunRecord
    trainer: Trainer
    data: dict[str, np.ndarray]
    seconds: float


class Committer:
    """The job's link to the database, on a thread of its own (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        run: RunRecord,
        owner: str,
        settings: Settings,
        changes: Changes,
        flags: StopFlags,
        trainer: Trainer,
        elapsed_offset: float,
    ) -> None:
        self.store, self.run, self.owner, self.settings = store, run, owner, settings
        self.changes, self.flags, self.trainer, self.offset = changes, flags, trainer, elapsed_offset
        self.pending: list[dict[str, Any]] = []
        self.in_flight: tuple[list[dict[str, Any]], Checkpoint] | None = None
        self.last_commit = time.monotonic()
        self.wake = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name=f"gradwire-commit-{run.id[:8]}", daemon=True)

    def __enter__(self) -> Committer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify_all()
        self.thread.join()

    def epoch_ended(self, record: EpochRecord) -> bool:
        """On the training thread, after every epoch; True asks the trainer to stop here."""
        entry = asdict(record)
        entry["elapsed"] += self.offset
        self.pending.append(entry)
        due = time.monotonic() - self.last_commit >= self.settings.checkpoint_interval
        with self.wake:
            if due and self.in_flight is None:
                self.in_flight = (self.pending, checkpoint_of(self.trainer))
                self.pending = []
                self.wake.notify_all()
        return self.flags.shutdown.is_set()

    def leftover(self) -> list[dict[str, Any]]:
        """After the thread stopped: the epochs no commit has landed yet, in order."""
        return [*(self.in_flight[0] if self.in_flight else ()), *self.pending]

    def _loop(self) -> None:
        while True:
            with self.wake:
                self.wake.wait_for(
                    lambda: self.closing or self.in_flight is not None, self.settings.heartbeat_seconds
                )
                if self.closing:
                    return
                work = self.in_flight
            try:
                cancel = self._write(work)
            except LeaseLost:
                log.warning("run lost its lease; stopping", extra={"run": self.run.id})
                self.flags.lost.set()
                return
            except Unavailable as exc:
                log.warning("run commit failed; will retry", extra={"run": self.run.id, "error": str(exc)})
                with self.wake:  # back off; the work stays in flight for the next try
                    self.wake.wait_for(lambda: self.closing, self.settings.heartbeat_seconds)
                continue
            if cancel:
                self.flags.cancel.set()

    def _write(self, work: tuple[list[dict[str, Any]], Checkpoint] | None) -> bool:
        runs = self.store.runs
        if work is None:
            return runs.heartbeat(self.run.id, self.owner)
        cancel = runs.commit(self.run.id, self.owner, work[0], work[1])
        with self.wake:
            self.in_flight, self.last_commit = None, time.monotonic()
        self.changes.bump(self.run.id)
        return cancel


def checkpoint_of(trainer: Trainer) -> Checkpoint:
    """The trainer's whole state at an epoch boundary, for an exact resume (no history)."""
    state = export_state(trainer, with_history=False)
    return Checkpoint(trainer.epoch, state.arrays, state.meta)


class RunJob:
    """One run, executed once by the process holding its lease."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        owner: str,
        settings: Settings,
        changes: Changes,
        flags: StopFlags,
        closing: threading.Event,
    ) -> None:
        self.store, self.run_id, self.owner, self.settings = store, run_id, owner, settings
        self.changes, self.flags, self.closing = changes, flags, closing

    def execute(self) -> None:
        """Run to the end; whatever happens, the run's row says how it ended, or (database gone
        for longer than ``db_retry_seconds``, lease lost) its lease runs out and it is reaped."""
        try:
            loaded = self._load()
        except Exception as exc:
            log.exception("run could not start", extra={"run": self.run_id})
            self._finish(self._failed(exc))
            return
        try:
            outcome = self._train(loaded)
        except Exception as exc:
            log.exception("run failed", extra={"run": self.run_id})
            outcome = self._failed(exc)
        self._finish(replace(outcome, load_seconds=loaded.seconds))

    # ------------------------------------------------------------------ phases

    def _load(self) -> Loaded:
        started = time.perf_counter()
        run = self.store.runs.get(self.run_id)
        model = self.store.models.get(run.model_id)
        spec = NetworkSpec.from_dict(model.spec)
        config = TrainConfig.from_dict(run.options)
        checkpoint = self.store.runs.load_checkpoint(run.id)
        if checkpoint is not None:
            trainer = restore_trainer(TrainingState(checkpoint.arrays, checkpoint.meta))
        else:
            trainer = self._fresh_trainer(run, spec, config)
        data = {role: self.store.datasets.load(dataset_id, role) for role, dataset_id in run.datasets.items()}
        return Loaded(run, trainer, data, time.perf_counter() - started)

    def _fresh_trainer(self, run: RunRecord, spec: NetworkSpec, config: TrainConfig) -> Trainer:
        """The run's start: its base version's weights, and the optimiser state that belongs to
        exactly those weights (if the run that made them left one and it fits)."""
        base = self.store.models.load_version(run.model_id, run.base_version)
        trainer = Trainer(Network.from_state(spec, base.weights), config)
        if base.optimizer is not None and base.optimizer_meta is not None:
            meta = base.optimizer_meta
            carry_optimizer_state(trainer, OptimizerState(meta["name"], int(meta["t"]), base.optimizer))
        return trainer

    def _train(self, loaded: Loaded) -> Outcome:
        run, trainer, data = loaded.run, loaded.trainer, loaded.data
        started = time.perf_counter()
        validation = None
        if "validation_inputs" in data:
            validation = (data["validation_inputs"], data["validation_targets"])
        committer = Committer(
            self.store, run, self.owner, self.settings, self.changes, self.flags, trainer, run.train_seconds
        )
        with committer:
            result = trainer.fit(
                data["inputs"],
                data["targets"],
                epochs=max(trainer.config.epochs - trainer.epoch, 0),
                validation_data=validation,
                callback=committer.epoch_ended,
                should_stop=self.flags.now,
            )
        outcome = self._outcome(run, trainer, result, committer.leftover())
        return replace(outcome, train_seconds=time.perf_counter() - started)

    def _outcome(
        self, run: RunRecord, trainer: Trainer, result: FitResult, epochs: list[dict[str, Any]]
    ) -> Outcome:
        status = FINISHED[result.stop_reason]
        common: dict[str, Any] = {
            "status": status,
            "stop_reason": "cancelled" if status == "cancelled" else result.stop_reason,
            "best_epoch": trainer.best.epoch,
            "best_loss": trainer.best.loss,
            "epochs": tuple(epochs),
        }
        if status == "interrupted":
            return Outcome(**{**common, "stop_reason": "shutdown"}, checkpoint=checkpoint_of(trainer))
        if trainer.epoch == 0:  # nothing learnt: no new version
            return Outcome(**common)
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
        return Outcome("failed", failure_kind(exc), error=f"{type(exc).__name__}: {exc}")

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
                outcome = replace(
                    outcome,
                    status="failed",
                    stop_reason="version_conflict",
                    error=str(exc),
                    weights=None,
                    optimizer=None,
                    optimizer_meta=None,
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
        self.changes.bump(self.run_id)
        log.info(
            "run finished",
            extra={
                "run": self.run_id,
                "status": done.status,
                "reason": done.stop_reason,
                "version": done.version,
            },
        )
