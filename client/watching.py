"""Following a run, written once as two state machines that do no I/O; each shell does the I/O.

Part of the core under both SDKs. :class:`Watch` is fed WatchRun's events and its lost
connections and says what to do next: yield an epoch, reconnect after a pause from the last epoch
seen, stop, or raise. :class:`Waiting` is fed the epochs and the run's ending and says who hears
each epoch, when to cancel, how long the next watch may take, whether to resume an interrupted
run, and the history (or :class:`RunFailedError`). :mod:`.sdk` and :mod:`.aio` only open streams,
call the listeners and sleep.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.vocabulary import RunStatus

from . import calls
from .errors import RunFailedError, raise_typed
from .records import History, RunInfo

PROGRESS_WIDTH = 20
Epoch = dict[str, Any]
EpochCallback = Callable[[Epoch], bool | None]
Listener = Callable[[Epoch], Any]
Clock = Callable[[], float]


def print_progress(epoch: dict[str, Any], stream: Any = None) -> None:
    """A progress bar line per epoch: loss, validation loss, metric, learning rate, time left."""
    total = epoch["epochs_planned"]
    done = round(PROGRESS_WIDTH * epoch["epoch"] / total) if total else 0
    bar = f"[{'#' * done}{'.' * (PROGRESS_WIDTH - done)}]"
    parts = [bar, f"epoch {epoch['epoch']}/{total or '?'}", f"loss {epoch['train_loss']:.4f}"]
    if epoch["val_loss"] is not None:
        parts.append(f"val_loss {epoch['val_loss']:.4f}")
    metric = epoch["val_metric"] if epoch["val_metric"] is not None else epoch["train_metric"]
    parts += [
        f"{epoch['metric_name']} {metric:.4f}",
        f"lr {epoch['learning_rate']:.2e}",
        f"eta {epoch['eta']:.1f}s",
    ]
    print("  ".join(parts), file=stream or sys.stderr, flush=True)


@dataclass(frozen=True)
class Reconnect:
    """How a watch treats a server it cannot reach: it reconnects for up to ``seconds`` since
    the last epoch it saw, pausing ``pause`` seconds before each try."""

    seconds: float
    pause: float


class Watch:
    """One run's epochs through WatchRun, across lost connections.

    The shell asks :meth:`next_request` for a stream to open (None: the watch is over), feeds
    :meth:`hear` each event (an epoch to yield comes back; after the run's ending, :attr:`over`
    says to stop reading), and on a broken stream sleeps for what :meth:`lost` returns, which
    raises the typed error instead where reconnecting is pointless or has gone on too long. The
    run as the server describes it (its ending, or a stall: its lease unrenewed) goes to
    ``on_info`` as soon as it comes.
    """

    def __init__(
        self,
        run_id: str,
        after_epoch: int,
        reconnect: Reconnect,
        on_info: Callable[[RunInfo], object],
        clock: Clock = time.monotonic,
    ) -> None:
        self.run_id, self.cursor, self.reconnect = run_id, after_epoch, reconnect
        self.on_info, self.clock = on_info, clock
        self.over = False
        self._connect = True
        self._lost_since: float | None = None

    def next_request(self) -> pb.WatchRunRequest | None:
        """The request for the next stream: the first, or one after a lost connection, from the
        last epoch seen; None once a stream ended (the run's ending came, or the server closed it)."""
        if self.over or not self._connect:
            return None
        self._connect = False
        return calls.watch_run(self.run_id, self.cursor)

    def hear(self, event: pb.RunEvent) -> list[dict[str, Any]]:
        """The epochs ``event`` carries, to yield, in order; none for a run described (its ending
        or a stall)."""
        return self._HEARD.get(event.WhichOneof("event") or "", Watch._progress)(self, event)

    def _progress(self, event: pb.RunEvent) -> list[dict[str, Any]]:
        return self._epochs([event.progress])

    def _together(self, event: pb.RunEvent) -> list[dict[str, Any]]:
        return self._epochs(event.epochs.epochs)

    def _epochs(self, progress: Iterable[pb.EpochProgress]) -> list[dict[str, Any]]:
        epochs = [codec.epoch_to_dict(message) for message in progress]
        if epochs:
            self.cursor, self._lost_since = epochs[-1]["epoch"], None
        return epochs

    def _stalled(self, event: pb.RunEvent) -> list[dict[str, Any]]:
        self.on_info(RunInfo.from_proto(event.stalled))  # its server is likely gone: the run waits
        return []

    def _result(self, event: pb.RunEvent) -> list[dict[str, Any]]:
        self.on_info(RunInfo.from_proto(event.result))
        self.over = True
        return []

    _HEARD: ClassVar[dict[str, Callable[[Watch, pb.RunEvent], list[dict[str, Any]]]]] = {
        "progress": _progress,
        "epochs": _together,
        "stalled": _stalled,
        "result": _result,
    }

    def lost(self, error: grpc.RpcError) -> float:
        """The pause before reconnecting after a stream broke with ``error``: where the server
        could not be reached (UNAVAILABLE) for no longer than :attr:`reconnect` allows since the
        last epoch; anything else (a deadline, a refusal) raises its typed error."""
        now = self.clock()
        self._lost_since = now if self._lost_since is None else self._lost_since
        if error.code() != grpc.StatusCode.UNAVAILABLE or now - self._lost_since > self.reconnect.seconds:
            raise_typed(error)
        self._connect = True
        return self.reconnect.pause


def listening(callbacks: Sequence[Listener], progress: bool) -> tuple[Listener, ...]:
    """Who hears each epoch: the callbacks, and a progress bar if asked for."""
    return (*callbacks, print_progress) if progress else tuple(callbacks)


class Waiting:
    """A run followed to its end by watches, one after another.

    The shell watches from :attr:`cursor` for up to :meth:`left` seconds, passes each epoch to
    :meth:`hear` and calls the listeners it returns, cancels the run when :meth:`stop` says so,
    and once a watch ends asks :meth:`resumes` whether to resume the run (interrupted, and
    resumes left) and watch again, else takes :meth:`result`. A watch past the deadline raises
    DeadlineExceededError; the shell then cancels the run and lets it through.
    """

    def __init__(
        self,
        run_id: str,
        listeners: tuple[Listener, ...],
        timeout: float | None,
        resume: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.history = History(run_id=run_id)
        self.listeners, self.resumes_left, self.clock = listeners, resume, clock
        self.deadline = None if timeout is None else clock() + timeout
        self.cancelled = False

    @property
    def cursor(self) -> int:
        """The last epoch heard (0: none): where the next watch starts."""
        return int(self.history.epochs[-1]["epoch"]) if self.history.epochs else 0

    def left(self) -> float | None:
        """Seconds left before the deadline (None: no deadline), never quite zero, so a watch
        started at the deadline still ends with DEADLINE_EXCEEDED rather than waiting forever."""
        return None if self.deadline is None else max(self.deadline - self.clock(), 0.001)

    def hear(self, epoch: dict[str, Any]) -> tuple[Listener, ...]:
        """Keep ``epoch``; the listeners that hear it: every one, but none once the run was
        cancelled (epochs that ran before the cancel took effect are kept, not announced)."""
        self.history.epochs.append(epoch)
        return () if self.cancelled else self.listeners

    def stop(self, answers: Sequence[object]) -> bool:
        """Whether to cancel the run now: a listener answered ``True`` (once only)."""
        if not any(answers):
            return False
        self.cancelled = True
        return True

    def resumes(self, run: RunInfo) -> bool:
        """Whether to resume the run as the watch left it: interrupted, with resumes left."""
        if run.status != RunStatus.INTERRUPTED or self.resumes_left <= 0:
            return False
        self.resumes_left -= 1
        return True

    def result(self, run: RunInfo, transfer_seconds: float) -> History:
        """The history of the run as it ended; RunFailedError for a failed one."""
        if run.status == RunStatus.FAILED:
            raise RunFailedError(run)
        return self.history.close(run, transfer_seconds)
