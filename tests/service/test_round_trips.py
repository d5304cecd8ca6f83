"""What each RPC costs the database: the statements and transactions a real server sends for one
call, counted below SQLAlchemy (at the driver) so that no path escapes the count, on SQLite and
on PostgreSQL.

One use case is one transaction (a unit of work): StartRun stores its inline data and queues its
run in one, and the reads an RPC needs are asked in as few statements as the rows allow. The
bounds are the issue's; a change that adds a round trip to one of these calls fails here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
import pytest
from helpers import Running
from sqlalchemy import Engine, event

from gradwire.client import Client, Model
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float32",
    "seed": 5,
}
RNG = np.random.default_rng(3)
X = RNG.normal(size=(64, 3)).astype(np.float32)
Y = X[:, :1] * 0.5
RPC_THREADS = "gradwire-rpc"
"""The threads grpc answers calls on (server.py names them): what they send is the call's."""
ENDS = ("COMMIT", "ROLLBACK")
"""Transaction ends: counted as transactions, not as statements."""
PINGS = ("SELECT 1", ";")
"""What the pool sends on its own to test a connection it hands out after it sat idle
(``storage.database._ping_if_idle``; on PostgreSQL, an empty statement)."""


@dataclass
class Tally:
    """What the RPC threads sent to a database (its dialect's name) while counting: statements,
    transactions begun, and the pool's pings (apart: the pool's, not the use case's)."""

    dialect: str
    statements: list[str] = field(default_factory=list)
    transactions: int = 0
    pings: int = 0
    unseen: int = 0  # statements SQLAlchemy's events did not see (a raw cursor's)


class Sent:
    """Counts what a server's RPC threads send to its database, at the driver, so that nothing
    escapes: SQLite's trace callback (every statement the library runs, a raw cursor's and BEGIN
    included), psycopg's cursors on PostgreSQL. A transaction is a BEGIN on SQLite (the code
    sends it), and on PostgreSQL a statement sent outside autocommit with no transaction open
    (psycopg begins one first). A statement of :data:`PINGS` that SQLAlchemy did not announce is
    the pool's.
    Calls of other threads (the supervisor claiming a run, a job training it) are left out."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tally: Tally | None = None
        self.lock = threading.Lock()
        self.local = threading.local()
        self.hooked: set[int] = set()
        event.listen(engine.pool, "connect", self._hook)
        event.listen(engine.pool, "checkout", self._hook)
        event.listen(engine, "before_cursor_execute", self._announced)

    def _ours(self) -> Tally | None:
        return self.tally if threading.current_thread().name.startswith(RPC_THREADS) else None

    def _announced(self, *_: Any) -> None:
        self.local.announced = getattr(self.local, "announced", 0) + 1

    def _sent(self, sql: str, begins: bool = False) -> None:
        announced = getattr(self.local, "announced", 0)
        self.local.announced = max(announced - 1, 0)
        tally = self._ours()
        if tally is None:
            return
        words = " ".join(sql.split())
        with self.lock:
            if not announced and words in PINGS:
                tally.pings += 1
                return
            if words.split(None, 1)[0].upper() in ENDS:
                return
            tally.statements.append(words[:120])
            tally.unseen += not announced
            tally.transactions += begins or words.upper().startswith("BEGIN")

    def _hook(self, dbapi_connection: Any, *_: Any) -> None:
        if id(dbapi_connection) in self.hooked:
            return
        self.hooked.add(id(dbapi_connection))
        if self.engine.dialect.name == "sqlite":
            dbapi_connection.set_trace_callback(self._sent)
        else:
            dbapi_connection.cursor_factory = counting_cursor(self._sent)

    @contextmanager
    def counting(self) -> Iterator[Tally]:
        self.tally = tally = Tally(self.engine.dialect.name)
        try:
            yield tally
        finally:
            self.tally = None


def counting_cursor(sent: Callable[[str, bool], None]) -> type[psycopg.Cursor[Any]]:
    """A psycopg cursor that reports each statement, and whether psycopg begins a transaction
    for it."""

    class Counting(psycopg.Cursor[Any]):
        def _report(self, query: Any) -> None:
            connection = self.connection
            idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            sent(str(query), idle and not connection.autocommit)

        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            self._report(query)
            return super().execute(query, *args, **kwargs)

        def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            self._report(query)
            return super().executemany(query, *args, **kwargs)

    return Counting


@dataclass(frozen=True)
class Bound:
    statements: int
    transactions: int | None = None
    reads: bool = False  # it only reads: on PostgreSQL in no transaction (READS_WITHOUT_TRANSACTION)


BOUNDS = {
    "StartRun": Bound(12, 1),
    "CreateModel": Bound(6, 1),
    "Predict": Bound(2, reads=True),
    "GetRun": Bound(2, reads=True),
    "ListRuns": Bound(6, reads=True),
    "GetTrainingHistory": Bound(6, reads=True),
}
"""The most each RPC may send (statements; transactions where the issue bounds them)."""


@pytest.fixture
def sent(server: Running) -> Sent:
    return Sent(server.app.store.engine)


def check(tally: Tally, rpc: str) -> None:
    bound = BOUNDS[rpc]
    print(
        f"\n{rpc}: {len(tally.statements)} statements, {tally.transactions} transactions, {tally.pings} pings"
    )
    listing = "\n  ".join(tally.statements)
    what = f"{rpc} sent {len(tally.statements)} statements in {tally.transactions} transactions:\n  {listing}"
    assert len(tally.statements) <= bound.statements, what
    assert not tally.unseen, f"{what}\n{tally.unseen} of them unseen by SQLAlchemy's events"
    if bound.transactions is not None:
        assert tally.transactions <= bound.transactions, what
    if bound.reads and tally.dialect == "postgresql":
        assert tally.transactions == 0, what


def trained(client: Client) -> Model:
    model = client.create_model(SPEC)
    model.fit(X, Y, epochs=2, batch_size=32)
    return model


def test_start_run_with_inline_data_is_one_transaction(client: Client, sent: Sent) -> None:
    warm = client.create_model(SPEC)
    warm.start_run(X, Y, epochs=1, batch_size=32).wait()  # the pool's connections are open
    model = client.create_model(SPEC)
    fresh = X + 1  # data the tenant has not stored: both arrays are written
    with sent.counting() as tally:
        run = model.start_run(fresh, Y, epochs=1, batch_size=32)
    check(tally, "StartRun")
    assert run.wait().status == "completed"


def test_create_model(client: Client, sent: Sent) -> None:
    client.create_model(SPEC)
    with sent.counting() as tally:
        client.create_model(SPEC, name="counted")
    check(tally, "CreateModel")


def test_predict_of_a_cached_model_asks_only_its_current_version(client: Client, sent: Sent) -> None:
    model = trained(client)
    model.predict(X[:2])  # built and cached
    with sent.counting() as tally:
        model.predict(X[:2])
    check(tally, "Predict")


def test_get_run(client: Client, sent: Sent) -> None:
    model = client.create_model(SPEC)
    run = model.start_run(X, Y, epochs=1, batch_size=32)
    run.wait()
    with sent.counting() as tally:
        client.call("GetRun", pb.GetRunRequest(run_id=run.id))
    check(tally, "GetRun")


@pytest.fixture
def fifty_runs(client: Client) -> Model:
    model = client.create_model(SPEC)
    for _ in range(50):
        model.fit(X[:8], Y[:8], epochs=1, batch_size=8)
    return model


def test_list_runs_of_fifty(client: Client, sent: Sent, fifty_runs: Model) -> None:
    with sent.counting() as tally:
        answer = client.call("ListRuns", pb.ListRunsRequest(model_id=fifty_runs.id, page_size=50))
    assert len(answer.runs) == 50
    check(tally, "ListRuns")


def test_training_history_of_fifty(client: Client, sent: Sent, fifty_runs: Model) -> None:
    with sent.counting() as tally:
        answer = client.call("GetTrainingHistory", pb.GetTrainingHistoryRequest(model_id=fifty_runs.id))
    assert len(answer.runs) == 50
    check(tally, "GetTrainingHistory")
