"""Runs as durable jobs: every state change is a guarded update that names the state it expects.

::

    queued ──claim──▶ running ──finish──▶ completed | cancelled | failed | interrupted
      ▲                  │ lease expired (reap)                               │
      └──────resume──────┴───────────────────────▶ interrupted ◀──────────────┘

* One queued or running run per model: a partial unique index, not a lock in some process.
* :meth:`RunStore.claim_next` takes the oldest queued run (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; SQLite serialises writers) and gives the claimer a lease: ``owner`` and
  ``heartbeat_at``, renewed by every :meth:`RunStore.commit` and :meth:`RunStore.heartbeat`.
  Every write a running job makes names its owner; one that matches nothing raises
  :class:`LeaseLost`, and the job stops.
* :meth:`RunStore.reap` marks interrupted the running runs whose lease expired on the database's
  clock; a live peer's runs are never touched.
* Publishing is compare-and-set on the model's version: a run whose base version is no longer
  current raises :class:`VersionConflict` and publishes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    Float,
    Integer,
    bindparam,
    case,
    column,
    delete,
    exc,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from gradwire.v1.vocabulary import ACTIVE, RunStatus, StopReason

from . import blobs
from .database import Database, as_utc, maybe_utc, seconds_ago, utcnow
from .datasets import DatasetMeta, add_datasets, dataset_record, load_dataset
from .errors import LeaseLost, ModelBusy, NotFound, QueueFull, QuotaExceeded, VersionConflict, WrongState
from .lookup import ANY_TENANT, TenantScope, one
from .models import active_run_id, add_version, model_record, model_row, read_version
from .records import (
    Checkpoint,
    DatasetRecord,
    EpochEntry,
    ModelRecord,
    NewEpoch,
    Outcome,
    RunRecord,
    VersionState,
    json_safe,
)
from .requests import known, once, recalled, remember, settled
from .schema import (
    CheckpointRow,
    DatasetRow,
    EpochRow,
    ModelRow,
    RunDatasetRow,
    RunRow,
    WeightVersionRow,
    json_value,
    now,
)
from .tenants import charge

QUEUE_LOCK = 0x67726477  # "grdw": serialises the queue-length check across PostgreSQL sessions

_LOAD = (
    select(
        RunRow.__table__,
        ModelRow.spec,
        CheckpointRow.epoch.label("checkpoint_epoch"),
        CheckpointRow.blob_id.label("checkpoint_blob"),
        CheckpointRow.checksum.label("checkpoint_checksum"),
        CheckpointRow.meta.label("checkpoint_meta"),
        EpochRow.train_loss.label("checkpoint_loss"),
        WeightVersionRow.blob_id.label("base_blob"),
        WeightVersionRow.checksum.label("base_checksum"),
        WeightVersionRow.optimizer_blob_id.label("base_optimizer_blob"),
        WeightVersionRow.optimizer_checksum.label("base_optimizer_checksum"),
        WeightVersionRow.optimizer_meta.label("base_optimizer_meta"),
    )
    .join(ModelRow, ModelRow.id == RunRow.model_id)
    .outerjoin(CheckpointRow, CheckpointRow.run_id == RunRow.id)
    .outerjoin(EpochRow, (EpochRow.run_id == RunRow.id) & (EpochRow.epoch == CheckpointRow.epoch))
    .outerjoin(
        WeightVersionRow,
        (WeightVersionRow.model_id == RunRow.model_id) & (WeightVersionRow.version == RunRow.base_version),
    )
    .where(RunRow.id == bindparam("run_id"))
)
"""A run as :meth:`RunStore.load` reads it: its row, its model's spec, its checkpoint with the
training loss of the epoch it ends, and its base version, in one statement."""

_LOAD_DATASETS = (
    select(RunDatasetRow.role, RunDatasetRow.dataset_id, DatasetRow.__table__)
    .outerjoin(
        DatasetRow,
        (DatasetRow.tenant_id == bindparam("tenant")) & (DatasetRow.id == RunDatasetRow.dataset_id),
    )
    .where(RunDatasetRow.run_id == bindparam("run_id"))
)
"""A run's datasets by role, each with its stored row where the run's tenant has it."""

_INSERT_EPOCHS = insert(EpochRow)
"""A run's epochs on SQLite, in this process: an executemany, a row each."""
_EPOCH_ARRAY = (
    func.json_array_elements(bindparam("epochs", type_=postgresql.JSON))
    .table_valued(column("value", postgresql.JSON))
    .alias("sent")
)
_INSERT_EPOCH_ARRAY = insert(EpochRow).from_select(
    ["run_id", "epoch", "train_loss", "val_loss", "record", "created_at"],
    select(
        bindparam("run_id", type_=EpochRow.run_id.type),
        _EPOCH_ARRAY.c.value["epoch"].astext.cast(Integer),
        _EPOCH_ARRAY.c.value["train_loss"].astext.cast(Float),
        _EPOCH_ARRAY.c.value["val_loss"].astext.cast(Float),
        _EPOCH_ARRAY.c.value["record"],
        bindparam("at", type_=EpochRow.created_at.type),
    ).select_from(_EPOCH_ARRAY),
)
"""A run's epochs on PostgreSQL: one statement over a JSON array of them, whatever their number.
As an executemany (which psycopg pipelines) the server runs an INSERT for each row, and as a
multi-row INSERT SQLAlchemy builds the statement row by row: both were slower (figures in
docs/scaling.md). The record's JSON is stored as it was sent (PostgreSQL's JSON refuses a NUL
character in a string, which the engine's records never hold); a loss is read back from its JSON
text by ``float8``, exactly. All the epochs of a commit are one statement under the statement
timeout: 100,000 take about 2 s here."""
_INSERT_RUN = insert(RunRow).returning(RunRow.__table__)
_INSERT_ROLES = insert(RunDatasetRow).returning(RunDatasetRow.role)
"""A run's datasets by role, in one statement (see :data:`.blobs._INSERT_CHUNKS`)."""

_START_MODEL = (
    select(
        ModelRow.__table__,
        *(
            column.label(name)
            for column, name in zip(
                recalled(bindparam("tenant"), bindparam("request_id")),
                ("request_kind", "request_resource"),
                strict=True,
            )
        ),
    )
    .where(ModelRow.id == bindparam("model_id"), ModelRow.tenant_id == bindparam("tenant"))
    .with_for_update(of=ModelRow)
)
"""The tenant's model a run starts on, locked, and what the request id made before if it did."""

_DATASETS = (
    select(DatasetRow.__table__)
    .where(DatasetRow.tenant_id == bindparam("tenant"), DatasetRow.id.in_(bindparam("ids", expanding=True)))
    .with_for_update(read=True)
)
"""The tenant's datasets of some ids, locked against a delete."""

_QUEUED = select(func.count()).select_from(RunRow).where(RunRow.status == RunStatus.QUEUED)

_FETCH = (
    select(RunRow.__table__, RunDatasetRow.role, RunDatasetRow.dataset_id, utcnow().label("clock"))
    .outerjoin(RunDatasetRow, RunDatasetRow.run_id == RunRow.id)
    .where(RunRow.id == bindparam("run_id"))
)
"""A run, a row per dataset (its columns repeated), and the database's clock."""
_FETCH_TENANTS = _FETCH.where(RunRow.tenant_id == bindparam("tenant"))
""":data:`_FETCH`, of the tenant's runs only."""

_EPOCHS_AFTER = (
    select(EpochRow.epoch, EpochRow.record)
    .where(EpochRow.run_id == bindparam("run_id"), EpochRow.epoch > bindparam("after"))
    .order_by(EpochRow.epoch)
    .limit(bindparam("limit"))
)

_OLDEST_QUEUED = (
    select(RunRow.id)
    .where(RunRow.status == RunStatus.QUEUED)
    .order_by(RunRow.created_at, RunRow.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_ANY_QUEUED = select(RunRow.id).where(RunRow.status == RunStatus.QUEUED).limit(1)
"""Whether any run waits (over the index on status): a claim's cheap first question."""
_CLAIM = (
    update(RunRow)
    .where(RunRow.id == _OLDEST_QUEUED, RunRow.status == RunStatus.QUEUED)
    .values(
        status=RunStatus.RUNNING,
        owner=bindparam("lease"),
        heartbeat_at=utcnow(),
        started_at=func.coalesce(RunRow.started_at, utcnow()),
        attempts=RunRow.attempts + 1,
    )
    .returning(RunRow.id, RunRow.attempts)
)
"""The oldest queued run, now running under the lease given (see :meth:`RunStore.claim_next`)."""

_HELD = (
    select(
        RunRow.__table__,
        RunDatasetRow.role,
        RunDatasetRow.dataset_id,
        CheckpointRow.blob_id.label("checkpoint_blob"),
    )
    .outerjoin(RunDatasetRow, RunDatasetRow.run_id == RunRow.id)
    .outerjoin(CheckpointRow, CheckpointRow.run_id == RunRow.id)
    .where(RunRow.id == bindparam("run_id"))
    .with_for_update(of=RunRow)
)
"""A run about to end, locked: a row per dataset, its columns repeated, and its checkpoint's blob."""

_FINISH = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(
        status=bindparam("new_status"),
        stop_reason=bindparam("new_stop_reason"),
        error=bindparam("new_error"),
        version=bindparam("new_version"),
        best_epoch=bindparam("new_best_epoch"),
        best_loss=bindparam("new_best_loss"),
        receipt=bindparam("new_receipt"),
        epochs_done=bindparam("new_epochs_done"),
        load_seconds=bindparam("new_load_seconds"),
        train_seconds=bindparam("new_train_seconds"),
        finished_at=bindparam("new_finished_at"),
        owner=None,
        heartbeat_at=None,
    )
    .returning(RunRow.__table__)
)
"""A run's end: its outcome written, its lease ended; the row as it now is."""

_MOVE_VERSION = (
    update(ModelRow)
    .where(ModelRow.id == bindparam("model_id"), ModelRow.current_version == bindparam("base"))
    .values(current_version=bindparam("next"), updated_at=bindparam("at"))
)
"""Publishing's compare-and-set: the model moves to the next version only from the base one."""


@dataclass(frozen=True)
class InlineData:
    """An array a request brought, as it would be stored: what it is, and its bytes."""

    meta: DatasetMeta
    data: bytes | memoryview


@dataclass(frozen=True)
class Claim:
    """A run taken by :meth:`RunStore.claim_next`: its id, the lease it is held under, and which
    attempt at it this is."""

    id: str
    owner: str
    attempts: int


@dataclass(frozen=True)
class RunStart:
    """A run StartRun asks for: the model, its options (the engine's JSON), the stored datasets
    it names and the data it brings, each by role."""

    model_id: str
    options: dict[str, Any]
    stored: Mapping[str, str]
    inline: Mapping[str, InlineData]


StartCheck = Callable[[ModelRecord, Mapping[str, DatasetRecord]], None]
"""Raises if a run cannot start on the model and the named datasets (by role) it is shown."""


@dataclass(frozen=True)
class RunLoad:
    """What a job reads before it trains (:meth:`RunStore.load`): the run, its model's spec, its
    checkpoint and the training loss of the epoch that ends it (a resume), or else the base
    version it starts from, and its data by role (a dataset in two roles is one array)."""

    run: RunRecord
    spec: dict[str, Any]
    checkpoint: Checkpoint | None
    last_loss: float | None
    base: VersionState | None
    data: dict[str, np.ndarray]


@dataclass(frozen=True)
class NewRun:
    """What a run is asked to do: the model, its options (the engine's JSON), its datasets by role."""

    model_id: str
    options: dict[str, Any]
    datasets: Mapping[str, str]
    rows: int


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ creating and moving

    def create(self, tenant: str, new: NewRun, max_queued: int, request_id: str = "") -> RunRecord:
        """A queued run of the tenant's model ``new.model_id`` on the tenant's datasets; ModelBusy
        if the model has one queued or running, QueueFull if ``max_queued`` runs wait already,
        QuotaExceeded if the tenant has as many runs queued or running as it may."""

        def create(s: Session) -> tuple[str, RunRecord]:
            model = model_row(s, new.model_id, tenant, for_update=True)
            found = _datasets(s, tenant, new.datasets.values())
            for role, dataset_id in new.datasets.items():
                if dataset_id not in found:
                    raise NotFound("dataset", dataset_id, role)
            self._check_queue(s, max_queued)
            charge(s, tenant, {"max_active_runs": 1})
            return _queue(s, tenant, model, new)

        try:
            return once(self.db, tenant, request_id, "run", create, lambda s, key: _fetch(s, key, tenant))
        except exc.IntegrityError:
            raise self._busy(new.model_id) from None

    def start(
        self, tenant: str, start: RunStart, check: StartCheck, max_queued: int, request_id: str = ""
    ) -> RunRecord:
        """StartRun's unit of work, in one transaction: the tenant's model and the datasets the
        run names are read (locked against a change, or a delete), ``check`` is shown them and
        raises if the run does not fit them; the data the request brought is stored (unless the
        tenant has that content already), and the run queued, within the queue's bound and the
        tenant's quotas (the new data's bytes and one more active run). Whatever refuses it,
        nothing is stored. ModelBusy if the model has a run queued or running. A request id
        used before returns that run, unchecked."""

        def create(s: Session) -> RunRecord:
            asked = {"model_id": start.model_id, "tenant": tenant, "request_id": request_id}
            model = s.connection().execute(_START_MODEL, asked).first()
            if model is None:
                raise NotFound("model", start.model_id, "model_id")
            if request_id and (made := known(model.request_kind, model.request_resource, request_id, "run")):
                return _fetch(s, made, tenant)
            datasets = self._start_datasets(s, tenant, start, check, model)
            self._check_queue(s, max_queued)
            fresh = {item.meta.id: item for item in start.inline.values() if item.meta.id not in datasets}
            charge(
                s,
                tenant,
                {"max_active_runs": 1, "max_dataset_bytes": sum(i.meta.nbytes for i in fresh.values())},
            )
            brought = [(item.meta, item.data) for item in fresh.values()]
            datasets |= add_datasets(s, tenant, brought, temporary=True)
            roles = {**start.stored, **{role: item.meta.id for role, item in start.inline.items()}}
            rows = datasets[roles["inputs"]].rows
            run_id, run = _queue(s, tenant, model, NewRun(start.model_id, start.options, roles, rows))
            remember(s, tenant, request_id, "run", run_id)
            return run

        try:
            return settled(self.db, tenant, request_id, "run", create, lambda s, key: _fetch(s, key, tenant))
        except exc.IntegrityError:
            raise self._busy(start.model_id) from None

    @staticmethod
    def _start_datasets(
        s: Session, tenant: str, start: RunStart, check: StartCheck, model: Any
    ) -> dict[str, DatasetRecord]:
        """The tenant's datasets a start names or brings, by id (one statement, the named ones
        locked against a delete), once ``check`` passed the model and the named ones."""
        ids = [*start.stored.values(), *(item.meta.id for item in start.inline.values())]
        found = _datasets(s, tenant, ids)
        for role, dataset_id in start.stored.items():
            if dataset_id not in found:
                raise NotFound("dataset", dataset_id, f"{role}.dataset_id")
        check(model_record(model), {role: found[dataset_id] for role, dataset_id in start.stored.items()})
        return found

    def claim_next(self, owner: str, waiting: bool = False) -> Claim | None:
        """The oldest queued run, now running under a lease of ``owner``'s; None if none waits
        (or another claimer took it meanwhile: the caller asks again). One read, then, if a run
        waits, one statement, a transaction by itself; that one alone where the caller knows one
        waits (``waiting``: it queued one).

        The lease is the claim's ``owner``: the claimer's name and a token of this claim, so that
        a job of an earlier claim of the same run, in the same process, can never pass for it."""
        if not waiting and self.db.scalar(_ANY_QUEUED) is None:
            return None  # nothing waits: no write transaction (a server at rest asks often)
        lease = f"{owner}/{blobs.new_id()[:12]}"
        claimed = self.db.write_one(_CLAIM, lease=lease)
        return None if claimed is None else Claim(claimed.id, lease, claimed.attempts)

    def heartbeat(self, run_id: str, owner: str) -> bool:
        """Renew the lease; returns whether a cancel was asked for. LeaseLost if it is not ours."""
        with self.db.write() as s:
            return self._renew(s, run_id, owner)[0]

    def commit(
        self,
        run_id: str,
        owner: str,
        epochs: Iterable[NewEpoch],
        checkpoint: Checkpoint | None,
        train_seconds: float = 0.0,
    ) -> bool:
        """Append epochs and replace the checkpoint, renewing the lease, in one transaction;
        returns whether a cancel was asked for. LeaseLost (and nothing written) if not ours.
        ``train_seconds`` is the run's training time, all attempts, up to its last epoch here: the
        run's clock, kept if this attempt dies before it finishes."""
        with self.db.write() as s:
            cancel, done = self._renew(s, run_id, owner)
            last = _add_epochs(s, run_id, epochs, after=done)
            if last > done:
                s.execute(
                    update(RunRow)
                    .where(RunRow.id == run_id)
                    .values(epochs_done=last, train_seconds=_at_least(RunRow.train_seconds, train_seconds))
                )
            if checkpoint is not None:
                _save_checkpoint(s, run_id, checkpoint)
            return cancel

    def finish(self, run_id: str, owner: str, outcome: Outcome) -> RunRecord:
        """End a running run as ``outcome`` says, with its last epochs, in one transaction.

        With weights, the model's version moves from the run's base version to the next, or
        VersionConflict is raised and nothing is written. An interrupted outcome keeps (or
        replaces, with ``outcome.checkpoint``) the run's checkpoint; any other drops it.
        """
        with self.db.write() as s:
            held = s.connection().execute(_HELD, {"run_id": run_id}).all()
            if not held or held[0].status != RunStatus.RUNNING or held[0].owner != owner:
                raise LeaseLost(f"run {run_id} is no longer held by {owner}")
            row = held[0]
            last = _add_epochs(s, run_id, outcome.epochs, after=row.epochs_done)
            if outcome.status == RunStatus.INTERRUPTED and row.cancel_requested:  # cancelled meanwhile
                outcome = replace(
                    outcome, status=RunStatus.CANCELLED, stop_reason=StopReason.CANCELLED, checkpoint=None
                )
            version = row.version if outcome.weights is None else self._publish(s, row, outcome)
            finished_at = row.finished_at
            if outcome.status == RunStatus.INTERRUPTED:
                if outcome.checkpoint is not None:
                    _save_checkpoint(s, run_id, outcome.checkpoint)
            else:
                if row.checkpoint_blob is not None:
                    _drop_checkpoint(s, run_id)
                finished_at = now()
            best_known = outcome.best_epoch is not None  # a failure knows nothing of it: keep what was
            receipt = json_safe(outcome.receipt) if outcome.receipt is not None else row.receipt
            values = {
                "run_id": run_id,
                "new_status": outcome.status,
                "new_stop_reason": outcome.stop_reason,
                "new_error": outcome.error,
                "new_version": version,
                "new_best_epoch": outcome.best_epoch if best_known else row.best_epoch,
                "new_best_loss": json_safe(outcome.best_loss) if best_known else row.best_loss,
                "new_receipt": json_value(receipt),
                "new_epochs_done": max(row.epochs_done, last),
                "new_load_seconds": row.load_seconds + outcome.load_seconds,
                "new_train_seconds": max(row.train_seconds, outcome.train_seconds),
                "new_finished_at": finished_at,
            }
            ended = s.connection().execute(_FINISH, values).one()
            return _build(ended, {r.role: r.dataset_id for r in held if r.role is not None}, None, ())

    def reap(self, lease_seconds: float, executing: Collection[str] = ()) -> list[str]:
        """End the leases older than ``lease_seconds`` of running runs but those in ``executing``
        (the caller knows they are alive: it executes them): such a run becomes interrupted, or
        cancelled if a cancel was asked for (one statement, so a cancel landing meanwhile cannot
        fall between two). Returns the runs reaped."""
        query = update(RunRow).where(
            RunRow.status == RunStatus.RUNNING, RunRow.heartbeat_at < seconds_ago(lease_seconds)
        )
        if executing:
            query = query.where(RunRow.id.not_in(list(executing)))
        return self._end_leases(query, StopReason.LEASE_EXPIRED)

    def release(self, run_id: str, owner: str, reason: str) -> bool:
        """End ``owner``'s lease of a running run now, as :meth:`reap` does when one expires: its
        executor knows the job is gone (its worker process died). False if it was not held so."""
        query = update(RunRow).where(
            RunRow.id == run_id, RunRow.owner == owner, RunRow.status == RunStatus.RUNNING
        )
        return bool(self._end_leases(query, reason))

    def _end_leases(self, query: Any, reason: str) -> list[str]:
        """``query``'s running runs become interrupted (``reason``), or cancelled where a cancel
        was asked for; their leases end. Returns the runs it ended."""
        cancelled = RunRow.cancel_requested
        with self.db.write() as s:
            ended = s.execute(
                query.values(
                    status=case((cancelled, RunStatus.CANCELLED.value), else_=RunStatus.INTERRUPTED.value),
                    stop_reason=case((cancelled, StopReason.CANCELLED.value), else_=reason),
                    finished_at=case((cancelled, utcnow()), else_=None),
                    owner=None,
                    heartbeat_at=None,
                ).returning(RunRow.id, RunRow.status)
            ).all()
            for run_id, status in ended:
                if status == RunStatus.CANCELLED:
                    _drop_checkpoint(s, run_id)
            return [run_id for run_id, _ in ended]

    def requeue_interrupted(self, max_attempts: int, max_queued: int) -> list[str]:
        """Queue again the interrupted runs that a graceful stop interrupted, and those claimed
        fewer than ``max_attempts`` times (a run that crashes its servers does not do it forever).
        One whose model moved on to another version can never publish: it fails, saying so."""
        resumable = select(RunDatasetRow.run_id).where(RunDatasetRow.role == "inputs")
        with self.db.read() as s:
            candidates = list(
                s.scalars(
                    select(RunRow.id)
                    .where(
                        RunRow.status == RunStatus.INTERRUPTED,
                        (RunRow.stop_reason == StopReason.SHUTDOWN) | (RunRow.attempts < max_attempts),
                        RunRow.id.in_(resumable),  # runs from before 0002 kept no data
                    )
                    .order_by(RunRow.created_at)
                    .limit(100)
                )
            )
        queued = []
        for run_id in candidates:
            try:
                self._resume(ANY_TENANT, run_id, max_queued)
                queued.append(run_id)
            except VersionConflict as exc:
                self._fail_interrupted(run_id, StopReason.VERSION_CONFLICT, str(exc))
            except (ModelBusy, QueueFull, QuotaExceeded, WrongState):
                continue  # the model, the queue or the tenant's quota is busy, or it moved on: later
        return queued

    def _fail_interrupted(self, run_id: str, reason: str, error: str) -> None:
        with self.db.write() as s:
            row = _row(s, run_id, ANY_TENANT, for_update=True)
            if row.status == RunStatus.INTERRUPTED:
                _drop_checkpoint(s, run_id)
                row.status, row.stop_reason, row.error, row.finished_at = (
                    RunStatus.FAILED,
                    reason,
                    error,
                    now(),
                )

    def resume(self, tenant: str, run_id: str, max_queued: int) -> RunRecord:
        """Queue an interrupted run of the tenant's again, to continue from its checkpoint. A run
        queued or running already is returned as it is; a finished one cannot resume."""
        return self._resume(tenant, run_id, max_queued)

    def _resume(self, tenant: TenantScope, run_id: str, max_queued: int) -> RunRecord:
        """:meth:`resume`, for the tenant (:data:`.lookup.ANY_TENANT`: the service's own requeue)."""
        try:
            with self.db.write() as s:
                row = _row(s, run_id, tenant, for_update=True)
                if row.status in ACTIVE:
                    return _record(row, s)
                if row.status != RunStatus.INTERRUPTED:
                    raise WrongState(
                        f"run {run_id} is {row.status}; only an interrupted run resumes", "run_id"
                    )
                if row.cancel_requested:  # a cancel asked while it ran: it ends here
                    _cancelled(s, row)
                    s.flush()
                    return _record(row, s)
                if s.get(RunDatasetRow, (run_id, "inputs")) is None:
                    raise WrongState(
                        f"run {run_id} was made before runs kept their data; start a new run", "run_id"
                    )
                current = model_row(s, row.model_id, ANY_TENANT, for_update=True).current_version
                if current != row.base_version:
                    raise VersionConflict(
                        f"run {run_id} started from version {row.base_version} of model {row.model_id}, "
                        f"which is now at version {current}; start a new run instead"
                    )
                self._check_queue(s, max_queued)
                charge(s, row.tenant_id, {"max_active_runs": 1})
                row.status, row.stop_reason, row.cancel_requested = RunStatus.QUEUED, "", False
                s.flush()
                return _record(row, s)
        except exc.IntegrityError:
            with self.db.read() as s:
                model_id = _row(s, run_id, tenant).model_id
            raise self._busy(model_id) from None

    def cancel(self, tenant: str, run_id: str) -> RunRecord:
        """Queued or interrupted: cancelled now. Running: asked to stop (its executor sees the
        flag at its next heartbeat or commit). Finished: unchanged."""
        with self.db.write() as s:
            row = _row(s, run_id, tenant, for_update=True)
            if row.status in (RunStatus.QUEUED, RunStatus.INTERRUPTED):
                _cancelled(s, row)
            elif row.status == RunStatus.RUNNING:
                row.cancel_requested = True
            s.flush()
            return _record(row, s)

    # ------------------------------------------------------------------ reading

    def get(self, tenant: str, run_id: str) -> RunRecord:
        """The tenant's run, in one statement (GetRun; a watcher's looks are :meth:`watched`)."""
        with self.db.single() as s:
            return _fetch(s, run_id, tenant)

    def read(self, run_id: str) -> RunRecord:
        """The run, whoever's it is: for the service's own work on it (executing it), never for
        an id a caller sent (:meth:`get` takes the caller's tenant)."""
        with self.db.single() as s:
            return _fetch(s, run_id, ANY_TENANT)

    def count_by_status(self) -> dict[str, int]:
        """How many runs each status has (a status with none is absent): one grouped count over
        the index on status, cheap enough to ask at every metrics scrape."""
        query = select(RunRow.status, func.count()).group_by(RunRow.status)
        with self.db.read() as s:
            return {status: int(count) for status, count in s.execute(query)}

    def page(
        self,
        tenant: str,
        limit: int,
        after: tuple[datetime, str] | None = None,
        model_id: str = "",
        statuses: Iterable[str] = (),
    ) -> list[RunRecord]:
        """Up to ``limit`` of the tenant's runs, oldest first, of one model and some statuses if given."""
        query = (
            select(RunRow)
            .where(RunRow.tenant_id == tenant)
            .order_by(RunRow.created_at, RunRow.id)
            .limit(limit)
        )
        if model_id:
            query = query.where(RunRow.model_id == model_id)
        if statuses := list(statuses):
            query = query.where(RunRow.status.in_(statuses))
        if after is not None:
            created, key = after
            query = query.where(
                (RunRow.created_at > created) | ((RunRow.created_at == created) & (RunRow.id > key))
            )
        with self.db.read() as s:
            return _records(s, list(s.scalars(query)))

    def watched(self, tenant: str, run_id: str, after: int, limit: int) -> tuple[RunRecord, list[EpochEntry]]:
        """What a watcher reads each time it looks: the tenant's run, then its committed epochs
        numbered above ``after``, in order, at most ``limit``. Two statements on one connection,
        outside a transaction; the run is read first, so a run read as ended has every epoch
        it committed among those read after it."""
        with self.db.single() as s:
            run = _fetch(s, run_id, tenant)
            found = s.connection().execute(_EPOCHS_AFTER, {"run_id": run_id, "after": after, "limit": limit})
            return run, [EpochEntry(epoch, record) for epoch, record in found]

    def history(self, tenant: str, model_id: str) -> list[RunRecord]:
        """The tenant's model's runs, oldest first, each with its epochs (five statements, however
        many runs)."""
        with self.db.read() as s:
            model_row(s, model_id, tenant)
            runs = list(
                s.scalars(select(RunRow).where(RunRow.model_id == model_id).order_by(RunRow.created_at))
            )
            epochs: dict[str, list[EpochEntry]] = {run.id: [] for run in runs}
            query = (
                select(EpochRow.run_id, EpochRow.epoch, EpochRow.record)
                .join(RunRow, RunRow.id == EpochRow.run_id)
                .where(RunRow.model_id == model_id)
                .order_by(EpochRow.run_id, EpochRow.epoch)
            )
            for run_id, epoch, record in s.execute(query):
                if run_id in epochs:  # else a run started since the runs were read (PostgreSQL)
                    epochs[run_id].append(EpochEntry(epoch, record))
            return _records(s, runs, {run_id: tuple(entries) for run_id, entries in epochs.items()})

    def load(self, run_id: str) -> RunLoad:
        """Everything a job reads before it trains the run, whoever's it is, in one read
        (:meth:`~.database.Database.read`): the run, its model's spec, its checkpoint (with the
        training loss of the epoch it ends) or else its base version, and its datasets, each
        array once. Two statements, then one for each blob of one chunk."""
        with self.db.read() as s:
            connection = s.connection()
            found = connection.execute(_LOAD, {"run_id": run_id}).first()
            if found is None:
                raise NotFound("run", run_id, "run_id")
            roles = connection.execute(_LOAD_DATASETS, {"run_id": run_id, "tenant": found.tenant_id}).all()
            run = _build(found, {row.role: row.dataset_id for row in roles}, None, ())
            checkpoint, base = None, None
            if found.checkpoint_blob is not None:
                arrays = blobs.read_arrays(s, found.checkpoint_blob, found.checkpoint_checksum)
                checkpoint = Checkpoint(found.checkpoint_epoch, arrays, found.checkpoint_meta)
            elif found.base_blob is None:
                raise NotFound("version", run.base_version, "version")
            else:
                base = _base_version(s, found)
            stored = {row.dataset_id: row for row in roles if row.blob_id is not None}  # one per dataset
            arrays = {dataset_id: load_dataset(s, row) for dataset_id, row in stored.items()}
            missing = sorted(set(run.datasets.values()) - set(arrays))
            if missing:
                raise NotFound("dataset", missing[0], "dataset_id")
            data = {role: arrays[dataset_id] for role, dataset_id in run.datasets.items()}
            return RunLoad(run, found.spec, checkpoint, found.checkpoint_loss, base, data)

    def load_checkpoint(self, run_id: str) -> Checkpoint | None:
        with self.db.read() as s:
            return _checkpoint(s, run_id)

    # ------------------------------------------------------------------ helpers

    def _check_queue(self, s: Session, max_queued: int) -> None:
        if self.db.dialect == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": QUEUE_LOCK})
        queued = s.connection().execute(_QUEUED).scalar() or 0
        if queued >= max_queued:
            raise QueueFull(f"{queued} runs are queued, the most this service keeps waiting; try again later")

    def _busy(self, model_id: str) -> ModelBusy:
        with self.db.read() as s:
            active = active_run_id(s, model_id)
        return ModelBusy(f"model {model_id} has run {active} queued or running already")

    @staticmethod
    def _renew(s: Session, run_id: str, owner: str) -> tuple[bool, int]:
        """Renew the lease: whether a cancel was asked for, and the epochs committed so far."""
        renewed = s.execute(
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.owner == owner, RunRow.status == RunStatus.RUNNING)
            .values(heartbeat_at=utcnow())
            .returning(RunRow.cancel_requested, RunRow.epochs_done)
        ).all()
        if not renewed:
            raise LeaseLost(f"run {run_id} is no longer held by {owner}")
        cancel, done = renewed[0]
        return bool(cancel), int(done)

    @staticmethod
    def _publish(s: Session, run: Any, outcome: Outcome) -> int:
        """Compare-and-set the model's version from the run's base to the next; store the weights."""
        version = run.base_version + 1
        moved = s.connection().execute(
            _MOVE_VERSION, {"model_id": run.model_id, "base": run.base_version, "next": version, "at": now()}
        )
        if _count(moved) != 1:
            current = model_row(s, run.model_id, ANY_TENANT).current_version
            raise VersionConflict(
                f"run {run.id} started from version {run.base_version} of model {run.model_id}, "
                f"which another run moved to version {current}; this run's weights were not published"
            )
        assert outcome.weights is not None
        add_version(
            s, run.model_id, version, outcome.weights, run.id, outcome.optimizer, outcome.optimizer_meta
        )
        return version


def _datasets(s: Session, tenant: str, ids: Iterable[str]) -> dict[str, DatasetRecord]:
    """Those of the tenant's datasets ``ids`` names that exist, by id, in one statement; locked
    against a delete until the transaction ends (``FOR SHARE`` on PostgreSQL)."""
    found = s.connection().execute(_DATASETS, {"tenant": tenant, "ids": sorted(set(ids))})
    return {row.id: dataset_record(row) for row in found}


def _queue(s: Session, tenant: str, model: Any, new: NewRun) -> tuple[str, RunRecord]:
    """Insert a queued run of ``model`` from its current version (the partial unique index
    refuses a second active run of it); its id and record, built from what was inserted."""
    row = {
        "id": blobs.new_id(),
        "tenant_id": tenant,
        "model_id": new.model_id,
        "status": RunStatus.QUEUED,
        "stop_reason": "",
        "options": json_safe(new.options),
        "rows": new.rows,
        "base_version": model.current_version,
        "version": None,
        "best_epoch": 0,
        "best_loss": None,
        "epochs_done": 0,
        "error": "",
        "receipt": json_value(None),
        "owner": None,
        "heartbeat_at": None,
        "cancel_requested": False,
        "attempts": 0,
        "load_seconds": 0.0,
        "train_seconds": 0.0,
        "created_at": now(),
        "started_at": None,
        "finished_at": None,
    }
    inserted = s.connection().execute(_INSERT_RUN, row).one()
    roles = [{"run_id": row["id"], "role": role, "dataset_id": d} for role, d in new.datasets.items()]
    if roles:
        s.connection().execute(_INSERT_ROLES, roles)
    return row["id"], _build(inserted, dict(new.datasets), None, ())


def _base_version(s: Session, found: Any) -> VersionState:
    """The base version :data:`_LOAD` found."""
    return read_version(
        s,
        found.base_version,
        (found.base_blob, found.base_checksum),
        (found.base_optimizer_blob, found.base_optimizer_checksum),
        found.base_optimizer_meta,
    )


def _checkpoint(s: Session, run_id: str) -> Checkpoint | None:
    row = s.get(CheckpointRow, run_id)
    if row is None:
        return None
    return Checkpoint(row.epoch, blobs.read_arrays(s, row.blob_id, row.checksum), row.meta)


def _at_least(column: Any, value: float) -> Any:
    """``column``, or ``value`` where that is larger: a clock that never goes back."""
    return case((column < value, value), else_=column)


def _count(result: Any) -> int:
    return int(result.rowcount or 0)


def _row(s: Session, run_id: str, tenant: TenantScope, *, for_update: bool = False) -> RunRow:
    """The run, if it is ``tenant``'s (or any, with :data:`.lookup.ANY_TENANT`)."""
    return one(s, RunRow, run_id, "run", "run_id", "update" if for_update else "", tenant)


def _fetch(s: Session, run_id: str, tenant: TenantScope) -> RunRecord:
    """The run (if it is ``tenant``'s), its datasets and the database's clock, in one statement:
    a row per dataset, the run's columns repeated."""
    if tenant is ANY_TENANT:
        rows = s.connection().execute(_FETCH, {"run_id": run_id}).all()
    else:
        rows = s.connection().execute(_FETCH_TENANTS, {"run_id": run_id, "tenant": tenant}).all()
    if not rows:
        raise NotFound("run", run_id, "run_id")
    datasets = {row.role: row.dataset_id for row in rows if row.role is not None}
    return _build(rows[0], datasets, rows[0].clock, ())


def _record(row: RunRow, s: Session) -> RunRecord:
    return _records(s, [row])[0]


def _records(
    s: Session, rows: list[RunRow], epochs: Mapping[str, tuple[EpochEntry, ...]] | None = None
) -> list[RunRecord]:
    """The records of ``rows`` (with ``epochs``, by run id, if given), in two statements at most
    however many: their datasets in one, and the database's clock once if any is running."""
    datasets: dict[str, dict[str, str]] = {row.id: {} for row in rows}
    if rows:
        query = select(RunDatasetRow.run_id, RunDatasetRow.role, RunDatasetRow.dataset_id).where(
            RunDatasetRow.run_id.in_(list(datasets))
        )
        for run_id, role, dataset_id in s.execute(query):
            datasets[run_id][role] = dataset_id
    clock = s.scalar(select(utcnow())) if any(_leased(row) for row in rows) else None
    given = epochs or {}
    return [_build(row, datasets[row.id], clock, given.get(row.id, ())) for row in rows]


def _build(
    row: Any, datasets: dict[str, str], clock: datetime | None, epochs: tuple[EpochEntry, ...]
) -> RunRecord:
    """The record of a run's columns (``row``: an ORM row, or a row of a statement that selects
    the table's columns by their names)."""
    return RunRecord(
        id=row.id,
        tenant=row.tenant_id,
        model_id=row.model_id,
        status=row.status,
        stop_reason=row.stop_reason,
        options=row.options,
        datasets=datasets,
        rows=row.rows,
        base_version=row.base_version,
        version=row.version,
        best_epoch=row.best_epoch,
        best_loss=row.best_loss,
        epochs_done=row.epochs_done,
        error=row.error,
        receipt=row.receipt,
        owner=row.owner,
        cancel_requested=row.cancel_requested,
        attempts=row.attempts,
        load_seconds=row.load_seconds,
        train_seconds=row.train_seconds,
        created_at=as_utc(row.created_at),
        started_at=maybe_utc(row.started_at),
        finished_at=maybe_utc(row.finished_at),
        heartbeat_at=maybe_utc(row.heartbeat_at),
        silent_seconds=_silent_seconds(row, clock),
        epochs=epochs,
    )


def _leased(row: RunRow) -> bool:
    return row.status == RunStatus.RUNNING and row.heartbeat_at is not None


def _silent_seconds(row: RunRow, clock: datetime | None) -> float:
    """Seconds since a running run's lease was renewed, both times the database's (``clock`` is
    its now): a server whose clock is off does not see a live run as stalled, nor a stalled one
    as live."""
    if not _leased(row) or clock is None or row.heartbeat_at is None:
        return 0.0
    return (as_utc(clock) - as_utc(row.heartbeat_at)).total_seconds()


def _add_epochs(s: Session, run_id: str, epochs: Iterable[NewEpoch], after: int) -> int:
    """Insert the epochs numbered above ``after`` (those at or below it are committed already: a
    retry of a commit whose answer was lost); the highest epoch number, or ``after``."""
    rows = [
        {
            "epoch": e.epoch,
            "train_loss": json_safe(e.train_loss),
            "val_loss": json_safe(e.val_loss),
            "record": json_safe(e.record),
        }
        for e in epochs
        if e.epoch > after
    ]
    if rows:
        at, connection = now(), s.connection()
        if connection.dialect.name == "postgresql":
            connection.execute(_INSERT_EPOCH_ARRAY, {"run_id": run_id, "epochs": rows, "at": at})
        else:
            connection.execute(_INSERT_EPOCHS, [row | {"run_id": run_id, "created_at": at} for row in rows])
    return max((r["epoch"] for r in rows), default=after)


def _save_checkpoint(s: Session, run_id: str, checkpoint: Checkpoint) -> None:
    blob_id, checksum = blobs.write_arrays(s, checkpoint.arrays)
    row = s.get(CheckpointRow, run_id)
    if row is None:
        s.add(
            CheckpointRow(
                run_id=run_id,
                epoch=checkpoint.epoch,
                blob_id=blob_id,
                checksum=checksum,
                meta=json_safe(checkpoint.meta),
            )
        )
        return
    blobs.drop(s, [row.blob_id])
    row.epoch, row.blob_id, row.checksum, row.meta = (
        checkpoint.epoch,
        blob_id,
        checksum,
        json_safe(checkpoint.meta),
    )


def _cancelled(s: Session, row: RunRow) -> None:
    """A run that is not executing ends cancelled, its checkpoint dropped."""
    _drop_checkpoint(s, row.id)
    row.status, row.stop_reason, row.finished_at = RunStatus.CANCELLED, StopReason.CANCELLED, now()


def _drop_checkpoint(s: Session, run_id: str) -> None:
    row = s.get(CheckpointRow, run_id)
    if row is not None:
        blobs.drop(s, [row.blob_id])
        s.execute(delete(CheckpointRow).where(CheckpointRow.run_id == run_id))
