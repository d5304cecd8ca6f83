"""The Python SDK: NumPy in, NumPy out, typed errors, progress, durable runs.

>>> with Client("127.0.0.1:50051") as client:                          # doctest: +SKIP
...     model = client.create_model(spec, name="spirals")
...     history = model.fit(X, Y, epochs=50, optimizer="adam", validation_split=0.2, progress=True)
...     probabilities = model.predict(X)
...     run = model.start_run(X, Y, epochs=5000)     # detached: returns at once
...     run.id                                        # keep it; client.run(run_id).wait() later
...     weights = model.export()                      # {"0.W": array, ...}
...     model.export_onnx("model.onnx")               # runs in onnxruntime, answers as predict
...     copy = other_client.import_model(model.info.spec, weights, name="copy")

Every call has a deadline (``timeout``, 30 s by default; training has none unless given).
Reads (GetModel, ListModels, Predict, ...) are retried on UNAVAILABLE with exponential backoff,
and so are CreateModel, ImportModel, StartRun and UploadDataset, which carry a request id that makes the
server do them once. Watching a run reconnects after a lost connection from the last epoch it
saw, and resumes the run if the server restarted under it. The raw stub stays reachable as
:attr:`Client.stub`.

The channel is plaintext unless :class:`TLS` says otherwise (given, or from ``GRADWIRE_TLS_CA_FILE``,
``GRADWIRE_CLIENT_CERT_FILE`` and ``GRADWIRE_CLIENT_KEY_FILE``). A ``token`` (or ``GRADWIRE_TOKEN``)
goes with every call, streams included, as ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc
from gradwire.v1.answers import Gradients, Prediction
from gradwire.v1.digest import array_id, little_endian, weights_digest
from gradwire.v1.digest import raw as raw_bytes
from gradwire.v1.vocabulary import FINISHED, RunStatus

from .errors import (
    ClientClosedError,
    DeadlineExceededError,
    FailedPreconditionError,
    GradwireError,
    RunFailedError,
    UnavailableError,
    from_rpc_error,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_ADDRESS = "127.0.0.1:50051"
MiB = 1 << 20
RETRIED = frozenset(
    {
        "GetModel",
        "ListModels",
        "Predict",
        "GetGradients",
        "GetTrainingHistory",
        "GetDataset",
        "ListDatasets",
        "GetRun",
        "ListRuns",
        "CancelRun",
        "ResumeRun",
        "CreateModel",
        "ImportModel",
        "StartRun",
    }
)
"""Calls retried on UNAVAILABLE: reads, idempotent changes, and creations that carry a request id."""
UPLOAD_CHUNK = MiB - 4096
"""Bytes per upload message: about 1 MiB, with room for the message around them under a 1 MiB limit."""
INLINE_LIMIT = 4 * MiB
"""Training data up to this size (all arrays together) travels inside StartRun; larger is uploaded."""
PROGRESS_WIDTH = 20
TLS_VARIABLES = {
    "ca_file": "GRADWIRE_TLS_CA_FILE",
    "cert_file": "GRADWIRE_CLIENT_CERT_FILE",
    "key_file": "GRADWIRE_CLIENT_KEY_FILE",
}
"""The environment variables a client's TLS reads, by field (the server's own certificate is
GRADWIRE_TLS_CERT_FILE, hence other names here)."""
TOKEN_VARIABLE = "GRADWIRE_TOKEN"
INSECURE_VARIABLE = "GRADWIRE_INSECURE"
"""True (1, yes, on): a token may go in plaintext beyond this machine (a network you trust)."""
LOCAL_SCHEMES = ("unix:", "unix-abstract:")

R = TypeVar("R")
EpochCallback = Callable[[dict[str, Any]], bool | None]


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    spec: dict[str, Any]
    version: int
    parameter_count: int
    classifier: bool
    training: bool
    created_at: datetime
    updated_at: datetime
    active_run_id: str = ""

    @classmethod
    def from_proto(cls, m: pb.Model) -> ModelInfo:
        return cls(
            m.model_id,
            m.name,
            codec.spec_to_dict(m.spec),
            m.version,
            m.parameter_count,
            m.classifier,
            m.training,
            m.created_at.ToDatetime(),
            m.updated_at.ToDatetime(),
            m.active_run_id,
        )


@dataclass(frozen=True)
class DatasetInfo:
    id: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    created_at: datetime

    @classmethod
    def from_proto(cls, d: pb.Dataset) -> DatasetInfo:
        dtype = codec.FLOAT_DTYPE_NAMES.get(d.dtype, "")
        return cls(d.dataset_id, d.name, dtype, tuple(d.shape), d.nbytes, d.created_at.ToDatetime())


@dataclass(frozen=True)
class RunInfo:
    """A run as the server last described it (see ``Run`` in the contract)."""

    id: str
    model_id: str
    status: str
    stop_reason: str
    error: str
    datasets: dict[str, str]
    base_version: int
    version: int
    best_epoch: int
    best_loss: float | None
    epochs_done: int
    epochs_planned: int
    attempts: int
    receipt: dict[str, Any]
    load_seconds: float
    train_seconds: float
    rows: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None  # while running; in the past: its server is gone

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_proto(cls, r: pb.Run) -> RunInfo:
        receipt: dict[str, Any] = {}
        if r.HasField("receipt"):
            receipt = {f.name: getattr(r.receipt, f.name) for f in r.receipt.DESCRIPTOR.fields}
            receipt["datasets"] = dict(r.receipt.datasets)
        return cls(
            r.run_id,
            r.model_id,
            r.status,
            r.stop_reason,
            r.error,
            dict(r.datasets),
            r.base_version,
            r.version,
            r.best_epoch,
            r.best_loss if r.HasField("best_loss") else None,
            r.epochs_done,
            r.epochs_planned,
            r.attempts,
            receipt,
            r.load_seconds,
            r.train_seconds,
            r.rows,
            codec.options_to_dict(r.options),
            r.cancel_requested,
            _moment(r, "created_at"),
            _moment(r, "started_at"),
            _moment(r, "finished_at"),
            _moment(r, "lease_expires_at"),
        )


@dataclass(frozen=True)
class Exported:
    """What :meth:`Model.exported` gives: the version, its arrays by name, their SHA-256 digest."""

    version: int
    arrays: dict[str, np.ndarray]
    sha256: str


@dataclass
class History:
    """A training run: its per-epoch records and how it ended (like Keras's ``History``)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    status: str = ""
    stop_reason: str = ""
    best_epoch: int = 0
    best_loss: float = float("nan")
    version: int = 0
    transfer_seconds: float = 0.0
    train_seconds: float = 0.0
    receipt: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> dict[str, list[float | None]]:
        """Per-epoch series: ``loss``, ``val_loss``, the metric, ``val_`` + metric, ``lr``."""
        metric = self.epochs[0]["metric_name"] if self.epochs else "metric"
        return {
            "loss": [e["train_loss"] for e in self.epochs],
            "val_loss": [e["val_loss"] for e in self.epochs],
            metric: [e["train_metric"] for e in self.epochs],
            f"val_{metric}": [e["val_metric"] for e in self.epochs],
            "lr": [e["learning_rate"] for e in self.epochs],
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """The run drawn: loss, metric, learning rate, and each layer's gradient norm over the
        epochs as a heatmap (:func:`gradwire.client.views.plot_history`); saved as ``path`` when
        given (PNG, or the format its suffix names). Needs matplotlib: ``gradwire[plot]``."""
        from .views import plot_history  # matplotlib is imported there, when a plot is drawn

        return plot_history(self, path)

    def to_frame(self) -> Any:
        """The epochs as a pandas DataFrame indexed by epoch, a ``grad_norm:<layer>`` column per
        layer (:func:`gradwire.client.views.history_frame`). Needs pandas."""
        from .views import history_frame

        return history_frame(self)

    def close(self, run: RunInfo, transfer_seconds: float = 0.0) -> History:
        """Take the run's ending into this history."""
        self.run_id, self.status, self.stop_reason = run.id, run.status, run.stop_reason
        self.best_epoch, self.version, self.receipt = run.best_epoch, run.version, run.receipt
        self.best_loss = float("nan") if run.best_loss is None else run.best_loss
        self.transfer_seconds = transfer_seconds + run.load_seconds
        self.train_seconds = run.train_seconds
        return self

    @classmethod
    def from_run(cls, run: pb.TrainingRun) -> History:
        return cls(
            [codec.epoch_to_dict(e) for e in run.epochs],
            run.run_id,
            run.status,
            run.stop_reason,
            run.best_epoch,
            version=run.version,
        )


def _moment(message: Any, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime() if message.HasField(name) else None


def _array(name: str, value: Any, dtype: str) -> np.ndarray:
    """``value`` as a 2-D array of the model's dtype, or a ValueError saying what was expected."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows, columns), got shape {array.shape}")
    return np.ascontiguousarray(array, np.dtype(dtype))


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


OPTIMIZER_KEYS = frozenset({"momentum", "beta1", "beta2", "epsilon", "rho", "weight_decay"})
"""start_run's options that belong to the optimiser; the others are TrainOptions'."""


def run_settings(
    epochs: int,
    batch_size: int,
    optimizer: str,
    learning_rate: float | None,
    validation_split: float,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """start_run's Keras-like arguments as TrainOptions in the engine's JSON form."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "validation_fraction": validation_split or None,
        "optimizer": {
            "name": optimizer,
            "learning_rate": learning_rate,
            **{k: v for k, v in options.items() if k in OPTIMIZER_KEYS},
        },
        **{k: v for k, v in options.items() if k not in OPTIMIZER_KEYS},
    }


def run_data(x: Any, y: Any, validation_data: tuple[Any, Any] | None) -> dict[str, Any]:
    """A run's data by role."""
    data = {"inputs": x, "targets": y}
    if validation_data is not None:
        data |= {"validation_inputs": validation_data[0], "validation_targets": validation_data[1]}
    return data


def _request_id(given: str | None) -> str:
    """The caller's request id, or a fresh one: every creating call carries one, so retrying it is safe."""
    return given or uuid.uuid4().hex


@dataclass(frozen=True)
class TLS:
    """How a client's channel is secured: PEM files, read when the client is made.

    ``ca_file``: the root certificates that signed the server's (empty: gRPC's own roots, for a
    publicly signed server). ``cert_file`` and ``key_file``: the client's certificate and key,
    for a server that asks for one (mutual TLS); both or neither.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("TLS: give cert_file and key_file (a client certificate and its key) or neither")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TLS | None:
        """TLS from ``GRADWIRE_TLS_CA_FILE``, ``GRADWIRE_CLIENT_CERT_FILE`` and
        ``GRADWIRE_CLIENT_KEY_FILE``; None (plaintext) when none of them is set."""
        env = os.environ if env is None else env
        given = {name: env.get(variable, "") for name, variable in TLS_VARIABLES.items()}
        return cls(**given) if any(given.values()) else None

    def credentials(self) -> grpc.ChannelCredentials:
        pem = {name: _read_pem(name, getattr(self, name)) for name in TLS_VARIABLES}
        return grpc.ssl_channel_credentials(
            root_certificates=pem["ca_file"], private_key=pem["key_file"], certificate_chain=pem["cert_file"]
        )


def _read_pem(name: str, path: str) -> bytes | None:
    """The file's bytes (None for no file), or a ValueError naming it: a bad path is the caller's."""
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"TLS {name} {path}: cannot read it: {exc.strerror or exc}") from exc


def _loopback(target: str) -> bool:
    """Whether every address of ``target`` (``host:port``, ``[::1]:port``, ``unix:path``, or
    several: ``ipv4:127.0.0.1:1,127.0.0.1:2``) stays on this machine."""
    if target.startswith(LOCAL_SCHEMES):
        return True
    addresses = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").split(",")
    return all(_loopback_host(address.rsplit(":", 1)[0].strip("[]")) for address in addresses)


def _loopback_host(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


BALANCED = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""The channel's service config: calls go round the addresses the target resolves to (a DNS name's
records, or the addresses given), each a replica of one service, skipping those that are down."""


def grpc_target(address: str | Sequence[str]) -> str:
    """The gRPC target of one server address or several replicas' (a list, or one string of
    comma-separated ``host:port``): one is used as it is (a DNS name is resolved, and re-resolved,
    by gRPC, and calls are balanced over its records); several become one ``ipv4:``/``ipv6:``
    target, each host name resolved once, now."""
    given = address.split(",") if isinstance(address, str) else list(address)
    addresses = [a.strip() for a in given if a.strip()]
    if len(addresses) <= 1:
        return addresses[0] if addresses else DEFAULT_ADDRESS
    hosts = [_resolve(a) for a in addresses]
    families = {":" in host for host, _ in hosts}
    if len(families) > 1:
        raise ValueError(f"the addresses {addresses} mix IPv4 and IPv6: give one kind")
    if families == {True}:
        return "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in hosts)
    return "ipv4:" + ",".join(f"{host}:{port}" for host, port in hosts)


def _server_name(address: str | Sequence[str], tls: TLS | None) -> list[tuple[str, int | str]]:
    """Over TLS, replicas given by name are checked against that name, not the addresses it
    resolved to; so several addresses must be one name (``a.example:1,a.example:2``)."""
    given = [a.strip() for a in (address.split(",") if isinstance(address, str) else address) if a.strip()]
    if tls is None or len(given) <= 1:
        return []
    hosts = {a.rpartition(":")[0].strip("[]") for a in given}
    if len(hosts) != 1:
        raise ValueError(
            f"over TLS, replicas are one host name with a certificate for it, not {sorted(hosts)}"
        )
    return [("grpc.ssl_target_name_override", hosts.pop())]


def _resolve(address: str) -> tuple[str, str]:
    """``host:port`` as an IP address and the port (IPv4 first where the name has both)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return str(socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)[0][4][0]), port
        except socket.gaierror:
            continue
    raise ValueError(f"{address!r}: the host name {host!r} resolves to no address")


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str], ...]
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _Metadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``metadata`` to every call, of all four kinds. It carries the token on a plaintext
    channel, where gRPC refuses call credentials (they are meant for secure channels)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        given = tuple(details.metadata or ())
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                given + self.metadata,
                details.credentials,
                details.wait_for_ready,
                getattr(details, "compression", None),
            ),
            request,
        )

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary  # the request is an iterator: passed on as it is
    intercept_stream_stream = intercept_unary_unary


def _channel(
    address: str, tls: TLS | None, token: str, options: list[tuple[str, int | str]], insecure: bool = False
) -> grpc.Channel:
    """A secure channel (the token as call credentials), or a plaintext one (the token, to a
    loopback address only unless ``insecure``, added by :class:`_Metadata`: anywhere else it
    would travel readable)."""
    if tls is not None:
        credentials = tls.credentials()
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.secure_channel(address, credentials, options=options)
    if token and not insecure and not _loopback(address):
        raise ValueError(
            f"a token goes over TLS only (or in plaintext to this machine), and {address} is "
            f"neither: give tls (or {TLS_VARIABLES['ca_file']}), or insecure=True "
            f"({INSECURE_VARIABLE}=true) on a network you trust"
        )
    channel = grpc.insecure_channel(address, options=options)
    if not token:
        return channel
    return grpc.intercept_channel(channel, _Metadata((("authorization", f"Bearer {token}"),)))


@dataclass(frozen=True)
class Connection:
    """Where a client connects and how: its arguments, the environment filling those not given."""

    address: str
    tls: TLS | None
    token: str
    insecure: bool
    options: list[tuple[str, int | str]]

    @classmethod
    def of(
        cls,
        address: str | Sequence[str] | None,
        tls: TLS | None,
        token: str | None,
        insecure: bool | None,
        max_message_mb: int,
    ) -> Connection:
        if insecure is None:
            insecure = os.environ.get(INSECURE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")
        given = address or os.environ.get("GRADWIRE_SERVER", DEFAULT_ADDRESS)
        tls = tls or TLS.from_env()
        return cls(
            grpc_target(given),
            tls,
            os.environ.get(TOKEN_VARIABLE, "") if token is None else token,
            insecure,
            [
                ("grpc.max_send_message_length", max_message_mb * MiB),
                ("grpc.max_receive_message_length", max_message_mb * MiB),
                ("grpc.service_config", BALANCED),
                *_server_name(given, tls),
            ],
        )


class Client:
    """A connection to a gradwire server; use it as a context manager.

    ``address`` defaults to ``GRADWIRE_SERVER``, else 127.0.0.1:50051. Several replicas of one
    service are one client: a list of addresses, or one string of them separated by commas
    (``GRADWIRE_SERVER`` too), or a DNS name with a record for each; calls are balanced over them
    (gRPC's ``round_robin``), and a replica that goes away is skipped. ``reconnect_seconds``
    bounds how long watching a run keeps reconnecting (to another replica, where there is one)
    to a server that cannot be reached, from the last epoch it saw.

    ``tls`` secures the channel (default: :meth:`TLS.from_env`, which is None, plaintext, when no
    ``GRADWIRE_TLS_CA_FILE``/``GRADWIRE_CLIENT_*`` variable is set). ``token`` (default
    ``GRADWIRE_TOKEN``; empty: none) is sent with every call as ``authorization: Bearer <token>``;
    in plaintext only to a loopback address, unless ``insecure`` (default ``GRADWIRE_INSECURE``)
    says the network is trusted. All three are for the channel the client makes: a
    ``channel`` given is used as it is. A file that cannot be read raises ValueError, naming it.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_message_mb: int = 512,
        reconnect_seconds: float = 60.0,
        channel: grpc.Channel | None = None,
        tls: TLS | None = None,
        token: str | None = None,
        insecure: bool | None = None,
    ) -> None:
        to = Connection.of(address, tls, token, insecure, max_message_mb)
        self.address, self.tls = to.address, to.tls
        self.channel = channel or _channel(to.address, to.tls, to.token, to.options, to.insecure)
        self.stub = pb_grpc.TrainerStub(self.channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.reconnect_seconds = reconnect_seconds
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.channel.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this gradwire Client was closed; create a new one")

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call by RPC name, with the deadline, retries and typed errors."""
        self._check_open()
        attempts = 1 + (self.retries if method in RETRIED else 0)
        for attempt in range(attempts):
            try:
                return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise from_rpc_error(error) from error
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ models

    def create_model(self, spec: Mapping[str, Any], name: str = "", request_id: str | None = None) -> Model:
        """A new model from a spec in the engine's JSON form (``NetworkSpec.to_dict()``)."""
        request = pb.CreateModelRequest(
            name=name, spec=codec.spec_from_dict(spec), request_id=_request_id(request_id)
        )
        return Model(self, ModelInfo.from_proto(self.call("CreateModel", request)))

    def import_model(
        self,
        spec: Mapping[str, Any],
        weights: Mapping[str, Any] | bytes | str | os.PathLike[str],
        name: str = "",
        request_id: str | None = None,
    ) -> Model:
        """A new model (version 1) from a spec and its weights: arrays by name (what
        :meth:`Model.export` returns), or an ``.npz`` file's bytes or path (what ``gradwire
        export`` writes). The server checks every array against the spec: names, shapes,
        dtype, finite values."""
        data = _npz_bytes(weights)
        request = pb.ImportModelRequest(
            name=name, spec=codec.spec_from_dict(spec), weights=data, request_id=_request_id(request_id)
        )
        timeout = max(self.timeout, len(data) / MiB)  # a deadline that a link of 1 MiB/s still meets
        return Model(self, ModelInfo.from_proto(self.call("ImportModel", request, timeout)))

    def model(self, model_id: str) -> Model:
        return Model(self, ModelInfo.from_proto(self.call("GetModel", pb.GetModelRequest(model_id=model_id))))

    def list_models(self, page_size: int = 50) -> Iterator[ModelInfo]:
        """Every model, oldest first, fetched a page at a time."""
        for page in self._pages("ListModels", pb.ListModelsRequest(page_size=page_size)):
            yield from (ModelInfo.from_proto(m) for m in page.models)

    def delete_model(self, model_id: str) -> None:
        self.call("DeleteModel", pb.DeleteModelRequest(model_id=model_id))

    def _pages(self, method: str, request: Any) -> Iterator[Any]:
        while True:
            page = self.call(method, request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ------------------------------------------------------------------ datasets

    def upload_dataset(self, array: Any, name: str = "", request_id: str | None = None) -> DatasetInfo:
        """Store a 2-D float32 or float64 array on the server; returns its dataset. Data the
        server holds already (same content address) is not sent again."""
        data = little_endian(_float_array("array", array))
        existing = self.dataset_or_none(array_id(data))
        if existing is not None:
            return existing
        header = pb.DatasetHeader(
            name=name,
            dtype=codec.FLOAT_DTYPES[data.dtype.name],
            shape=data.shape,
            request_id=_request_id(request_id),
        )
        raw = raw_bytes(data)

        def messages() -> Iterator[pb.UploadDatasetRequest]:
            yield pb.UploadDatasetRequest(header=header)
            for start in range(0, len(raw), UPLOAD_CHUNK):
                yield pb.UploadDatasetRequest(chunk=bytes(raw[start : start + UPLOAD_CHUNK]))

        timeout = max(self.timeout, len(raw) / MiB)  # a deadline that a link of 1 MiB/s still meets
        return DatasetInfo.from_proto(
            self._with_retries(lambda: self.stub.UploadDataset(messages(), timeout=timeout))
        )

    def dataset(self, dataset_id: str) -> DatasetInfo:
        return DatasetInfo.from_proto(self.call("GetDataset", pb.GetDatasetRequest(dataset_id=dataset_id)))

    def dataset_or_none(self, dataset_id: str) -> DatasetInfo | None:
        try:
            return self.dataset(dataset_id)
        except GradwireError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def list_datasets(self, page_size: int = 50) -> Iterator[DatasetInfo]:
        for page in self._pages("ListDatasets", pb.ListDatasetsRequest(page_size=page_size)):
            yield from (DatasetInfo.from_proto(d) for d in page.datasets)

    def delete_dataset(self, dataset_id: str) -> None:
        self.call("DeleteDataset", pb.DeleteDatasetRequest(dataset_id=dataset_id))

    def _with_retries(self, send: Callable[[], R]) -> R:
        self._check_open()
        for attempt in range(1 + self.retries):
            try:
                return send()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise from_rpc_error(error) from error
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ runs

    def run(self, run_id: str) -> Run:
        return Run(self, RunInfo.from_proto(self.call("GetRun", pb.GetRunRequest(run_id=run_id))))

    def list_runs(
        self, model_id: str = "", statuses: tuple[str, ...] = (), page_size: int = 50
    ) -> Iterator[RunInfo]:
        request = pb.ListRunsRequest(model_id=model_id, statuses=statuses, page_size=page_size)
        for page in self._pages("ListRuns", request):
            yield from (RunInfo.from_proto(r) for r in page.runs)

    def healthy(self) -> bool:
        """Whether the server reports SERVING for the gradwire service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service="gradwire.v1.Trainer")
        try:
            reply = stub.Check(request, timeout=self.timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _npz_bytes(weights: Mapping[str, Any] | bytes | str | os.PathLike[str]) -> bytes:
    """``.npz`` bytes: given, read from a path, or written from arrays by name (numbers only:
    an object array would be pickled, and the server never unpickles)."""
    if isinstance(weights, bytes):
        return weights
    if isinstance(weights, str | os.PathLike):
        return Path(weights).read_bytes()
    arrays: dict[str, Any] = {name: np.asarray(value) for name, value in weights.items()}
    for name, array in arrays.items():
        if array.dtype.kind not in "fiub":
            raise ValueError(f"weights[{name!r}]: expected numbers, got dtype {array.dtype}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _float_array(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64) or array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D float32 or float64 array, got {array.dtype} {array.shape}")
    return array


class Run:
    """A handle on one run: follow it, wait for it, cancel or resume it."""

    def __init__(self, client: Client, info: RunInfo, transfer_seconds: float = 0.0) -> None:
        self.client, self.info, self.transfer_seconds = client, info, transfer_seconds

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    def refresh(self) -> RunInfo:
        self.info = RunInfo.from_proto(self.client.call("GetRun", pb.GetRunRequest(run_id=self.id)))
        return self.info

    def cancel(self) -> RunInfo:
        """Cancel it: a queued or interrupted run at once, a running one within a minibatch."""
        self.info = RunInfo.from_proto(self.client.call("CancelRun", pb.CancelRunRequest(run_id=self.id)))
        return self.info

    def resume(self) -> RunInfo:
        """Queue an interrupted run again (a queued or running one is left as it is)."""
        self.info = RunInfo.from_proto(self.client.call("ResumeRun", pb.ResumeRunRequest(run_id=self.id)))
        return self.info

    def epochs(self, after_epoch: int = 0, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The run's epochs after ``after_epoch``, committed ones first, then live ones, until it
        ends or is interrupted (then :attr:`info` holds how). Reconnects from the last epoch
        seen while the server cannot be reached, for up to ``client.reconnect_seconds`` (to
        another replica, where the client has several). While the run's lease goes unrenewed
        (its server died, and another takes it over when the lease runs out), :attr:`info`
        says so: ``status`` running, ``lease_expires_at`` in the past or close to it."""
        self.client._check_open()
        cursor, since = after_epoch, None
        while True:
            try:
                for event in self.client.stub.WatchRun(
                    pb.WatchRunRequest(run_id=self.id, after_epoch=cursor), timeout=timeout
                ):
                    if event.HasField("result"):
                        self.info = RunInfo.from_proto(event.result)
                        return
                    if event.HasField("stalled"):  # its server is likely gone: the run waits
                        self.info = RunInfo.from_proto(event.stalled)
                        continue
                    epoch = codec.epoch_to_dict(event.progress)
                    cursor, since = epoch["epoch"], None
                    yield epoch
                return
            except grpc.RpcError as error:
                since = since or time.monotonic()
                if (
                    error.code() != grpc.StatusCode.UNAVAILABLE
                    or time.monotonic() - since > self.client.reconnect_seconds
                ):
                    raise from_rpc_error(error) from error
                time.sleep(self.client.backoff)

    def wait(
        self,
        callbacks: tuple[EpochCallback, ...] = (),
        progress: bool = False,
        timeout: float | None = None,
        resume: int = 3,
    ) -> History:
        """Follow the run to its end; returns its :class:`History`. A callback returning ``True``
        cancels it (its best weights so far still become a version); the callbacks hear no epoch
        after that, though the history keeps those that ran meanwhile. An interrupted run is resumed
        up to ``resume`` times. Past ``timeout`` seconds the run is cancelled and
        :class:`DeadlineExceededError` raised. A failed run raises :class:`RunFailedError`."""
        listeners = (*callbacks, print_progress) if progress else callbacks
        deadline = None if timeout is None else time.monotonic() + timeout
        history = History(run_id=self.id)
        cancelled = False
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                for epoch in self.epochs(len(history.epochs) and history.epochs[-1]["epoch"], left):
                    history.epochs.append(epoch)
                    if cancelled:
                        continue  # epochs that ran before the cancel took effect: kept, not announced
                    answers = [listener(epoch) for listener in listeners]  # every listener hears every epoch
                    if any(answers):
                        self.cancel()
                        cancelled = True
            except DeadlineExceededError:
                _cancel_quietly(self)
                raise
            if self.info.status != RunStatus.INTERRUPTED or resume <= 0:
                break
            resume -= 1
            try:
                self.resume()
            except FailedPreconditionError:
                self.refresh()  # it ended meanwhile (cancelled, or resumed and done): watch its end
        if self.info.status == RunStatus.FAILED:
            raise RunFailedError(self.info)
        return history.close(self.info, self.transfer_seconds)


class Model:
    """A handle on one model of the server: fit, predict, gradients, export, history."""

    def __init__(self, client: Client, info: ModelInfo) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def dtype(self) -> str:
        return str(self.info.spec["dtype"])

    def refresh(self) -> ModelInfo:
        self.info = ModelInfo.from_proto(self.client.call("GetModel", pb.GetModelRequest(model_id=self.id)))
        return self.info

    def start_run(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 100,
        batch_size: int = 32,
        optimizer: str = "sgd",
        learning_rate: float | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        request_id: str | None = None,
        **options: Any,
    ) -> Run:
        """Queue a run and return at once (a detached run: keep ``run.id``, follow it later).

        ``x`` and ``y`` are arrays (sent inline when small, else uploaded once as datasets) or
        :class:`DatasetInfo` / dataset ids of uploaded ones. Keras-like arguments; ``options``
        takes the rest of TrainOptions (``seed``, ``shuffle``, ``patience``, ``min_delta``,
        ``loss_threshold``, ``clip_norm``, ``restore_best``, ``stratify``, ``schedule`` as a dict)
        and optimiser constants (``momentum``, ``beta1``, ``beta2``, ``epsilon``, ``rho``,
        ``weight_decay``).
        """
        started = time.perf_counter()
        settings = run_settings(epochs, batch_size, optimizer, learning_rate, validation_split, options)
        data = run_data(x, y, validation_data)
        request = pb.StartRunRequest(
            model_id=self.id, options=codec.options_from_dict(settings), request_id=_request_id(request_id)
        )
        self._sources(request, data)
        run = Run(self.client, RunInfo.from_proto(self.client.call("StartRun", request)))
        run.transfer_seconds = time.perf_counter() - started
        return run

    def _sources(self, request: pb.StartRunRequest, data: dict[str, Any]) -> None:
        """Fill the request's data: dataset ids as given, arrays inline when small, else uploaded."""
        arrays = {role: _array(role, v, self.dtype) for role, v in data.items() if not _is_dataset(v)}
        inline = sum(a.nbytes for a in arrays.values()) <= INLINE_LIMIT
        for role, value in data.items():
            source = getattr(request, role)
            if _is_dataset(value):
                source.dataset_id = value if isinstance(value, str) else value.id
            elif inline:
                codec.array_to_tensor(arrays[role], into=source.tensor)
            else:
                source.dataset_id = self.client.upload_dataset(arrays[role], name=role).id

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        callbacks: tuple[EpochCallback, ...] = (),
        progress: bool = False,
        timeout: float | None = None,
        **arguments: Any,
    ) -> History:
        """Train on ``(x, y)`` and wait for the end; returns the run's :class:`History`.

        Takes :meth:`start_run`'s arguments. A callback returning ``True`` cancels the run (the
        server commits the best weights so far). If this call is interrupted (an exception, Ctrl-C,
        ``timeout``), the run is cancelled too. The history is the run's own ending, as watching
        it delivered it: a server that stops once the run ended cannot take it away, and
        :attr:`info` then takes the run's version without asking the server.
        """
        run = self.start_run(x, y, **arguments)
        try:
            history = run.wait(callbacks, progress, timeout)
        except BaseException:
            _cancel_quietly(run)
            raise
        self._ended(run.info)
        return history

    def _ended(self, run: RunInfo) -> ModelInfo:
        """Bring :attr:`info` up to date after a run of this model ended: asked of the server, or,
        where it cannot answer (it stopped just after the run ended), from the run itself (its
        version; times as last seen)."""
        try:
            return self.refresh()
        except UnavailableError:
            self.info = replace(
                self.info, version=run.version or self.info.version, training=False, active_run_id=""
            )
            return self.info

    def predict_full(self, x: Any, version: int = 0) -> Prediction:
        request = pb.PredictRequest(model_id=self.id, version=version)
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        return codec.prediction_from_proto(self.client.call("Predict", request))

    def predict(self, x: Any, version: int = 0) -> np.ndarray:
        """Outputs ``(rows, outputs)``: probabilities for classifiers."""
        return self.predict_full(x, version).outputs

    def predict_labels(self, x: Any, version: int = 0) -> np.ndarray:
        """Class labels (classifiers only)."""
        labels = self.predict_full(x, version).labels
        if labels is None:
            raise ValueError(f"model {self.id} is not a classifier (loss {self.info.spec['loss']})")
        return labels

    def gradients(
        self, x: Any, y: Any, *, numerical_check: bool = False, inference_mode: bool = False, version: int = 0
    ) -> Gradients:
        """The loss and every parameter's gradient on ``(x, y)``; the model does not change."""
        request = pb.GetGradientsRequest(
            model_id=self.id, version=version, numerical_check=numerical_check, inference_mode=inference_mode
        )
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        codec.array_to_tensor(_array("y", y, self.dtype), into=request.targets)
        return codec.gradients_from_proto(self.client.call("GetGradients", request))

    def export(self, version: int = 0) -> dict[str, np.ndarray]:
        """A version's weights and buffers by name (0: the current version)."""
        return self.exported(version).arrays

    def exported(self, version: int = 0) -> Exported:
        """A version's weights and buffers, its number and their digest (the one a run's receipt
        names), checked against each other."""
        arrays: dict[str, np.ndarray] = {}
        digest, number = "", 0
        for piece in self._export_pieces(version, pb.ARRAYS):
            digest, number = digest or piece.weights_sha256, piece.version
            if piece.offset == 0:
                arrays[piece.name] = np.empty(tuple(piece.shape), codec.DTYPES[piece.dtype])
            target = raw_bytes(arrays[piece.name])
            target[piece.offset : piece.offset + len(piece.data)] = piece.data
        if weights_digest(arrays) != digest:
            raise ValueError(f"exported weights of model {self.id} do not match the server's digest")
        return Exported(number, arrays, digest)

    def export_onnx(self, path: str | os.PathLike[str] | None = None, version: int = 0) -> bytes:
        """A version (0: the current one) as an ONNX model whose output is what :meth:`predict`
        returns, for inputs of the model's dtype; written to ``path`` if given. Its bytes."""
        data = bytearray()
        for piece in self._export_pieces(version, pb.ONNX):
            if piece.offset != len(data):
                raise ValueError(
                    f"ONNX export of model {self.id}: a piece at {piece.offset}, expected {len(data)}"
                )
            data += piece.data
        if path is not None:
            Path(path).write_bytes(data)
        return bytes(data)

    def _export_pieces(
        self, version: int, export_format: pb.ExportFormat
    ) -> Iterator[pb.ExportModelResponse]:
        """Every piece ExportModel streams, errors typed."""
        self.client._check_open()
        request = pb.ExportModelRequest(model_id=self.id, version=version, format=export_format)
        try:
            yield from self.client.stub.ExportModel(request, timeout=self.client.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def history(self) -> list[History]:
        """Every training run of the model, oldest first."""
        reply = self.client.call("GetTrainingHistory", pb.GetTrainingHistoryRequest(model_id=self.id))
        return [History.from_run(run) for run in reply.runs]

    def delete(self) -> None:
        self.client.delete_model(self.id)


def _is_dataset(value: Any) -> bool:
    return isinstance(value, str | DatasetInfo)


def _cancel_quietly(run: Run) -> None:
    with contextlib.suppress(GradwireError):  # the server is gone: the run ends when its lease does
        run.cancel()
