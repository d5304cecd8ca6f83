"""The store on a real database: SQLite always, PostgreSQL when a test database is given."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from gradwire.storage import CorruptBlob, NotFound, SchemaOutOfDate, Store, open_store
from gradwire.storage.database import head_revision, make_engine
from gradwire.storage.schema import Base
from gradwire.storage.store import Checkpoint

SPEC = {"input_dim": 2, "layers": [{"kind": "dense", "units": 1}], "loss": "squared_error"}


def weights(seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"0.W": rng.normal(size=(2, 1)).astype(dtype), "0.b": np.zeros(1, dtype)}


@pytest.fixture
def store(database_url: str) -> Store:
    return open_store(database_url)


def test_an_empty_database_is_upgraded_and_matches_the_models(database_url: str) -> None:
    store = open_store(database_url)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
    open_store(database_url)  # a second start accepts the current schema


def test_an_out_of_date_schema_is_refused_untouched(database_url: str) -> None:
    store = open_store(database_url)
    store.create_model("kept", SPEC, weights(), 3)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaOutOfDate, match="gradwire db upgrade"):
        open_store(database_url)
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0000"
        assert connection.execute(text("SELECT count(*) FROM models")).scalar() == 1


def test_tables_without_a_revision_are_refused(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE models (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaOutOfDate, match="tables without Alembic"):
        open_store(database_url)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_round_trip_exactly(store: Store, dtype: str) -> None:
    model = store.create_model("m", SPEC, weights(1, dtype), 3)
    assert (model.version, model.parameter_count, model.spec) == (1, 3, SPEC)
    version, arrays = store.load_weights(model.id)
    assert version == 1
    for name, array in weights(1, dtype).items():
        assert arrays[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(arrays[name], array)


def test_unknown_models_and_versions_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.get_model("nope")
    assert info.value.field == "model_id"
    model = store.create_model("m", SPEC, weights(), 3)
    with pytest.raises(NotFound) as info:
        store.load_weights(model.id, 7)
    assert info.value.field == "version"


def test_a_corrupted_blob_is_detected(store: Store) -> None:
    model = store.create_model("m", SPEC, weights(), 3)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE weight_versions SET checksum = :c"), {"c": "0" * 64})
    with pytest.raises(CorruptBlob):
        store.load_weights(model.id)


def test_listing_pages_through_every_model_once(store: Store) -> None:
    ids = [store.create_model(f"m{i}", SPEC, weights(i), 3).id for i in range(7)]
    seen, after = [], None
    while True:
        page = store.list_models(3, after)
        seen += [m.id for m in page]
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].id)
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 7


def test_a_run_records_epochs_checkpoints_and_a_new_version(store: Store) -> None:
    model = store.create_model("m", SPEC, weights(), 3)
    run = store.start_run(model.id, {"epochs": 2, "clip_norm": None}, rows=10)
    assert (run.status, run.base_version, run.version) == ("running", 1, None)
    for epoch in (1, 2):
        record = {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": None, "train_metric": float("nan")}
        store.record_epoch(
            run.id, model.id, record, Checkpoint(run.id, epoch, weights(epoch), {"epoch": epoch})
        )
    checkpoint = store.load_checkpoint(model.id)
    assert checkpoint is not None
    assert (checkpoint.epoch, checkpoint.meta) == (2, {"epoch": 2})
    np.testing.assert_array_equal(checkpoint.arrays["0.W"], weights(2)["0.W"])
    done = store.finish_run(run.id, "completed", "max_epochs", 2, weights(5))
    assert (done.status, done.version) == ("completed", 2)
    assert store.get_model(model.id).version == 2
    np.testing.assert_array_equal(store.load_weights(model.id)[1]["0.W"], weights(5)["0.W"])
    np.testing.assert_array_equal(store.load_weights(model.id, 1)[1]["0.W"], weights()["0.W"])
    (history,) = store.history(model.id)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert history.epochs[0].record["train_metric"] is None  # NaN is stored as null
    assert history.stop_reason == "max_epochs"


def test_runs_left_running_are_marked_interrupted(store: Store) -> None:
    model = store.create_model("m", SPEC, weights(), 3)
    store.start_run(model.id, {}, rows=1)
    assert store.mark_interrupted() == 1
    assert store.history(model.id)[0].status == "interrupted"


def test_deleting_a_model_removes_everything_it_owns(store: Store) -> None:
    model = store.create_model("m", SPEC, weights(), 3)
    other = store.create_model("other", SPEC, weights(), 3)
    run = store.start_run(model.id, {}, rows=1)
    store.record_epoch(
        run.id, model.id, {"epoch": 1, "train_loss": 1.0}, Checkpoint(run.id, 1, weights(), {})
    )
    store.finish_run(run.id, "completed", "max_epochs", 1, weights(3))
    store.delete_model(model.id)
    with pytest.raises(NotFound):
        store.get_model(model.id)
    with store.engine.connect() as connection:
        for table in ("weight_versions", "checkpoints", "training_runs", "epochs"):
            remaining = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            assert remaining == (1 if table == "weight_versions" else 0), table
    assert store.get_model(other.id).name == "other"


def test_concurrent_writers_all_land(store: Store) -> None:
    def create(worker: int) -> None:
        for i in range(8):
            store.create_model(f"w{worker}-{i}", SPEC, weights(i), 3)

    threads = [threading.Thread(target=create, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.list_models(100)) == 32
