"""The watch and wait state machines of the SDK's core (gradwire.client.watching), fed by hand:
no server, no channel, a clock that moves only when the test moves it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from gradwire.client import DeadlineExceededError, NotFoundError, RunFailedError, RunInfo, UnavailableError
from gradwire.client.calls import EPOCHS_PER_EVENT
from gradwire.client.watching import Reconnect, Waiting, Watch
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.vocabulary import RunStatus

RECONNECT = Reconnect(seconds=10.0, pause=0.5)


class Clock:
    """Seconds that pass when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Broken(grpc.RpcError):
    """A stream that broke with ``code``, as grpc raises it (no status details)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"broken: {self._code.name}"

    def trailing_metadata(self) -> None:
        return None


def progress(epoch: int) -> pb.RunEvent:
    return pb.RunEvent(progress=pb.EpochProgress(epoch=epoch, train_loss=1.0 / epoch))


def together(*epochs: int) -> pb.RunEvent:
    """Several epochs in one event, as a server sends them to a watch that asks for it."""
    return pb.RunEvent(epochs=pb.EpochBatch(epochs=[progress(epoch).progress for epoch in epochs]))


def numbers(epochs: list[dict[str, Any]]) -> list[int]:
    return [epoch["epoch"] for epoch in epochs]


def request(after_epoch: int) -> pb.WatchRunRequest:
    return pb.WatchRunRequest(run_id="r1", after_epoch=after_epoch, max_epochs_per_event=EPOCHS_PER_EVENT)


def run(status: str, **fields: Any) -> pb.Run:
    return pb.Run(run_id="r1", model_id="m1", status=status, **fields)


def watch(clock: Clock, after_epoch: int = 0) -> tuple[Watch, list[RunInfo]]:
    told: list[RunInfo] = []
    return Watch("r1", after_epoch, RECONNECT, told.append, clock), told


def test_a_watch_yields_epochs_notes_a_stall_and_stops_at_the_runs_ending() -> None:
    w, told = watch(Clock(), after_epoch=2)
    assert w.next_request() == request(after_epoch=2)
    assert numbers(w.hear(progress(3))) == [3]
    assert w.hear(pb.RunEvent(stalled=run(RunStatus.RUNNING))) == []
    assert (w.over, [info.status for info in told]) == (False, [RunStatus.RUNNING])  # the watch goes on
    assert numbers(w.hear(progress(4))) == [4]
    assert w.hear(pb.RunEvent(result=run(RunStatus.COMPLETED))) == []
    assert w.over  # stop reading
    assert told[-1].status == RunStatus.COMPLETED
    assert w.next_request() is None


def test_epochs_that_come_together_are_yielded_in_order_and_move_the_cursor_to_the_last() -> None:
    w, _ = watch(Clock())
    assert w.next_request() == request(after_epoch=0)  # it asks for epochs together
    assert numbers(w.hear(together(1, 2, 3))) == [1, 2, 3]
    assert numbers(w.hear(progress(4))) == [4]  # a server that sends one at a time is understood too
    assert w.hear(together()) == []  # nothing in it: the cursor stays
    w.lost(Broken(grpc.StatusCode.UNAVAILABLE))
    assert w.next_request() == request(after_epoch=4)


def test_a_stream_that_ends_without_the_runs_ending_ends_the_watch() -> None:
    w, told = watch(Clock())
    assert w.next_request() is not None
    assert numbers(w.hear(progress(1))) == [1]
    assert w.next_request() is None  # the server closed the stream: no reconnect
    assert told == []


def test_a_lost_connection_reconnects_from_the_last_epoch_seen_after_a_pause() -> None:
    clock = Clock()
    w, _ = watch(clock)
    w.next_request()
    w.hear(progress(1))
    w.hear(progress(2))
    assert w.lost(Broken(grpc.StatusCode.UNAVAILABLE)) == RECONNECT.pause
    assert w.next_request() == request(after_epoch=2)
    assert w.next_request() is None  # one stream at a time: the next only after it ends or breaks


def test_reconnecting_gives_up_once_no_epoch_came_for_reconnect_seconds() -> None:
    clock = Clock()
    w, _ = watch(clock)
    w.next_request()
    w.lost(Broken(grpc.StatusCode.UNAVAILABLE))
    clock.now += RECONNECT.seconds  # at the limit: one more try
    assert w.lost(Broken(grpc.StatusCode.UNAVAILABLE)) == RECONNECT.pause
    w.hear(progress(1))  # an epoch came: the window starts again at the next loss
    clock.now += 5
    w.lost(Broken(grpc.StatusCode.UNAVAILABLE))
    clock.now += RECONNECT.seconds + 0.1
    unavailable = Broken(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(UnavailableError) as info:
        w.lost(unavailable)
    assert info.value.__cause__ is unavailable


@pytest.mark.parametrize(
    ("code", "error"),
    [(grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError), (grpc.StatusCode.NOT_FOUND, NotFoundError)],
)
def test_a_deadline_or_a_refusal_is_raised_typed_without_reconnecting(
    code: grpc.StatusCode, error: type[Exception]
) -> None:
    w, _ = watch(Clock())
    w.next_request()
    with pytest.raises(error):
        w.lost(Broken(code))
    assert w.next_request() is None


# ------------------------------------------------------------------------------------ waiting


def epoch(number: int) -> dict[str, Any]:
    return {"epoch": number}


def test_waiting_announces_each_epoch_until_a_listener_cancels_and_keeps_them_all() -> None:
    heard: list[int] = []

    def listener(e: dict[str, Any]) -> bool:
        heard.append(e["epoch"])
        return e["epoch"] == 2

    waiting = Waiting("r1", (listener,), timeout=None, resume=0, clock=Clock())
    assert waiting.cursor == 0
    stops = [waiting.stop([answer(e) for answer in waiting.hear(e)]) for e in map(epoch, (1, 2, 3))]
    assert stops == [False, True, False]  # cancel once, at the epoch a listener asked
    assert heard == [1, 2]  # epoch 3 ran before the cancel took effect: kept, not announced
    assert waiting.cursor == 3
    history = waiting.result(RunInfo.from_proto(run(RunStatus.CANCELLED, version=4)), 0.5)
    assert ([e["epoch"] for e in history.epochs], history.status, history.version) == (
        [1, 2, 3],
        "cancelled",
        4,
    )


def test_waiting_resumes_an_interrupted_run_as_often_as_allowed() -> None:
    waiting = Waiting("r1", (), timeout=None, resume=2, clock=Clock())
    interrupted = RunInfo.from_proto(run(RunStatus.INTERRUPTED))
    assert [waiting.resumes(interrupted) for _ in range(3)] == [True, True, False]
    assert not Waiting("r1", (), None, 2, Clock()).resumes(RunInfo.from_proto(run(RunStatus.COMPLETED)))


def test_waiting_raises_for_a_failed_run() -> None:
    waiting = Waiting("r1", (), timeout=None, resume=3, clock=Clock())
    failed = RunInfo.from_proto(run(RunStatus.FAILED, stop_reason="out_of_memory", error="too big"))
    assert not waiting.resumes(failed)
    with pytest.raises(RunFailedError) as info:
        waiting.result(failed, 0.0)
    assert (info.value.reason, info.value.run) == ("out_of_memory", failed)


def test_waiting_gives_each_watch_the_time_left_before_the_deadline() -> None:
    clock = Clock()
    waiting = Waiting("r1", (), timeout=30.0, resume=3, clock=clock)
    assert waiting.left() == 30.0
    clock.now += 20
    assert waiting.left() == 10.0
    clock.now += 20  # past it: a watch still starts, and ends DEADLINE_EXCEEDED at once
    assert waiting.left() == 0.001
    assert Waiting("r1", (), timeout=None, resume=3, clock=clock).left() is None
