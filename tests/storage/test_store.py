"""The store on a real database: SQLite always, PostgreSQL when a test database is given."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, select, text, update

from gradwire.storage import (
    CHUNK_BYTES,
    Checkpoint,
    CorruptBlob,
    DatasetMeta,
    LeaseLost,
    ModelBusy,
    NewEpoch,
    NewRun,
    NotFound,
    Outcome,
    QueueFull,
    SchemaOutOfDate,
    Store,
    Unavailable,
    VersionConflict,
    WrongState,
    blobs,
    open_store,
)
from gradwire.storage import DEFAULT_TENANT as T
from gradwire.storage.database import (
    PING_IDLE_SECONDS,
    RETURNED_AT,
    _config,
    head_revision,
    make_engine,
    seconds_ago,
)
from gradwire.storage.runs import InlineData, RunStart
from gradwire.storage.schema import Base, ChunkRow, EpochRow, ModelRow, RunRow

SPEC = {"input_dim": 2, "layers": [{"kind": "dense", "units": 1}], "loss": "squared_error"}


def weights(seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"0.W": rng.normal(size=(2, 1)).astype(dtype), "0.b": np.zeros(1, dtype)}


@pytest.fixture
def store(database_url: str) -> Store:
    return open_store(database_url)


def put_dataset(store: Store, data: bytes = b"\x00" * 16, rows: int = 2, name: str = "d") -> str:
    checksum = blobs.sha256(data)
    meta = DatasetMeta(
        f"ds-{checksum[:20]}-{rows}", checksum, name, "float32", rows, len(data) // 4 // rows, len(data)
    )
    return store.datasets.put(T, meta, data).id


def queued_run(store: Store, model_id: str, max_queued: int = 10, request_id: str = "") -> Any:
    data = put_dataset(store)
    new = NewRun(model_id, {"epochs": 2}, {"inputs": data, "targets": data}, rows=2)
    return store.runs.create(T, new, max_queued, request_id)


# ------------------------------------------------------------------------------------ schema


def test_an_empty_database_is_upgraded_and_matches_the_models(empty_database_url: str) -> None:
    store = open_store(empty_database_url)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
    open_store(empty_database_url)  # a second start accepts the current schema


def test_the_suites_databases_are_at_the_current_schema_and_match_the_models(database_url: str) -> None:
    """Every other test starts from a copy of what the migrations made once (see conftest.py)."""
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_an_out_of_date_schema_is_refused_untouched(database_url: str) -> None:
    store = open_store(database_url)
    store.models.create(T, "kept", SPEC, weights(), 3)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaOutOfDate, match="gradwire db upgrade"):
        open_store(database_url)
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0000"
        assert connection.execute(text("SELECT count(*) FROM models")).scalar() == 1


def test_tables_without_a_revision_are_refused(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE models (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaOutOfDate, match="tables without Alembic"):
        open_store(empty_database_url)


def test_upgrading_from_the_first_schema_keeps_weights_and_history(empty_database_url: str) -> None:
    """A database made by the first release: its weights move into chunks, its epochs stay, its
    run left running becomes interrupted; the downgrade gives the weights back."""
    engine = make_engine(empty_database_url)
    command.upgrade(_config(engine), "0001")
    blob = blobs.pack(weights(7))
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO models VALUES ('m1', 'old', '{}', 3, 1, '2026-01-01', '2026-01-01')")
        )
        connection.execute(
            text("INSERT INTO weight_versions VALUES ('m1', 1, :blob, :sum, NULL, '2026-01-01')"),
            {"blob": blob, "sum": blobs.sha256(blob)},
        )
        run = "('r1', 'm1', 'running', '', '{}', 4, 1, NULL, 0, '', '2026-01-01', NULL)"
        connection.execute(text(f"INSERT INTO training_runs VALUES {run}"))
        for epoch, loss in ((1, 0.5), (2, 0.4)):
            connection.execute(
                text(f"INSERT INTO epochs VALUES ('r1', {epoch}, {loss}, NULL, '{{}}', '2026-01-01')")
            )
    with pytest.raises(SchemaOutOfDate):  # the server refuses it; the operator upgrades:
        open_store(empty_database_url)
    command.upgrade(_config(engine), "head")
    store = open_store(empty_database_url)
    np.testing.assert_array_equal(store.models.load_weights(T, "m1")[1]["0.W"], weights(7)["0.W"])
    (run,) = store.runs.history(T, "m1")
    assert (run.status, run.epochs_done, [e.epoch for e in run.epochs]) == ("interrupted", 2, [1, 2])
    assert store.runs.requeue_interrupted(max_attempts=9, max_queued=10) == []  # it kept no data
    with pytest.raises(WrongState, match="before runs kept their data"):
        store.runs.resume(T, "r1", max_queued=10)
    command.downgrade(_config(engine), "0001")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT weights FROM weight_versions")).scalar() == blob
        assert connection.execute(text("SELECT count(*) FROM epochs")).scalar() == 2


# ------------------------------------------------------------------------------------ blobs, models


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_round_trip_exactly(store: Store, dtype: str) -> None:
    model = store.models.create(T, "m", SPEC, weights(1, dtype), 3)
    assert (model.version, model.parameter_count, model.spec) == (1, 3, SPEC)
    version, arrays = store.models.load_weights(T, model.id)
    assert version == 1
    for name, array in weights(1, dtype).items():
        assert arrays[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(arrays[name], array)


def test_a_large_value_is_stored_in_chunks_no_larger_than_the_limit(store: Store) -> None:
    big = {"0.W": np.arange(3 * CHUNK_BYTES // 8 + 5, dtype=np.float64)}  # three chunks and a bit
    model = store.models.create(T, "big", SPEC, big, big["0.W"].size)
    with store.db.read() as s:
        sizes = s.execute(select(func.length(ChunkRow.data))).scalars().all()
    assert len(sizes) == 4
    assert max(sizes) <= CHUNK_BYTES
    np.testing.assert_array_equal(store.models.load_weights(T, model.id)[1]["0.W"], big["0.W"])


def test_unknown_models_and_versions_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.models.get(T, "nope")
    assert info.value.field == "model_id"
    model = store.models.create(T, "m", SPEC, weights(), 3)
    with pytest.raises(NotFound) as info:
        store.models.load_weights(T, model.id, 7)
    assert info.value.field == "version"


def test_a_corrupted_blob_is_detected(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE weight_versions SET checksum = :c"), {"c": "0" * 64})
    with pytest.raises(CorruptBlob):
        store.models.load_weights(T, model.id)


def test_listing_pages_through_every_model_once(store: Store) -> None:
    ids = [store.models.create(T, f"m{i}", SPEC, weights(i), 3).id for i in range(7)]
    seen, after = [], None
    while True:
        page = store.models.page(T, 3, after)
        seen += [m.id for m in page]
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].id)
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 7


def test_a_request_id_makes_a_creation_happen_once_even_when_calls_race(store: Store) -> None:
    made: list[str] = []

    def create() -> None:
        made.append(store.models.create(T, "m", SPEC, weights(), 3, request_id="req-1").id)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 4
    assert len(set(made)) == 1
    assert len(store.models.page(T, 10)) == 1


def test_concurrent_writers_all_land(store: Store) -> None:
    def create(worker: int) -> None:
        for i in range(8):
            store.models.create(T, f"w{worker}-{i}", SPEC, weights(i), 3)

    threads = [threading.Thread(target=create, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.models.page(T, 100)) == 32


# ------------------------------------------------------------------------------------ datasets


def test_a_staged_upload_is_nothing_until_finished_and_the_same_content_is_one_dataset(store: Store) -> None:
    data = np.arange(8, dtype=np.float32).tobytes()
    checksum = blobs.sha256(data)
    meta = DatasetMeta("ds-1", checksum, "first", "float32", 2, 4, len(data))
    blob = store.datasets.begin_upload()
    store.datasets.write_chunks(blob, 0, [data])
    assert store.datasets.page(T, 10) == []
    first = store.datasets.finish_upload(T, blob, meta)
    again = store.datasets.begin_upload()
    store.datasets.write_chunks(again, 0, [data])
    second = store.datasets.finish_upload(
        T, again, DatasetMeta("ds-1", checksum, "second", "float32", 2, 4, len(data))
    )
    assert first == second  # the first upload's dataset, name included
    np.testing.assert_array_equal(
        store.datasets.load(T, "ds-1"), np.arange(8, dtype=np.float32).reshape(2, 4)
    )
    with store.db.read() as s:
        assert s.scalar(select(func.count()).select_from(ChunkRow)) == 1  # the duplicate's chunks are gone


def test_an_upload_the_janitor_swept_cannot_become_a_dataset(store: Store) -> None:
    """A slow upload outlives the janitor's patience: its next write, and its finish, are
    refused, and no dataset with missing bytes ever appears under the content's address."""
    data = b"\x00" * 16
    meta = DatasetMeta("ds-slow", blobs.sha256(data), "slow", "float32", 2, 2, len(data))
    blob = store.datasets.begin_upload()
    store.datasets.write_chunks(blob, 0, [data[:8]])
    assert store.datasets.reap_uploads(0) == 1
    with pytest.raises(WrongState, match="idle too long"):
        store.datasets.write_chunks(blob, 1, [data[8:]])
    with pytest.raises(WrongState):
        store.datasets.finish_upload(T, blob, meta)
    assert store.datasets.page(T, 10) == []
    short = store.datasets.begin_upload()
    store.datasets.write_chunks(short, 0, [data[:8]])
    with pytest.raises(CorruptBlob, match="8 bytes"):  # fewer bytes than the dataset has
        store.datasets.finish_upload(T, short, meta)
    assert store.datasets.page(T, 10) == []


def test_abandoned_uploads_are_swept(store: Store) -> None:
    blob = store.datasets.begin_upload()
    store.datasets.write_chunks(blob, 0, [b"\x01" * 8])
    assert store.datasets.reap_uploads(3600) == 0  # too young
    assert store.datasets.reap_uploads(0) == 1
    with store.db.read() as s:
        assert s.scalar(select(func.count()).select_from(ChunkRow)) == 0


def test_a_dataset_in_use_cannot_be_deleted_until_its_runs_end(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    dataset = run.datasets["inputs"]
    with pytest.raises(WrongState, match=run.id):
        store.datasets.delete(T, dataset)
    store.runs.cancel(T, run.id)
    store.datasets.delete(T, dataset)
    with pytest.raises(NotFound):
        store.datasets.get(T, dataset)


# ------------------------------------------------------------------------------------ runs


def finished(
    status: str = "completed", weights_: dict[str, np.ndarray] | None = None, **more: Any
) -> Outcome:
    return Outcome(status, "max_epochs", 2, 0.5, (epoch(2, 0.5),), weights_, **more)


def epoch(number: int, train_loss: float, **more: Any) -> NewEpoch:
    """An epoch to commit: its columns, and a record holding them and ``more``."""
    record = {"epoch": number, "train_loss": train_loss, "val_loss": None, **more}
    return NewEpoch(number, train_loss, None, record)


def claim(store: Store, owner: str = "me") -> str:
    """Claim the oldest queued run for ``owner``: the lease of that claim."""
    run = store.runs.claim_next(owner)
    assert run is not None
    assert run.owner.startswith(f"{owner}/")
    return run.owner


def test_a_run_moves_through_its_states_by_guarded_updates(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    assert (run.status, run.base_version, run.owner) == ("queued", 1, None)
    lease = claim(store)
    claimed = store.runs.get(T, run.id)
    assert (claimed.status, claimed.owner, claimed.attempts) == ("running", lease, 1)
    assert store.runs.claim_next("other") is None  # nothing else queued
    with pytest.raises(LeaseLost):
        store.runs.heartbeat(run.id, "me")  # the process's name alone is not the lease
    record = epoch(1, 1.0, train_metric=float("nan"))
    assert store.runs.commit(run.id, lease, [record], Checkpoint(1, weights(1), {"epoch": 1})) is False
    checkpoint = store.runs.load_checkpoint(run.id)
    assert checkpoint is not None
    assert (checkpoint.epoch, checkpoint.meta) == (1, {"epoch": 1})
    done = store.runs.finish(run.id, lease, finished(weights_=weights(5)))
    assert (done.status, done.version, done.epochs_done, done.owner) == ("completed", 2, 2, None)
    assert store.runs.load_checkpoint(run.id) is None  # finished runs keep no checkpoint
    assert store.models.get(T, model.id).version == 2
    np.testing.assert_array_equal(store.models.load_weights(T, model.id)[1]["0.W"], weights(5)["0.W"])
    (history,) = store.runs.history(T, model.id)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert history.epochs[0].record["train_metric"] is None  # NaN is stored as null
    with pytest.raises(LeaseLost):
        store.runs.finish(run.id, lease, finished())  # a second finish matches nothing


@contextmanager
def statements_sent(store: Store) -> Iterator[list[str]]:
    """The SQL statements the store sends to its database while the block runs (but SQLite's
    BEGIN, which PostgreSQL's driver sends unseen)."""
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement != "BEGIN":
            sent.append(statement)

    with hooked(store, count):
        yield sent


@contextmanager
def hooked(store: Store, hook: Any) -> Iterator[None]:
    """``hook`` hears every statement the store sends while the block runs."""
    event.listen(store.engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(store.engine, "before_cursor_execute", hook)


@contextmanager
def transactions_begun(store: Store) -> Iterator[list[str]]:
    """The statements that began a transaction while the block ran: SQLite's BEGIN, which
    gradwire sends; on PostgreSQL, a statement sent outside autocommit with none open (psycopg
    sends BEGIN before it, unseen by SQLAlchemy)."""
    begun: list[str] = []

    def seen(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        driver = connection.connection.dbapi_connection
        if store.engine.dialect.name == "sqlite":
            opens = statement.startswith("BEGIN")
        else:
            idle = driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            opens = idle and not driver.autocommit
        if opens:
            begun.append(statement)

    with hooked(store, seen):
        yield begun


def test_a_page_of_runs_and_a_models_history_take_a_few_statements_however_many_runs(store: Store) -> None:
    """Each run's datasets, epochs and silence were one or two queries of their own: 50 runs made
    a page of 52 statements and a history of 102."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    ended = []
    for n in range(1, 50):  # ended runs, the odd ones with n epochs, then one running
        run = queued_run(store, model.id, max_queued=60)
        lease = claim(store)
        epochs = [epoch(e, 1.0 / e) for e in range(1, n + 1)] if n % 2 else []
        store.runs.commit(run.id, lease, epochs, None)
        store.runs.finish(run.id, lease, Outcome("cancelled", "stop_requested", epochs=tuple(epochs)))
        ended.append((run.id, len(epochs)))
    running = queued_run(store, model.id, max_queued=60)
    claim(store)
    with statements_sent(store) as sent:
        page = store.runs.page(T, 100)
    assert len(sent) <= 3, sent
    assert [r.id for r in page] == [run_id for run_id, _ in ended] + [running.id]
    assert all(set(r.datasets) == {"inputs", "targets"} for r in page)
    assert (page[-1].status, page[-1].silent_seconds >= 0) == ("running", True)
    with statements_sent(store) as sent:
        history = store.runs.history(T, model.id)
    assert len(sent) <= 5, sent
    assert [(r.id, len(r.epochs)) for r in history] == [*ended, (running.id, 0)]
    assert all([e.epoch for e in r.epochs] == list(range(1, len(r.epochs) + 1)) for r in history)
    assert history[10].datasets == page[10].datasets == store.runs.get(T, history[10].id).datasets


def test_a_commit_whose_answer_was_lost_can_be_sent_again(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    epochs = [epoch(e, 1.0 / e) for e in (1, 2)]
    store.runs.commit(run.id, lease, epochs, None)
    store.runs.commit(run.id, lease, [*epochs, epoch(3, 0.3)], None)  # 1, 2 again
    done = store.runs.finish(run.id, lease, Outcome("completed", "max_epochs", epochs=tuple(epochs)))
    assert done.epochs_done == 3
    assert [e.epoch for e in store.runs.history(T, model.id)[0].epochs] == [1, 2, 3]


def test_a_runs_clock_moves_with_its_commits_and_never_back(store: Store) -> None:
    """``train_seconds`` is committed with each commit's epochs, so an attempt that dies keeps
    what it trained; a commit sent again, or a failure that knows nothing, never winds it back."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    ended = {}
    for status, seconds in (("failed", 0.0), ("completed", 6.0)):
        run = queued_run(store, model.id)
        lease = claim(store)
        first, second = epoch(1, 1.0), epoch(2, 0.5)
        store.runs.commit(run.id, lease, [first], None, 2.5)
        assert store.runs.read(run.id).train_seconds == 2.5
        store.runs.commit(run.id, lease, [first, second], None, 1.0)  # epoch 1 again, an older clock
        assert store.runs.read(run.id).train_seconds == 2.5
        store.runs.commit(run.id, lease, [epoch(3, 0.4)], None, 4.0)
        assert store.runs.read(run.id).train_seconds == 4.0
        ended[status] = store.runs.finish(run.id, lease, Outcome(status, "x", train_seconds=seconds))
    assert ended["failed"].train_seconds == 4.0
    assert ended["completed"].train_seconds == 6.0


def test_one_queued_or_running_run_per_model_is_a_database_constraint(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    first = queued_run(store, model.id)
    with pytest.raises(ModelBusy, match=first.id):
        queued_run(store, model.id)
    with pytest.raises(ModelBusy):
        store.models.delete(T, model.id)
    store.runs.cancel(T, first.id)
    queued_run(store, model.id)  # the model is free again


def test_the_queue_is_bounded(store: Store) -> None:
    models = [store.models.create(T, f"m{i}", SPEC, weights(), 3) for i in range(3)]
    queued_run(store, models[0].id, max_queued=2)
    queued_run(store, models[1].id, max_queued=2)
    with pytest.raises(QueueFull):
        queued_run(store, models[2].id, max_queued=2)


def test_a_cancelled_queued_run_is_never_claimed(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    assert store.runs.cancel(T, run.id).status == "cancelled"
    assert store.runs.claim_next("me") is None
    assert store.runs.cancel(T, run.id).status == "cancelled"  # cancelling again changes nothing


def test_cancelling_a_running_run_asks_its_owner_to_stop(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    assert store.runs.cancel(T, run.id).status == "running"
    assert store.runs.heartbeat(run.id, lease) is True


@pytest.mark.parametrize("end", ["reaped", "stopped"])
def test_a_cancel_asked_of_a_run_whose_server_went_away_is_not_lost(store: Store, end: str) -> None:
    """Its server died before seeing the flag (the reaper ends it), or stopped gracefully at an
    epoch's end (its own finish says interrupted): either way the run ends cancelled, never
    queued again."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    store.runs.commit(run.id, lease, [epoch(1, 1.0)], Checkpoint(1, weights(1), {}))
    store.runs.cancel(T, run.id)
    if end == "reaped":
        assert store.runs.reap(lease_seconds=0) == [run.id]
    else:
        stop = Outcome("interrupted", "shutdown", checkpoint=Checkpoint(1, weights(), {}))
        store.runs.finish(run.id, lease, stop)
    ended = store.runs.get(T, run.id)
    assert (ended.status, ended.stop_reason) == ("cancelled", "cancelled")
    assert store.runs.load_checkpoint(run.id) is None
    assert store.runs.requeue_interrupted(max_attempts=3, max_queued=10) == []


def test_only_expired_leases_are_reaped_and_never_those_executing_here(store: Store) -> None:
    models = [store.models.create(T, f"m{i}", SPEC, weights(), 3) for i in range(2)]
    runs = [queued_run(store, m.id) for m in models]
    leases = [claim(store, "peer") for _ in runs]
    assert store.runs.reap(lease_seconds=3600) == []  # live leases
    assert store.runs.reap(lease_seconds=0, executing={runs[1].id}) == [runs[0].id]
    assert store.runs.get(T, runs[0].id).status == "interrupted"
    assert store.runs.get(T, runs[0].id).stop_reason == "lease_expired"
    with pytest.raises(LeaseLost):  # the old owner's next write finds it is not theirs any more
        store.runs.commit(runs[0].id, leases[0], [], None)


def test_a_runs_silence_is_measured_by_the_database_clock_alone(store: Store) -> None:
    """How long a running run's lease has gone unrenewed, both ends read off the database's clock
    (a server whose own clock is off would otherwise call a live run stalled)."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    assert store.runs.get(T, run.id).silent_seconds == 0.0  # queued: no lease to renew
    claim(store)
    assert 0.0 <= store.runs.get(T, run.id).silent_seconds < 30.0
    with store.db.write() as s:  # the last renewal, 100 s ago by the database's clock
        s.execute(update(RunRow).where(RunRow.id == run.id).values(heartbeat_at=seconds_ago(100.0)))
    assert 100.0 <= store.runs.get(T, run.id).silent_seconds < 130.0


def test_a_job_of_an_earlier_claim_cannot_pass_for_the_current_one(store: Store) -> None:
    """The same process claims a run again after a peer reaped it: the two claims' leases differ,
    so the stale job's writes fail, even from the same process."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    stale = claim(store, "proc-a")
    store.runs.reap(lease_seconds=0)
    store.runs.resume(T, run.id, max_queued=10)
    current = claim(store, "proc-a")
    assert current != stale
    with pytest.raises(LeaseLost):
        store.runs.heartbeat(run.id, stale)
    with pytest.raises(LeaseLost):
        store.runs.finish(run.id, stale, finished(weights_=weights(1)))
    assert store.runs.heartbeat(run.id, current) is False


def test_an_interrupted_run_resumes_from_its_checkpoint_once(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    dead = claim(store, "dead")
    store.runs.commit(run.id, dead, [epoch(1, 1.0)], Checkpoint(1, weights(1), {"epoch": 1}))
    store.runs.reap(lease_seconds=0)
    resumed = store.runs.resume(T, run.id, max_queued=10)
    assert (resumed.status, resumed.epochs_done, resumed.stop_reason) == ("queued", 1, "")
    assert store.runs.resume(T, run.id, max_queued=10).status == "queued"  # again: unchanged
    alive = claim(store, "alive")
    assert store.runs.get(T, run.id).attempts == 2
    checkpoint = store.runs.load_checkpoint(run.id)
    assert checkpoint is not None
    assert checkpoint.epoch == 1
    store.runs.finish(run.id, alive, finished())
    with pytest.raises(WrongState):
        store.runs.resume(T, run.id, max_queued=10)


def test_graceful_stops_do_not_use_up_the_automatic_resumes(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    for _ in range(3):  # three rolling restarts
        lease = claim(store)
        stop = Outcome("interrupted", "shutdown", checkpoint=Checkpoint(0, weights(), {}))
        store.runs.finish(run.id, lease, stop)
        assert store.runs.requeue_interrupted(max_attempts=1, max_queued=10) == [run.id]
    claim(store)
    store.runs.reap(lease_seconds=0)  # a crash: this one counts
    assert store.runs.requeue_interrupted(max_attempts=1, max_queued=10) == []
    assert store.runs.get(T, run.id).status == "interrupted"


def test_publishing_is_compare_and_set_on_the_base_version(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    with store.engine.begin() as connection:  # another writer moved the model on meanwhile
        connection.execute(text("UPDATE models SET current_version = 2"))
    with pytest.raises(VersionConflict, match="version 2"):
        store.runs.finish(run.id, lease, finished(weights_=weights(9)))
    assert store.runs.get(T, run.id).status == "running"  # nothing was written
    with pytest.raises(NotFound):
        store.models.load_weights(T, model.id, 2)


def test_an_interrupted_run_whose_model_moved_on_cannot_resume(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    stale = queued_run(store, model.id)
    claim(store, "dead")
    store.runs.reap(lease_seconds=0)
    fresh = queued_run(store, model.id)
    lease = claim(store)
    store.runs.finish(fresh.id, lease, finished(weights_=weights(2)))
    with pytest.raises(VersionConflict, match="start a new run"):
        store.runs.resume(T, stale.id, max_queued=10)
    assert store.runs.requeue_interrupted(max_attempts=3, max_queued=10) == []
    failed = store.runs.get(T, stale.id)
    assert (failed.status, failed.stop_reason) == ("failed", "version_conflict")


def test_two_claimers_never_take_the_same_run(store: Store) -> None:
    models = [store.models.create(T, f"m{i}", SPEC, weights(), 3) for i in range(6)]
    for model in models:
        queued_run(store, model.id)
    claims: list[str] = []

    def claim(owner: str) -> None:
        while (run := store.runs.claim_next(owner)) is not None:
            claims.append(run.id)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claims) == len(set(claims)) == 6


def test_a_claim_asks_once_and_takes_a_run_in_one_statement(store: Store) -> None:
    """It was three statements (find the oldest, take it, read it back), each a round trip in every
    fit; and a server at rest opened a write transaction at every poll to find nothing."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    with statements_sent(store) as sent:
        claimed = store.runs.claim_next("me")
    assert claimed is not None
    assert claimed.id == run.id
    assert [s.split()[0] for s in sent if not s.startswith("BEGIN")] == ["SELECT", "UPDATE"]
    with statements_sent(store) as sent:
        assert store.runs.claim_next("me") is None
    assert [s.split()[0] for s in sent] == ["SELECT"]  # nothing waits: no write transaction
    assert store.runs.get(T, run.id).attempts == 1
    second = queued_run(store, store.models.create(T, "n", SPEC, weights(), 3).id)
    with statements_sent(store) as sent, transactions_begun(store) as begun:
        claimed = store.runs.claim_next("me", waiting=True)  # its caller queued it: no need to ask
    assert claimed is not None
    assert claimed.id == second.id
    assert [s.split()[0] for s in sent] == ["UPDATE"]
    assert begun == []  # one statement is a transaction by itself: no BEGIN, no COMMIT to wait for


def test_reads_open_no_transaction_on_postgresql_and_one_snapshot_on_sqlite(store: Store) -> None:
    """At READ COMMITTED each statement of a PostgreSQL transaction sees a snapshot of its own,
    so a read transaction there bought nothing for its BEGIN and ROLLBACK (and the ROLLBACK
    emptied the driver's prepared statements); SQLite's keeps its reads on one snapshot."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    claim(store)
    with transactions_begun(store) as begun:
        store.runs.load(run.id)
        store.runs.history(T, model.id)
    assert len(begun) == (2 if store.engine.dialect.name == "sqlite" else 0)


def test_a_read_session_refuses_to_write(store: Store) -> None:
    """On PostgreSQL a read has no transaction: a write there would be committed at once."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    with store.db.read() as s:
        row = s.scalars(select(ModelRow).where(ModelRow.id == model.id)).one()
        row.name = "changed"
        with pytest.raises(RuntimeError, match="never writes"):
            s.flush()
    assert store.models.get(T, model.id).name == "m"


def test_a_history_leaves_out_a_run_started_while_it_reads(store: Store) -> None:
    """On PostgreSQL a history's two reads of runs and of their epochs see two snapshots: the
    epochs of a run started and committed between them came back for a run not listed, and the
    history failed (KeyError). SQLite's read transaction never sees it."""
    model = store.models.create(T, "m", SPEC, weights(), 3)

    def trained() -> str:
        run = queued_run(store, model.id)
        lease = claim(store)
        store.runs.finish(run.id, lease, Outcome("failed", "error", error="x", epochs=(epoch(1, 0.5),)))
        return str(run.id)

    first = trained()
    started: list[str] = []

    def between(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT epochs.") and not started:
            started.append(trained())  # another server's, on another connection

    with hooked(store, between):
        history = store.runs.history(T, model.id)
    assert started
    assert [(run.id, [e.epoch for e in run.epochs]) for run in history] == [(first, [1])]


def test_epochs_keep_their_losses_and_records_to_the_bit(store: Store) -> None:
    """PostgreSQL takes a commit's epochs as one JSON array, its losses read back from their JSON
    text: what is stored is what was sent, at the extremes of a double too."""
    losses = [1 / 3, 0.1 + 0.2, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -2.5e-17]
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    sent = [
        NewEpoch(
            n, loss, -loss, {"epoch": n, "train_loss": loss, "val_loss": -loss, "grad_norms": {"0": loss}}
        )
        for n, loss in enumerate(losses, 1)
    ]
    store.runs.commit(run.id, lease, sent, None)
    with store.engine.connect() as connection:
        columns = connection.execute(
            select(EpochRow.epoch, EpochRow.train_loss, EpochRow.val_loss)
            .where(EpochRow.run_id == run.id)
            .order_by(EpochRow.epoch)
        ).all()
    assert [(n, a.hex(), b.hex()) for n, a, b in columns] == [
        (e.epoch, e.train_loss.hex(), (-e.train_loss).hex()) for e in sent
    ]
    (history,) = store.runs.history(T, model.id)
    assert [e.record for e in history.epochs] == [e.record for e in sent]
    assert [e.record["grad_norms"]["0"].hex() for e in history.epochs] == [loss.hex() for loss in losses]


def test_a_load_reads_a_dataset_of_two_roles_once(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)  # one dataset as inputs and as targets
    claim(store)
    load = store.runs.load(run.id)
    assert load.data["inputs"] is load.data["targets"]
    assert load.base is not None
    assert load.base.version == 1


def test_what_a_row_lacks_stays_sql_null_in_json_columns(store: Store) -> None:
    """Core statements would store JSON's ``null`` for None, which ``IS NULL`` does not find."""
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    store.runs.finish(run.id, claim(store), finished("cancelled"))  # no receipt, no new version
    with store.engine.connect() as connection:
        nulls = {
            query: connection.execute(text(query)).scalar()
            for query in (
                "SELECT count(*) FROM training_runs WHERE receipt IS NULL",
                "SELECT count(*) FROM weight_versions WHERE optimizer_meta IS NULL",
            )
        }
    assert set(nulls.values()) == {1}, nulls


def test_a_pooled_connection_is_tested_when_it_was_idle_and_trusted_when_it_was_just_used(
    store: Store, database_url: str
) -> None:
    """PostgreSQL: a connection its server ended while it sat idle in the pool is replaced
    unseen; one ended a moment after its last use fails its statement as Unavailable (what
    callers retry) and the pool starts afresh, so the next call works."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's connections are files in this process: nothing to test them for")
    taken: list[Any] = []
    event.listen(store.engine, "checkout", lambda _dbapi, record, _proxy: taken.append(record))
    model = store.models.create(T, "m", SPEC, weights(), 3)

    def end_the_pooled_connection() -> Any:
        """End the backend of the connection the pool would hand out next; its record."""
        with store.engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        other = make_engine(database_url)
        with other.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:  # fresh reads
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            deadline = time.monotonic() + 30
            gone = text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid")
            while not admin.execute(gone, {"pid": pid}).scalar():  # it ends soon after the signal
                assert time.monotonic() < deadline
        other.dispose()
        return taken[-1]

    end_the_pooled_connection().info[RETURNED_AT] -= PING_IDLE_SECONDS  # as if idle that long
    assert store.models.get(T, model.id).id == model.id  # tested, found dead, replaced
    end_the_pooled_connection()
    with pytest.raises(Unavailable):
        store.models.get(T, model.id)
    assert store.models.get(T, model.id).id == model.id


def test_a_new_version_stores_its_weights_and_optimiser_state_in_one_insert_of_chunks(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    outcome = finished(weights_=weights(3), optimizer=weights(4), optimizer_meta={"name": "adam", "t": 7})
    with statements_sent(store) as sent:
        store.runs.finish(run.id, lease, outcome)
    assert sum(s.startswith("INSERT INTO blob_chunks") for s in sent) == 1
    state = store.models.load_version(model.id)
    assert state.version == 2
    assert state.optimizer is not None
    for stored, given in ((state.weights, weights(3)), (state.optimizer, weights(4))):
        assert stored.keys() == given.keys()
        for name in given:
            np.testing.assert_array_equal(stored[name], given[name])


def test_deleting_a_model_removes_everything_it_owns(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    other = store.models.create(T, "other", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    lease = claim(store)
    store.runs.commit(run.id, lease, [epoch(1, 1.0)], Checkpoint(1, weights(), {}))
    store.runs.finish(
        run.id, lease, finished(weights_=weights(3), optimizer=weights(4), optimizer_meta={"t": 1})
    )
    store.models.delete(T, model.id)
    with pytest.raises(NotFound):
        store.models.get(T, model.id)
    with store.engine.connect() as connection:
        for table in ("weight_versions", "run_checkpoints", "training_runs", "epochs", "run_datasets"):
            remaining = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            assert remaining == (1 if table == "weight_versions" else 0), table
        # what is left: the other model's weights and the dataset
        assert connection.execute(text("SELECT count(*) FROM blob_chunks")).scalar() == 2
    assert store.models.get(T, other.id).name == "other"


def test_a_database_failure_in_the_middle_of_a_blob_is_reported_as_itself_and_stores_nothing(
    store: Store,
) -> None:
    """The second chunk's INSERT fails as a lost connection would (raised by the real driver's
    hook): the caller gets Unavailable, not the session's later complaints, and no model exists."""
    big = {"0.W": np.arange(2 * CHUNK_BYTES // 8 + 1, dtype=np.float64)}  # three chunks
    inserts = []

    def fail_second_chunk(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO blob_chunks"):
            inserts.append(statement)
            if len(inserts) == 2:
                raise store.engine.dialect.loaded_dbapi.OperationalError("connection lost")

    event.listen(store.engine, "before_cursor_execute", fail_second_chunk)
    try:
        with pytest.raises(Unavailable, match="connection lost"):
            store.models.create(T, "big", SPEC, big, big["0.W"].size)
    finally:
        event.remove(store.engine, "before_cursor_execute", fail_second_chunk)
    assert store.models.page(T, 10) == []
    with store.db.read() as s:
        assert s.scalar(select(func.count()).select_from(ChunkRow)) == 0


def test_an_interrupted_run_that_was_asked_to_cancel_ends_instead_of_resuming(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    run = queued_run(store, model.id)
    claim(store)
    store.runs.reap(lease_seconds=0)
    with store.engine.begin() as connection:  # a cancel that landed just as it was interrupted
        connection.execute(text("UPDATE training_runs SET cancel_requested = :yes"), {"yes": True})
    ended = store.runs.resume(T, run.id, max_queued=10)
    assert (ended.status, ended.stop_reason) == ("cancelled", "cancelled")
    assert store.runs.claim_next("me") is None


# ------------------------------------------------------------------------------------ temporary data


def _meta(data: bytes, rows: int = 2) -> DatasetMeta:
    checksum = blobs.sha256(data)
    return DatasetMeta(
        f"ds-{checksum[:20]}-{rows}", checksum, "", "float32", rows, len(data) // 4 // rows, len(data)
    )


def _start_inline(store: Store, model_id: str, data: bytes) -> Any:
    inline = InlineData(_meta(data), data)
    start = RunStart(model_id, {"epochs": 2}, {}, {"inputs": inline, "targets": inline})
    return store.runs.start(T, start, lambda model, datasets: None, max_queued=10)


def test_data_a_run_brought_inline_is_deleted_once_no_run_needs_it(store: Store) -> None:
    """A GridSearchCV's fits each brought their data inline, and every copy stayed; now such data
    is temporary: kept while a queued, running or interrupted run reads it, then deleted."""
    models = [store.models.create(T, f"m{i}", SPEC, weights(), 3) for i in range(2)]
    data = b"\x01" * 16
    first = _start_inline(store, models[0].id, data)
    second = _start_inline(store, models[1].id, data)  # the same content: one dataset, two readers
    (dataset,) = store.datasets.page(T, 10)
    assert store.datasets.reap_temporary() == 0  # both runs are queued
    store.runs.cancel(T, first.id)
    assert store.datasets.reap_temporary() == 0  # the second still needs it
    claim(store)
    assert store.datasets.reap_temporary() == 0  # running
    store.runs.reap(lease_seconds=0)
    assert store.runs.get(T, second.id).status == "interrupted"
    assert store.datasets.reap_temporary() == 0  # it may resume
    store.runs.cancel(T, second.id)
    chunks = select(func.count()).select_from(ChunkRow)
    with store.db.read() as s:
        before = s.scalar(chunks)
    assert store.datasets.reap_temporary() == 1
    assert store.datasets.page(T, 10) == []
    with pytest.raises(NotFound):
        store.datasets.get(T, dataset.id)
    with store.db.read() as s:
        assert s.scalar(chunks) == before - 1  # its bytes too (one chunk)


def test_data_uploaded_on_purpose_stays_though_a_run_brought_it_too(store: Store) -> None:
    model = store.models.create(T, "m", SPEC, weights(), 3)
    data = b"\x02" * 16
    uploaded = put_dataset(store, data)  # first uploaded, then brought inline
    run = _start_inline(store, model.id, data)
    store.runs.cancel(T, run.id)
    assert store.datasets.reap_temporary() == 0
    brought = b"\x03" * 16  # first brought inline, then uploaded: it becomes permanent
    again = _start_inline(store, model.id, brought)
    store.runs.cancel(T, again.id)
    put_dataset(store, brought)
    assert store.datasets.reap_temporary() == 0
    assert {d.id for d in store.datasets.page(T, 10)} == {uploaded, _meta(brought).id}


def test_the_janitor_waits_for_a_start_that_takes_temporary_data_and_leaves_it(store: Store) -> None:
    """A start that finds the data stored already locks it; the janitor, about to delete it, waits
    for that start and then sees its run: the run keeps its data (runs failed missing_data when
    the janitor decided on what it had seen before the wait)."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time: a start and the janitor cannot interleave")
    models = [store.models.create(T, f"m{i}", SPEC, weights(), 3) for i in range(2)]
    data = b"\x04" * 16
    store.runs.cancel(T, _start_inline(store, models[0].id, data).id)  # its data: needed by none
    reaped: list[int] = []

    def janitor_waits_meanwhile(model: Any, datasets: Any) -> None:
        janitor = threading.Thread(target=lambda: reaped.append(store.datasets.reap_temporary()))
        janitor.start()
        waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        deadline = time.monotonic() + 30
        with store.engine.connect() as watcher:
            while watcher.execute(waiting).scalar() == 0:
                assert time.monotonic() < deadline, "the janitor never waited for the start"
                watcher.rollback()
        janitors.append(janitor)

    janitors: list[threading.Thread] = []
    inline = InlineData(_meta(data), data)
    start = RunStart(models[1].id, {"epochs": 2}, {}, {"inputs": inline, "targets": inline})
    run = store.runs.start(T, start, janitor_waits_meanwhile, max_queued=10)
    janitors[0].join(timeout=30)
    assert reaped == [0]
    assert [d.id for d in store.datasets.page(T, 10)] == [_meta(data).id]
    assert store.runs.get(T, run.id).status == "queued"
