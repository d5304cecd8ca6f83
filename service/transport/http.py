"""The HTTP port: the open inference protocol's REST endpoints (KServe V2), a Starlette app served
by uvicorn on a thread of the server's process, beside the gRPC port.

    GET  /v2/health/live, /v2/health/ready            open, like gRPC health: probes ask them
    GET  /v2                                           the server's metadata
    GET  /v2/models/{name}[/versions/{version}]        a model's metadata
    GET  /v2/models/{name}[/versions/{version}]/ready  200 if it answers, 404 if not
    POST /v2/models/{name}[/versions/{version}]/infer  its outputs

Every endpoint but the two probes needs ``Authorization: Bearer <key>``, as gRPC calls do, and
answers for the key's tenant only. A tensor comes and goes as JSON (``data``: its elements,
flattened) or, with the protocol's binary tensor extension, as raw little-endian bytes after the
JSON header (``Inference-Header-Content-Length`` says where the header ends, each tensor's
``binary_data_size`` parameter how many bytes are its). An error is ``{"error": message}`` with
the HTTP status that the gRPC status of the same error maps to (:data:`.status.HTTP_STATUS`).

Handlers that read the database or compute run on Starlette's thread pool; the event loop only
moves bytes. A body past ``max_message_mb`` is refused before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gradwire.engine import InvalidArgument

from ..core.errors import LimitExceeded, StartupError
from ..core.metrics import split_address
from ..core.settings import Settings
from .auth import Caller, Identify
from .dashboard import Dashboard
from .open_inference import DATATYPES, Answer, OpenInference, Tensor, input_array, natural
from .status import PAYLOAD_TOO_LARGE, UNAUTHORIZED, http_status

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
"""The names a request to a loopback address may give as its host."""
HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary tensor extension's header: how many bytes of the body are its JSON part."""
BINARY_EXTENSION = "binary_tensor_data"
STARTUP_SECONDS = 10.0
"""How long a start waits for uvicorn to say it serves."""
GRACE_SECONDS = 2
"""How long a stop lets the HTTP port's requests finish: event streams end as the server's
watches do, and their browsers come back to another replica or the restarted server."""


@dataclass(frozen=True)
class Body:
    """A request's JSON header, and the binary tensor data after it."""

    header: dict[str, Any]
    binary: memoryview


def is_loopback(host: str) -> bool:
    """Whether ``host`` (of a ``host:port``) reaches this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface)


class TooLarge(LimitExceeded):
    """A body or its JSON part past its bound: 413, where other limits are 429."""


def error_response(exc: Exception) -> JSONResponse:
    status, message = http_status(exc)
    status = PAYLOAD_TOO_LARGE if isinstance(exc, TooLarge) else status
    headers = {"WWW-Authenticate": "Bearer"} if status == UNAUTHORIZED else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def parse_body(data: bytes, header_length: str | None, max_json_bytes: int) -> Body:
    """The JSON header (the whole body, or its first ``header_length`` bytes) and what follows.
    The JSON part is bounded apart (``max_json_bytes``): parsed, each number becomes an object
    several times its text's size; tensors of any size come as binary data."""
    size = len(data)
    if header_length is not None:
        length = natural(header_length)
        if length is None or length > size:
            raise InvalidArgument(HEADER_LENGTH, f"must be the JSON header's length, at most {size}")
        size = length
    if size > max_json_bytes:
        limit = f"at most {max_json_bytes >> 20} MiB (max_inline_mb): send large tensors as binary data"
        raise TooLarge("body", f"its JSON is {size} bytes, {limit}")
    try:
        header = json.loads(bytes(memoryview(data)[:size]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument("body", f"is not JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return Body(header, memoryview(data)[size:])


def request_tensors(body: Body) -> list[Tensor]:
    """The inputs of an infer request: each from its ``data`` or from its binary bytes, which
    follow the header in the inputs' order."""
    inputs = body.header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("inputs", "must be a list of tensors")
    offset, tensors = 0, []
    parameters(body.header, "parameters")
    for i, given in enumerate(inputs):
        field = f"inputs[{i}]"
        if not isinstance(given, dict):
            raise InvalidArgument(field, "must be an object")
        name, datatype, shape = given.get("name"), given.get("datatype"), given.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidArgument(field, "needs a name and a datatype")
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in shape
        ):
            raise InvalidArgument(f"{field}.shape", "must be a list of integers")
        size = parameters(given, f"{field}.parameters").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(body.binary):
                raise InvalidArgument(f"{field}.parameters.binary_data_size", "does not fit the body")
            data: bytes | np.ndarray = bytes(body.binary[offset : offset + size])
            offset += size
        else:
            data = _json_data(given.get("data"), datatype, f"{field}.data")
        tensors.append(Tensor(name, input_array(datatype, shape, data, field)))
    if offset != len(body.binary):
        unclaimed = (
            f"{len(body.binary) - offset} bytes follow the header that no input's binary_data_size claims"
        )
        raise InvalidArgument(HEADER_LENGTH, unclaimed)
    return tensors


def parameters(holder: dict[str, Any], field: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, a tensor or an output (none: empty)."""
    found = holder.get("parameters") or {}
    if not isinstance(found, dict):
        raise InvalidArgument(field, "must be an object")
    return found


def _json_data(data: Any, datatype: str, field: str) -> np.ndarray:
    """A tensor's JSON elements (nested or flat lists of numbers) as an array of its datatype."""
    if not isinstance(data, list):
        raise InvalidArgument(field, "must be a list of the tensor's elements (or send them binary)")
    try:
        given = np.asarray(data)
        if given.dtype.kind not in "iuf":
            raise TypeError("not numbers")
        return given.astype(DATATYPES.get(datatype, np.float64)).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(field, "must hold numbers only, in lists of equal lengths") from None


def binary_outputs(header: dict[str, Any]) -> set[str] | bool:
    """Which outputs the caller wants as binary data: True for all (``binary_data_output``),
    else those requested with ``binary_data``."""
    if parameters(header, "parameters").get("binary_data_output"):
        return True
    wanted = enumerate(_requested(header))
    return {
        str(o.get("name")) for i, o in wanted if parameters(o, f"outputs[{i}].parameters").get("binary_data")
    }


def _requested(header: dict[str, Any]) -> list[dict[str, Any]]:
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidArgument("outputs", "must be a list of objects naming outputs")
    return outputs


def infer_response(answer: Answer, request_id: str, binary: set[str] | bool) -> Response:
    """The outputs as JSON, those asked for binary after the JSON header."""
    described, chunks = [], []
    for tensor in answer.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        if binary is True or (isinstance(binary, set) and tensor.name in binary):
            raw = np.ascontiguousarray(tensor.array, tensor.array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor.array.reshape(-1).tolist()
        described.append(entry)
    header = {"model_name": answer.model_name, "model_version": answer.model_version, "outputs": described}
    if request_id:
        header["id"] = request_id
    encoded = json.dumps(header, allow_nan=False).encode()
    if not chunks:
        return Response(encoded, media_type="application/json")
    return Response(
        b"".join([encoded, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(encoded))},
    )


class HttpApp:
    """The endpoints, over ``protocol``, for callers ``identify`` names."""

    def __init__(
        self,
        protocol: OpenInference,
        identify: Identify,
        max_body_bytes: int,
        max_json_bytes: int,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.protocol, self.identify, self.max_body_bytes = protocol, identify, max_body_bytes
        self.max_json_bytes = min(max_json_bytes, max_body_bytes)
        self.dashboard = dashboard
        self.started = threading.Event()

    def starlette(self, host: str = "") -> Starlette:
        """The app; served on ``host``, a loopback address, it answers requests that name a
        loopback host only, so that a page of another site whose name now resolves to this
        machine (DNS rebinding) reaches nothing, even with authentication off."""
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.guarded(self.server_metadata)),
        ]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(prefix, self.guarded(self.model_metadata)),
                Route(f"{prefix}/ready", self.guarded(self.model_ready)),
                Route(f"{prefix}/infer", self.guarded(self.infer), methods=["POST"]),
            ]
        if self.dashboard is not None:
            routes += self.dashboard.routes()
        hosts = LOOPBACK_NAMES if is_loopback(host) else ["*"]
        middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
        return Starlette(routes=routes, middleware=middleware, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.started.set()  # uvicorn serves from now on
        yield

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = await run_in_threadpool(self.protocol.server_ready)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def guarded(
        self, handler: Callable[[Request, Caller], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for the caller the request's key names; every error its response."""

        async def answer(request: Request) -> Response:
            try:
                metadata = [("authorization", request.headers.get("authorization"))]
                caller = await run_in_threadpool(self.identify, metadata)
                return await handler(request, caller)
            except Exception as exc:
                return error_response(exc)

        return answer

    async def server_metadata(self, request: Request, caller: Caller) -> Response:
        name, version, extensions = self.protocol.server_metadata()
        return JSONResponse({"name": name, "version": version, "extensions": [*extensions, BINARY_EXTENSION]})

    async def model_metadata(self, request: Request, caller: Caller) -> Response:
        name, version = _address(request)
        meta = await run_in_threadpool(self.protocol.model_metadata, caller.tenant, name, version)
        tensors = [
            [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in side]
            for side in (meta.inputs, meta.outputs)
        ]
        body = {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform}
        return JSONResponse(body | {"inputs": tensors[0], "outputs": tensors[1]})

    async def model_ready(self, request: Request, caller: Caller) -> Response:
        name, version = _address(request)
        ready = await run_in_threadpool(self.protocol.model_ready, caller.tenant, name, version)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 404)

    async def infer(self, request: Request, caller: Caller) -> Response:
        name, version = _address(request)
        data = await self._body(request)
        return await run_in_threadpool(
            self._infer, caller.tenant, name, version, data, request.headers.get(HEADER_LENGTH)
        )

    def _infer(
        self, tenant: str, name: str, version: str, data: bytes, header_length: str | None
    ) -> Response:
        body = parse_body(data, header_length, self.max_json_bytes)
        inputs = request_tensors(body)
        wanted = [str(o.get("name", "")) for o in _requested(body.header)]
        binary = binary_outputs(body.header)  # refused before any work, if it is malformed
        answer = self.protocol.infer(tenant, name, version, inputs, wanted)
        request_id = body.header.get("id")
        return infer_response(answer, request_id if isinstance(request_id, str) else "", binary)

    async def _body(self, request: Request) -> bytes:
        """The request's body, refused as it passes ``max_body_bytes`` (before, if it says its length)."""
        declared = request.headers.get("content-length")
        if declared is not None and (natural(declared) or 0) > self.max_body_bytes:
            raise TooLarge("body", f"is {declared} bytes, past this server's max_message_mb")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise TooLarge("body", "is past this server's max_message_mb")
            chunks.append(chunk)
        return b"".join(chunks)


def _address(request: Request) -> tuple[str, str]:
    return request.path_params["name"], request.path_params.get("version", "")


class HttpPort:
    """The HTTP port's server, on a thread of its own (uvicorn, with its own event loop)."""

    def __init__(self, app: HttpApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.address = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, address: str) -> str:
        """Serve on ``address`` (``host:port``; port 0 picks one), over TLS where the settings give
        a certificate; where it listens. StartupError if it cannot listen there or start."""
        host, port = split_address(address, "http_address")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart, past TIME_WAIT
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot serve HTTP on {address}: {exc.strerror or exc}") from None
        config = uvicorn.Config(
            self.app.starlette(host),
            log_config=None,
            access_log=False,
            log_level="warning",  # its start and stop lines say less than gradwire's own
            timeout_graceful_shutdown=GRACE_SECONDS,
            **self._tls(),
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="gradwire-http", daemon=True
        )
        self._thread.start()
        if not self.app.started.wait(STARTUP_SECONDS):
            self.stop()
            raise StartupError(f"the HTTP port on {address} did not start within {STARTUP_SECONDS:.0f} s")
        bound = sock.getsockname()[1]
        self.address = f"{address.rpartition(':')[0]}:{bound}"
        return self.address

    def _tls(self) -> dict[str, Any]:
        s = self.settings
        if not s.tls_cert_file:
            return {}
        tls: dict[str, Any] = {"ssl_certfile": s.tls_cert_file, "ssl_keyfile": s.tls_key_file}
        if s.tls_client_ca_file:
            tls |= {"ssl_ca_certs": s.tls_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return tls

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STARTUP_SECONDS)
