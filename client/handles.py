"""What a client, a model handle and a run handle hold, the same in both shells.

Part of the core under both SDKs: the sync :class:`~gradwire.client.Client` and the asyncio
:class:`~gradwire.client.AsyncClient` (and their models and runs) are these classes plus the
methods that do I/O, each with ``grpc`` or with ``grpc.aio``. Settings, the connection, the retry
and reconnect policies and the state machines of :mod:`.watching` are made here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from gradwire.v1 import gradwire_pb2_grpc as pb_grpc
from gradwire.v1.answers import Prediction

from .connection import TLS, Connection
from .errors import ClientClosedError
from .records import ModelInfo, RunInfo
from .retry import Retry
from .watching import Listener, Reconnect, Waiting, Watch, listening

ChannelT = TypeVar("ChannelT")
ClientT = TypeVar("ClientT", bound="ClientCore[Any]")


class ClientCore(Generic[ChannelT]):
    """A client's settings and channel. A shell opens the channel (:meth:`_open`) and does the
    calls; :attr:`retry` and :attr:`reconnect` are read from the settings at each use, so a
    changed ``client.retries`` or ``client.backoff`` takes effect at the next call."""

    kind: ClassVar[str] = "Client"
    """The class's name as its messages say it."""

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_message_mb: int = 512,
        reconnect_seconds: float = 60.0,
        channel: ChannelT | None = None,
        tls: TLS | None = None,
        token: str | None = None,
        insecure: bool | None = None,
    ) -> None:
        self._bind()
        to = Connection.of(address, tls, token, insecure, max_message_mb)
        self.address, self.tls = to.address, to.tls
        self.channel: ChannelT = channel or self._open(to)
        self.stub = pb_grpc.TrainerStub(self.channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.reconnect_seconds = reconnect_seconds
        self._closed = False

    def _bind(self) -> None:
        """Done first of all (the asyncio shell notes the event loop it is made in)."""

    def _open(self, to: Connection) -> ChannelT:
        """The channel to ``to``, made by the shell's gRPC."""
        raise NotImplementedError

    @property
    def retry(self) -> Retry:
        return Retry(self.retries, self.backoff)

    @property
    def reconnect(self) -> Reconnect:
        return Reconnect(self.reconnect_seconds, self.backoff)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(f"this gradwire {self.kind} was closed; create a new one")


class ModelCore(Generic[ClientT]):
    """A model handle's state: its client and the model as last seen."""

    def __init__(self, client: ClientT, info: ModelInfo) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def dtype(self) -> str:
        return str(self.info.spec["dtype"])

    def _labels(self, prediction: Prediction) -> np.ndarray:
        """A prediction's class labels; a ValueError for a model that is not a classifier."""
        if prediction.labels is None:
            raise ValueError(f"model {self.id} is not a classifier (loss {self.info.spec['loss']})")
        return prediction.labels


class RunCore(Generic[ClientT]):
    """A run handle's state: its client, the run as last seen, the seconds its data took to send."""

    def __init__(self, client: ClientT, info: RunInfo, transfer_seconds: float = 0.0) -> None:
        self.client, self.info, self.transfer_seconds = client, info, transfer_seconds

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    def _took(self, info: RunInfo) -> RunInfo:
        self.info = info
        return info

    def _watch(self, after_epoch: int) -> Watch:
        """A watch from ``after_epoch`` that keeps :attr:`info` current as the server describes the run."""
        return Watch(self.id, after_epoch, self.client.reconnect, self._took)

    def _waiting(
        self, callbacks: Sequence[Listener], progress: bool, timeout: float | None, resume: int
    ) -> Waiting:
        return Waiting(self.id, listening(callbacks, progress), timeout, resume)
