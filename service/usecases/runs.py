"""Run use cases: start, watch, get, list, cancel, resume, and Train as start + watch.

Nothing here executes a run (:mod:`.executor` and :mod:`.jobs` do) or holds one: a started run
is a queued row, and the RPC that started it returns. Watching reads committed epochs from the
database after a cursor, woken early by this process's commits (:class:`.signals.Changes`) and
polling every ``poll_seconds`` for other processes'; every wait is bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from gradwire.engine import InvalidArgument, NetworkSpec, TrainConfig
from gradwire.engine.data import check_in_range
from gradwire.engine.memory import TrainingMemory, format_bytes, state_bytes, training_bytes
from gradwire.storage import (
    DATASET_ROLES,
    DatasetRecord,
    EpochEntry,
    InlineData,
    ModelRecord,
    RequestReused,
    RunRecord,
    RunStart,
    StorageError,
    Store,
    Unavailable,
)
from gradwire.v1.digest import raw
from gradwire.v1.vocabulary import FINISHED, RunStatus

from ..core.errors import LimitExceeded, RunFailed, ShuttingDown
from ..core.settings import Limits, MiB, Settings
from ..execution.signals import Changes
from .datasets import Datasets, Inline, check_request_id
from .paging import paged

log = logging.getLogger(__name__)

R = TypeVar("R")

WATCH_PAGE = 500
"""Committed epochs read per query while catching up."""
WATCH_ENDS = (*FINISHED, RunStatus.INTERRUPTED.value)
"""A watch ends when its run reaches one of these (an interrupted run waits for a resume)."""

STALLED_HEARTBEATS = 3
"""A running run whose lease was not renewed for this many heartbeats has likely lost its server
(one renewal may be late, under load or a database hiccup): its watchers are told."""

DataSource = str | np.ndarray
"""A dataset id, or an array sent inline."""


Epochs = tuple[EpochEntry, ...]
"""Committed epochs a watch sends together, in order."""


@dataclass(frozen=True)
class Stalled:
    """A watch's news that its run's lease is not being renewed (see :data:`STALLED_HEARTBEATS`)."""

    run: RunRecord


def check_memory(need: int, limits: Limits, field: str, what: str) -> None:
    """Refuse work estimated (by :mod:`gradwire.engine.memory`) to need more than the per-request
    budget, before any of it is done: a MemoryError halfway through helps nobody."""
    budget = limits.max_request_mb * MiB
    if need > budget:
        raise LimitExceeded(
            field,
            f"{what} needs about {format_bytes(need)}, over this server's per-request budget of "
            f"{format_bytes(budget)} (max_request_mb)",
        )


@dataclass(frozen=True)
class StartRequest:
    tenant: str  # whose run: the model and the datasets must be the tenant's
    model_id: str
    config: TrainConfig
    data: Mapping[str, DataSource]  # by role: inputs, targets, validation_inputs, validation_targets
    request_id: str = ""


class Runs:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        datasets: Datasets,
        changes: Changes,
        queued: Callable[[], None],
        cancel_here: Callable[[str], None],
    ) -> None:
        self.store, self.settings, self.datasets, self.changes = store, settings, datasets, changes
        self.queued, self.cancel_here = queued, cancel_here  # queued(): a run was queued here
        self.closing = threading.Event()

    def _claim_soon(self, run: RunRecord) -> None:
        """Have this server claim ``run`` now if it waits (a start or resume may return a run
        that is running already)."""
        if run.status == RunStatus.QUEUED:
            self.queued()

    def close(self) -> None:
        """End every watch now: the process is stopping (the runs themselves go on elsewhere)."""
        self.closing.set()
        self.changes.wake_all()

    # ------------------------------------------------------------------ starting

    def start(self, request: StartRequest) -> RunRecord:
        """Check everything, and queue the run with the data it brings, in one transaction (see
        :meth:`~gradwire.storage.runs.RunStore.start`): a start refused for any reason, a quota
        taken by a start racing it included, stores nothing."""
        check_request_id(request.request_id)
        self._check_options(request.config)
        if set(request.data) - set(DATASET_ROLES):
            raise InvalidArgument("data", f"unknown roles {sorted(set(request.data) - set(DATASET_ROLES))}")
        arrays = {role: source for role, source in request.data.items() if isinstance(source, np.ndarray)}
        for role, array in arrays.items():
            self.datasets.check_inline(array, f"{role}.tensor")
        inline = {role: Inline.of(array, f"inline {role}") for role, array in arrays.items()}  # hashed here
        start = RunStart(
            request.model_id,
            request.config.to_dict(),
            {role: source for role, source in request.data.items() if isinstance(source, str)},
            {role: InlineData(item.meta, raw(item.data)) for role, item in inline.items()},
        )
        check = partial(self._check_start, request, arrays)
        run = self.store.runs.start(
            request.tenant, start, check, self.settings.max_queued_runs, request.request_id
        )
        if (run.model_id, run.datasets) != (request.model_id, _ids(start)):
            raise RequestReused(
                f"request_id {request.request_id!r} was first used to start another run ({run.id})"
            )
        self._claim_soon(run)
        return run

    def _check_start(
        self,
        request: StartRequest,
        arrays: Mapping[str, np.ndarray],
        model: ModelRecord,
        stored: Mapping[str, DatasetRecord],
    ) -> None:
        """Whether the run fits its model and its data (shapes, values, memory): asked by the
        store inside the start's transaction, once it has read them."""
        spec = NetworkSpec.from_dict(model.spec)
        found: dict[str, DatasetRecord | np.ndarray] = {**stored, **arrays}
        _check_shapes({role: _shape(source) for role, source in found.items()}, spec, request.config)
        for role, array in arrays.items():  # stored datasets are checked when the run loads them
            check_in_range(array, spec.dtype, f"{role}.data")
        self._check_memory(spec, request.config, found)

    def _check_memory(
        self, spec: NetworkSpec, config: TrainConfig, found: Mapping[str, DatasetRecord | np.ndarray]
    ) -> None:
        """The run's training, with a checkpoint in flight beside it, within the budget; when
        refused, the field named is the batch size if one minibatch is what weighs most."""
        estimate = _training_memory(spec, config, found)
        field = "options.batch_size" if estimate.minibatch > estimate.data else "inputs"
        rows = _shape(found["inputs"])[0]
        what = f"training on {rows} rows in batches of {config.batch_size}"
        check_memory(
            estimate.total + state_bytes(spec, config.optimizer.name), self.settings.limits, field, what
        )

    def _check_options(self, config: TrainConfig) -> None:
        limits = self.settings.limits
        if config.epochs > limits.max_epochs:
            raise LimitExceeded("options.epochs", f"at most {limits.max_epochs}")
        if config.batch_size > limits.max_batch_size:
            raise LimitExceeded("options.batch_size", f"at most {limits.max_batch_size}")

    # ------------------------------------------------------------------ reading

    def get(self, tenant: str, run_id: str) -> RunRecord:
        return self.store.runs.get(tenant, run_id)

    def page(
        self, tenant: str, model_id: str, statuses: list[str], page_size: int, page_token: str
    ) -> tuple[list[RunRecord], str]:
        unknown = sorted(set(statuses) - set(RunStatus))
        if unknown:
            raise InvalidArgument("statuses", f"unknown statuses {unknown}", tuple(RunStatus))
        return paged(
            partial(self.store.runs.page, tenant, model_id=model_id, statuses=statuses), page_size, page_token
        )

    def watch(
        self, tenant: str, run_id: str, after_epoch: int, gone: Callable[[], bool], per_event: int = 1
    ) -> Iterator[Epochs | RunRecord | Stalled]:
        """The committed epochs above ``after_epoch``, then new ones as they commit, then the run
        as it ends. Epochs come as they were read, at most ``per_event`` together (0: one).
        Returns early, without the run, once ``gone()`` holds (the caller left).
        Once, whenever the run's lease stops being renewed, the run itself (:class:`Stalled`)."""
        if after_epoch < 0:
            raise InvalidArgument("after_epoch", "must be ≥ 0")
        if per_event < 0:
            raise InvalidArgument("max_epochs_per_event", "must be ≥ 0")
        size = min(max(per_event, 1), WATCH_PAGE)
        log.info("watch started", extra={"run": run_id, "after_epoch": after_epoch})
        cursor, told = after_epoch, None  # told: the lease renewal a Stalled was sent for

        def gone_or_closing() -> bool:
            return gone() or self.closing.is_set()

        while not gone():
            if self.closing.is_set():
                raise ShuttingDown(f"this server is stopping; watch run {run_id} again after epoch {cursor}")
            seen = self.changes.seen()
            run, epochs = self._retrying(  # the status read first: see below
                partial(self.store.runs.watched, tenant, run_id, cursor, WATCH_PAGE), gone
            )
            for first in range(0, len(epochs), size):
                together = tuple(epochs[first : first + size])
                yield together
                cursor = together[-1].epoch
            if len(epochs) == WATCH_PAGE:
                continue
            if run.status in WATCH_ENDS:  # it ended before the epochs were read: none is missed
                yield run
                return
            stalled = run.silent_seconds > STALLED_HEARTBEATS * self.settings.heartbeat_seconds
            if stalled and told != run.heartbeat_at:
                told = run.heartbeat_at
                yield Stalled(run)
            self.changes.wait(run_id, seen, self.settings.poll_seconds, gone_or_closing)

    def _retrying(self, read: Callable[[], R], gone: Callable[[], bool]) -> R:
        """``read()``, retried while the database is unavailable, for at most ``db_retry_seconds``."""
        deadline = time.monotonic() + self.settings.db_retry_seconds
        while True:
            try:
                return read()
            except Unavailable:
                if time.monotonic() + self.settings.poll_seconds > deadline or gone():
                    raise
                time.sleep(self.settings.poll_seconds)  # a bounded back-off, not synchronisation

    # ------------------------------------------------------------------ changing

    def cancel(self, tenant: str, run_id: str) -> RunRecord:
        run = self.store.runs.cancel(tenant, run_id)
        if run.status == RunStatus.RUNNING:
            self.cancel_here(run_id)  # at once if it executes in this process; else at its next heartbeat
            self.changes.bump(run_id)
        else:
            self.changes.finished(run_id)  # it ended (now or before): its watchers here wake
        return run

    def resume(self, tenant: str, run_id: str) -> RunRecord:
        run = self.store.runs.resume(tenant, run_id, self.settings.max_queued_runs)
        self._claim_soon(run)
        return run

    # ------------------------------------------------------------------ Train: start + watch

    def follow(self, tenant: str, run_id: str, gone: Callable[[], bool]) -> Iterator[EpochEntry | RunRecord]:
        """Watch a run to its end on behalf of a caller who owns it (Train): if the caller leaves
        first, the run is cancelled; a run that ends failed or interrupted raises :class:`RunFailed`."""
        ended = False
        try:
            for event in self.watch(tenant, run_id, 0, gone):  # ShuttingDown leaves the run be: it resumes
                if isinstance(event, Stalled):
                    continue  # Train's stream has no word for it: the caller waits, as the run does
                if isinstance(event, tuple):
                    yield from event
                    continue
                if isinstance(event, RunRecord):
                    ended = True
                    if event.status == RunStatus.FAILED:
                        raise RunFailed(event.stop_reason, event.error or f"run {event.id} failed")
                    if event.status == RunStatus.INTERRUPTED:
                        why = f"run {event.id} was interrupted ({event.stop_reason}); resume it to continue"
                        raise RunFailed(RunStatus.INTERRUPTED, why)
                yield event
        except ShuttingDown:
            ended = True
            raise
        finally:
            if not ended:
                self._cancel_quietly(tenant, run_id)

    def _cancel_quietly(self, tenant: str, run_id: str) -> None:
        try:
            self.cancel(tenant, run_id)
        except StorageError:
            log.warning(
                "could not cancel the run of a Train call that ended", extra={"run": run_id}, exc_info=True
            )


def _ids(start: RunStart) -> dict[str, str]:
    """The dataset id of each role of a start: named, or the content address of the data brought."""
    return {**start.stored, **{role: item.meta.id for role, item in start.inline.items()}}


def _shape(found: DatasetRecord | np.ndarray) -> tuple[int, int]:
    """``(rows, columns)`` of a stored dataset or of an inline (2-D) array."""
    if isinstance(found, np.ndarray):
        rows, columns = found.shape
        return rows, columns
    return found.rows, found.columns


def _training_memory(
    spec: NetworkSpec, config: TrainConfig, found: Mapping[str, DatasetRecord | np.ndarray]
) -> TrainingMemory:
    """What the run's job will hold: its datasets as loaded (one copy of a dataset used in two
    roles), and what training on them takes."""
    stored = {source.id: source.nbytes for source in found.values() if isinstance(source, DatasetRecord)}
    inline = [source.nbytes for source in found.values() if isinstance(source, np.ndarray)]
    data = sum(stored.values()) + sum(inline)
    validation = _shape(found["validation_inputs"])[0] if "validation_inputs" in found else 0
    return training_bytes(spec, config, _shape(found["inputs"])[0], validation, data)


def _check_shapes(shapes: Mapping[str, tuple[int, int]], spec: NetworkSpec, config: TrainConfig) -> None:
    """Every dataset fits the model and its partner: widths, row counts, validation in pairs."""
    for role in ("inputs", "targets"):
        if role not in shapes:
            raise InvalidArgument(role, "is required")
    if ("validation_inputs" in shapes) != ("validation_targets" in shapes):
        raise InvalidArgument("validation_targets", "validation inputs and targets come together")
    if "validation_inputs" in shapes and config.validation_fraction:
        raise InvalidArgument("options.validation_fraction", "give a validation set or a fraction, not both")
    for prefix in ("", "validation_"):
        if f"{prefix}inputs" not in shapes:
            continue
        (rows, inputs), (target_rows, targets) = shapes[f"{prefix}inputs"], shapes[f"{prefix}targets"]
        if inputs != spec.input_dim:
            raise InvalidArgument(
                f"{prefix}inputs.shape", f"has {inputs} columns, the model takes {spec.input_dim}"
            )
        if targets != spec.output_dim:
            raise InvalidArgument(
                f"{prefix}targets.shape", f"has {targets} columns, the model gives {spec.output_dim}"
            )
        if target_rows != rows:
            raise InvalidArgument(f"{prefix}targets.shape", f"has {target_rows} rows, the inputs have {rows}")
    need = spec.min_training_rows  # batch norm: the engine never forms a one-row training batch
    why = "a network with batch normalisation needs"
    if config.batch_size < need:
        raise InvalidArgument("options.batch_size", f"{why} batches of {need} rows or more")
    if shapes["inputs"][0] < need:
        raise InvalidArgument("inputs", f"{why} {need} training rows or more")
