"""The HTTP port through a real server on a free port: the open inference protocol's REST
endpoints (JSON and binary tensors), their keys and tenants, their errors' HTTP statuses, the
bound on a body; and a server that cannot take its HTTP address does not start."""

from __future__ import annotations

import asyncio
import contextlib
import http.client as http_client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from conftest import Outage
from helpers import Running
from starlette.requests import ClientDisconnect

from gradwire.client import Client
from gradwire.service.core.errors import StartupError
from gradwire.service.core.settings import Limits
from gradwire.service.transport.auth import NewKey, new_key
from gradwire.service.transport.dashboard import Held
from gradwire.service.transport.http import HEADER_LENGTH
from gradwire.service.transport.server import operations

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 6, "activation": "tanh"},
        {"kind": "dense", "units": 2, "activation": "softmax"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float64",
    "seed": 8,
}
X = np.random.default_rng(4).normal(size=(5, 3))


class Http:
    """Requests to one server's HTTP port, with a key if given."""

    def __init__(self, server: Running, key: NewKey | None = None) -> None:
        running = operations(server.server)
        assert running is not None
        assert running.http is not None
        self.base, self.key, self.server = f"http://{running.http.address}", key, server

    def call(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        sent = dict(headers or {})
        if self.key is not None:
            sent["Authorization"] = f"Bearer {self.key.token}"
        request = urllib.request.Request(self.base + path, data=body, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, lowered(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, lowered(error.headers), error.read()

    def open_stream(self, path: str) -> http_client.HTTPConnection:
        """A connection whose event stream at ``path`` has begun (its first event read)."""
        host, port = self.base.removeprefix("http://").split(":")
        connection = http_client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", path, headers=self.headers())
        answer = connection.getresponse()
        assert answer.status == 200
        assert answer.readline().startswith(b"event: run")
        return connection

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.token}"} if self.key is not None else {}

    def json(self, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, data = self.call(path, None if body is None else json.dumps(body).encode())
        return status, json.loads(data)


def lowered(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def infer_body(x: np.ndarray, **more: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP64", "shape": list(x.shape), "data": x.tolist()}
    return {"inputs": [tensor], **more}


@pytest.fixture
def keyed(start_server: Callable[..., Running]) -> tuple[Running, dict[str, NewKey]]:
    server = start_server(auth=True, http_address="127.0.0.1:0")
    keys = {tenant: new_key() for tenant in ("alice", "bob")}
    for tenant, key in keys.items():
        server.app.store.tenants.add_key(tenant, key.id, key.hash, name=tenant)
    return server, keys


def test_json_and_binary_tensors_answer_what_predict_answers(
    keyed: tuple[Running, dict[str, NewKey]],
) -> None:
    server, keys = keyed
    with Client(server.address, timeout=60, token=keys["alice"].token) as client:
        model = client.create_model(SPEC, name="m")
        expected = model.predict_full(X)
    http = Http(server, keys["alice"])
    status, answer = http.json("/v2/models/m/infer", infer_body(X, id="q1"))  # nested lists: rows
    assert status == 200
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("m", "1", "q1")
    output, label = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output", "FP64", [5, 2])
    assert np.array(output["data"]).tobytes() == expected.outputs.tobytes()  # JSON keeps every bit
    assert label["data"] == expected.labels.tolist()

    binary = {
        "name": "input",
        "datatype": "FP64",
        "shape": [5, 3],
        "parameters": {"binary_data_size": X.nbytes},
    }
    wanted = {"name": "output", "parameters": {"binary_data": True}}
    header = json.dumps({"inputs": [binary], "outputs": [wanted]}).encode()
    status, headers, data = http.call(
        f"/v2/models/{model.id}/versions/1/infer", header + X.tobytes(), {HEADER_LENGTH: str(len(header))}
    )
    assert status == 200
    length = int(
        headers[HEADER_LENGTH.lower()] if HEADER_LENGTH.lower() in headers else headers[HEADER_LENGTH]
    )
    described = json.loads(data[:length])
    assert [o["name"] for o in described["outputs"]] == ["output"]  # only what was asked
    assert described["outputs"][0]["parameters"]["binary_data_size"] == expected.outputs.nbytes
    assert data[length:] == expected.outputs.tobytes()


def test_probes_are_open_every_other_endpoint_needs_a_key_and_sees_its_tenant_only(
    keyed: tuple[Running, dict[str, NewKey]],
) -> None:
    server, keys = keyed
    with Client(server.address, timeout=60, token=keys["alice"].token) as client:
        model = client.create_model(SPEC, name="hers")
    anonymous, bob = Http(server), Http(server, keys["bob"])
    assert anonymous.json("/v2/health/live") == (200, {"live": True})
    assert anonymous.json("/v2/health/ready") == (200, {"ready": True})
    for path in ("/v2", f"/v2/models/{model.id}", f"/v2/models/{model.id}/ready"):
        status, headers, _ = anonymous.call(path)
        assert status == 401, path
        assert headers["www-authenticate"] == "Bearer"
    assert anonymous.call(f"/v2/models/{model.id}/infer", json.dumps(infer_body(X)).encode())[0] == 401
    for name in (model.id, "hers"):  # bob: as if it did not exist
        assert bob.json(f"/v2/models/{name}")[0] == 404
        assert bob.json(f"/v2/models/{name}/ready")[0] == 404
        assert bob.json(f"/v2/models/{name}/infer", infer_body(X))[0] == 404
    status, meta = Http(server, keys["alice"]).json("/v2/models/hers")
    assert (status, meta["versions"], meta["inputs"][0]["shape"]) == (200, ["1"], [-1, 3])
    assert Http(server, keys["alice"]).json("/v2")[1]["extensions"] == ["binary_tensor_data"]


def test_a_request_the_model_cannot_take_gets_400_naming_the_field_and_nothing_changes(
    keyed: tuple[Running, dict[str, NewKey]],
) -> None:
    server, keys = keyed
    with Client(server.address, timeout=60, token=keys["alice"].token) as client:
        model = client.create_model(SPEC)
    http = Http(server, keys["alice"])
    path = f"/v2/models/{model.id}/infer"

    def one(**tensor: Any) -> bytes:
        given = {"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [0.0, 1.0, 2.0]} | tensor
        return json.dumps({"inputs": [given]}).encode()

    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases: list[tuple[str, bytes, dict[str, str], str]] = [  # field, body, headers, path's version
        ("body", b"not json", {}, ""),
        ("body", deep, {}, ""),  # nesting past the parser's recursion
        ("inputs", json.dumps({"inputs": "x"}).encode(), {}, ""),
        ("inputs[0].data", one(data=["a", "b", "c"]), {}, ""),
        ("inputs[0].data", one(data=["1.5", "2", "3"]), {}, ""),  # numbers in strings are no numbers
        ("inputs[0].data", one(data=[10**400, 1, 2]), {}, ""),
        ("inputs[0].data", one(data=[[1.0], [2.0, 3.0]]), {}, ""),
        ("inputs[0].contents", one(data=[0.0, 1.0]), {}, ""),  # two elements for a shape of three
        ("inputs[0].shape", one(shape=[10**30, 1]), {}, ""),
        ("inputs[0].shape", one(shape=[2**32, 2**32], data=[]), {}, ""),
        ("inputs[0].datatype", one(datatype="BYTES"), {}, ""),
        ("inputs[0].name", one(name="x"), {}, ""),
        ("inputs[0].parameters", one(parameters=[1]), {}, ""),
        (
            "inputs[0].parameters.binary_data_size",
            one(data=None, parameters={"binary_data_size": 999}),
            {},
            "",
        ),
        (
            "inputs[0].parameters.binary_data_size",
            one(data=None, parameters={"binary_data_size": True}),
            {},
            "",
        ),
        (
            "outputs[0].parameters",
            json.dumps(infer_body(X, outputs=[{"name": "output", "parameters": "x"}])).encode(),
            {},
            "",
        ),
        ("parameters", json.dumps(infer_body(X, parameters=7)).encode(), {}, ""),
        (HEADER_LENGTH, b"{}", {HEADER_LENGTH: "99"}, ""),
        (HEADER_LENGTH, b"{}", {HEADER_LENGTH: "\u00b2"}, ""),
        (
            HEADER_LENGTH,
            json.dumps(infer_body(X)).encode() + b"left over",
            {HEADER_LENGTH: str(len(json.dumps(infer_body(X))))},
            "",
        ),
        ("inputs.shape", json.dumps(infer_body(X[:, :2])).encode(), {}, ""),
        ("model_version", json.dumps(infer_body(X)).encode(), {}, "latest"),
        ("model_version", json.dumps(infer_body(X)).encode(), {}, "%C2%B2"),  # a superscript two
        ("model_version", json.dumps(infer_body(X)).encode(), {}, "9" * 5000),
    ]
    for field, body, headers, version in cases:
        where = f"/v2/models/{model.id}/versions/{version}/infer" if version else path
        status, _, data = http.call(where, body, headers)
        assert status == 400, (field, data[:300])
        assert field in json.loads(data)["error"], (field, data[:300])
    assert http.json(f"/v2/models/{model.id}/versions/7/infer", infer_body(X))[0] == 404
    assert http.json("/v2/models/nothing/infer", infer_body(X))[0] == 404
    assert model.id in {
        m.id for m in Client(server.address, timeout=60, token=keys["alice"].token).list_models()
    }


def test_a_body_past_the_message_limit_is_refused_before_it_is_read_and_json_has_a_bound_of_its_own(
    start_server: Callable[..., Running],
) -> None:
    server = start_server(http_address="127.0.0.1:0", max_message_mb=2, limits=Limits(max_inline_mb=1))
    http = Http(server)
    host, port = http.base.removeprefix("http://").split(":")
    said = http_client.HTTPConnection(host, int(port), timeout=30)
    said.putrequest("POST", "/v2/models/any/infer")
    said.putheader("Content-Length", str(3 << 20))
    said.endheaders()  # and not one byte of the body: the answer comes before it is read
    refused = said.getresponse()
    assert refused.status == 413
    assert "max_message_mb" in json.loads(refused.read())["error"]
    said.close()
    big = json.dumps(infer_body(np.random.default_rng(1).normal(size=(25_000, 3)))).encode()
    assert 1 << 20 < len(big) < 2 << 20  # past the JSON bound, within the body's
    status, _, data = http.call("/v2/models/any/infer", big)
    assert status == 413
    assert "binary data" in json.loads(data)["error"]


def test_a_server_whose_http_address_is_taken_does_not_start(start_server: Callable[..., Running]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            start_server(http_address=f"127.0.0.1:{port}")
        with pytest.raises(StartupError, match="http_address"):
            start_server(http_address="127.0.0.1:port")


def events_of(
    http: Http, run_id: str, key: NewKey | None, last_id: str = ""
) -> tuple[int, list[tuple[str, Any]]]:
    """The dashboard's event stream of a run, read to its end: (status, [(event, data), ...])."""
    headers = {"Cookie": f"gradwire_key={key.token}"} if key else {}
    if last_id:
        headers["Last-Event-ID"] = last_id
    status, _, data = Http(http.server).call(f"/runs/{run_id}/events", headers=headers)
    events = []
    for block in data.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return status, events


def test_the_dashboards_event_stream_sends_the_epochs_then_the_end_and_takes_up_after_the_last_id(
    keyed: tuple[Running, dict[str, NewKey]],
) -> None:
    server, keys = keyed
    with Client(server.address, timeout=60, token=keys["alice"].token) as client:
        history = client.create_model(SPEC).fit(X, np.eye(2)[[0, 1, 0, 1, 1]], epochs=4, batch_size=2)
    http = Http(server)
    status, events = events_of(http, history.run_id, keys["alice"])
    assert status == 200
    assert [name for name, _ in events] == ["run", "epochs", "run", "end"]
    assert [record["epoch"] for record in events[1][1]] == [1, 2, 3, 4]
    assert events[2][1]["status"] == "completed"
    _, later = events_of(http, history.run_id, keys["alice"], last_id="2")  # a browser reconnecting
    assert [record["epoch"] for record in later[1][1]] == [3, 4]
    assert events_of(http, history.run_id, keys["bob"])[0] == 404
    assert events_of(http, history.run_id, None)[0] == 401


def test_the_http_port_speaks_tls_where_the_grpc_port_does(
    start_server: Callable[..., Running], tmp_path: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    server = start_server(http_address="127.0.0.1:0", tls_cert_file=str(cert), tls_key_file=str(key))
    address = Http(server).base.removeprefix("http://")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with urllib.request.urlopen(f"https://{address}/v2/health/live", context=context, timeout=30) as answer:
        assert json.load(answer) == {"live": True}
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext beside it
        urllib.request.urlopen(f"http://{address}/v2/health/live", timeout=30)


def test_resume_from_the_dashboard_says_why_a_finished_run_does_not_resume_and_changes_nothing(
    keyed: tuple[Running, dict[str, NewKey]],
) -> None:
    server, keys = keyed
    with Client(server.address, timeout=60, token=keys["alice"].token) as client:
        history = client.create_model(SPEC).fit(X, np.eye(2)[[0, 1, 0, 1, 1]], epochs=2, batch_size=5)
        cookie = {"Cookie": f"gradwire_key={keys['alice'].token}"}
        status, _, page = Http(server).call(f"/runs/{history.run_id}/resume", b"", cookie)
        assert status == 400  # FAILED_PRECONDITION, on a page of its own
        assert b"only an interrupted run resumes" in page
        assert client.run(history.run_id).info.status == "completed"
        bob = {"Cookie": f"gradwire_key={keys['bob'].token}"}
        assert Http(server).call(f"/runs/{history.run_id}/cancel", b"", bob)[0] == 404
        foreign = {**cookie, "Origin": "http://elsewhere.example"}
        assert Http(server).call(f"/runs/{history.run_id}/cancel", b"", foreign)[0] == 403


def test_event_streams_past_the_limit_are_refused_at_once(start_server: Callable[..., Running]) -> None:
    server = start_server(http_address="127.0.0.1:0", max_streams=1)
    with Client(server.address, timeout=60) as client:
        run = client.create_model(SPEC).start_run(X, np.eye(2)[[0, 1, 0, 1, 1]], epochs=100_000, batch_size=1)
        http = Http(server)
        first = http.open_stream(f"/runs/{run.id}/events")  # open, and holding the one slot
        status, _, data = http.call(f"/runs/{run.id}/events")
        assert status == 429
        assert "event streams" in json.loads(data)["error"]
        first.close()
        run.cancel()


def test_a_stream_whose_browser_left_before_it_began_gives_its_slot_back() -> None:
    """An ASGI call whose client is gone at once: the response's content never runs, and the
    slot it holds comes back all the same (it stayed taken: 64 such calls closed the dashboard)."""
    given_back: list[bool] = []

    async def content() -> AsyncIterator[str]:
        raise AssertionError("a stream nobody reads is not read")
        yield ""  # pragma: no cover - makes this a generator

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the browser is gone")

    held = Held(content(), lambda: given_back.append(True), media_type="text/event-stream")
    with contextlib.suppress(OSError, ClientDisconnect):  # however the server's side ends it
        asyncio.run(held({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send))
    assert given_back == [True]


def test_open_event_streams_leave_the_pages_and_the_probes_their_threads(
    start_server: Callable[..., Running],
) -> None:
    """More streams than the thread pool the pages share (40 threads): they wait on threads of
    their own, so the probes and pages still answer."""
    server = start_server(http_address="127.0.0.1:0", max_streams=48)
    with Client(server.address, timeout=60) as client:
        run = client.create_model(SPEC).start_run(X, np.eye(2)[[0, 1, 0, 1, 1]], epochs=100_000, batch_size=1)
        http = Http(server)
        streams = [http.open_stream(f"/runs/{run.id}/events") for _ in range(44)]
        assert http.json("/v2/health/ready") == (200, {"ready": True})
        assert http.call("/")[0] == 200
        for connection in streams:
            connection.close()
        run.cancel()


def test_a_request_naming_another_host_is_refused_on_loopback_and_pages_are_not_framed(
    start_server: Callable[..., Running],
) -> None:
    server = start_server(http_address="127.0.0.1:0")  # authentication off: every page open
    http = Http(server)
    assert http.call("/", headers={"Host": "rebound.example"})[0] == 400  # DNS rebinding reaches nothing
    status, headers, _ = http.call("/")
    assert status == 200
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_with_the_database_away_the_pages_and_probes_say_unavailable_and_come_back(
    start_server: Callable[..., Running], outage: Outage, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "the outage is a PostgreSQL database's: its run under the postgresql parameter is the test"
        )
    server = start_server(database_url=outage.url, http_address="127.0.0.1:0", db_retry_seconds=0.5)
    with Client(server.address, timeout=60) as client:
        run = client.create_model(SPEC, name="away").fit(X, np.eye(2)[[0, 1, 0, 1, 1]], epochs=2).run_id
    http = Http(server)
    outage.refuse()
    try:
        for path in ("/", f"/runs/{run}", f"/runs/{run}/events", "/v2/health/ready"):
            status, _, data = http.call(path)
            assert status == 503, (path, data[:200])
        assert http.json("/v2/health/live") == (200, {"live": True})
    finally:
        outage.restore()
    assert http.call("/")[0] == 200
    assert http.call(f"/runs/{run}")[0] == 200


def test_a_sign_in_body_longer_than_a_form_is_refused_before_it_is_read(
    start_server: Callable[..., Running],
) -> None:
    server = start_server(http_address="127.0.0.1:0", auth=True)
    host, port = Http(server).base.removeprefix("http://").split(":")
    said = http_client.HTTPConnection(host, int(port), timeout=10)
    said.putrequest("POST", "/signin")
    said.putheader("Content-Type", "application/x-www-form-urlencoded")
    said.putheader("Content-Length", str(1 << 30))
    said.endheaders()  # a gibibyte announced, nothing sent: the answer cannot wait for it
    refused = said.getresponse()
    assert refused.status == 400
    assert b"that is no API key" in refused.read()
    said.close()
