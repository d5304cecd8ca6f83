"""TLS and mutual TLS between real servers and SDK clients, certificates made here by trustme;
a bearer token as a server sees it; settings the server cannot use, refused at startup."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
import trustme
from helpers import Running

from gradwire.client import TLS, Client, UnavailableError
from gradwire.client.sdk import TLS_VARIABLES, TOKEN_VARIABLE
from gradwire.service import Settings, create_server
from gradwire.service.core.errors import StartupError
from gradwire.service.ops import probe
from gradwire.service.ops.cli import main
from gradwire.v1 import gradwire_pb2 as pb

GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
SPEC = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 3, "activation": "identity", "init": "xavier_uniform"}],
    "loss": "squared_error",
}
TOKEN = "s3cret-token"
FAILS_FAST = {"retries": 0, "timeout": 10.0}
"""A client that reports a refused handshake at once, instead of retrying it."""


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 and localhost, a client certificate
    (all three from the CA), and a second CA that signed nothing here."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str


@pytest.fixture(autouse=True)
def no_client_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say what each client uses: nothing comes from the environment they run in."""
    for name in (*TLS_VARIABLES.values(), TOKEN_VARIABLE):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.gradwire.test")
    stranger = other.issue_cert("stranger.gradwire.test")

    def write(name: str, *blobs: trustme.Blob) -> str:
        path = folder / name
        path.write_bytes(b"".join(blob.bytes() for blob in blobs))
        return str(path)

    return Pki(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", *server.cert_chain_pems),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", *client.cert_chain_pems),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        other_client_cert=write("stranger.pem", *stranger.cert_chain_pems),
        other_client_key=write("stranger.key", stranger.private_key_pem),
    )


def tls_server(start_server: Callable[..., Running], pki: Pki, mutual: bool = False) -> Running:
    client_ca = {"tls_client_ca_file": pki.ca} if mutual else {}
    return start_server(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, **client_ca)


def create_and_predict(client: Client) -> np.ndarray:
    model = client.create_model(SPEC, name="over-tls")
    return np.asarray(model.predict(np.ones((4, 2))))


# ------------------------------------------------------------------------------------ TLS


def test_a_client_trusting_the_ca_creates_a_model_and_predicts(
    start_server: Callable[..., Running], pki: Pki
) -> None:
    server = tls_server(start_server, pki)
    with Client(server.address, tls=TLS(ca_file=pki.ca)) as client:
        assert create_and_predict(client).shape == (4, 3)
        assert client.healthy()


def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    start_server: Callable[..., Running], pki: Pki
) -> None:
    server = tls_server(start_server, pki)
    with Client(server.address, **FAILS_FAST) as client, pytest.raises(UnavailableError):  # type: ignore[arg-type]
        list(client.list_models())


def test_a_client_trusting_another_ca_refuses_the_server(
    start_server: Callable[..., Running], pki: Pki
) -> None:
    server = tls_server(start_server, pki)
    with (
        Client(server.address, tls=TLS(ca_file=pki.other_ca), **FAILS_FAST) as client,  # type: ignore[arg-type]
        pytest.raises(UnavailableError),
    ):
        list(client.list_models())


def test_the_ca_file_can_come_from_the_environment(
    start_server: Callable[..., Running], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tls_server(start_server, pki)
    monkeypatch.setenv("GRADWIRE_TLS_CA_FILE", pki.ca)
    with Client(server.address) as client:
        assert client.tls == TLS(ca_file=pki.ca)
        assert list(client.list_models()) == []


# ------------------------------------------------------------------------------------ mutual TLS


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(
    start_server: Callable[..., Running], pki: Pki
) -> None:
    server = tls_server(start_server, pki, mutual=True)
    tls = TLS(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    with Client(server.address, tls=tls) as client:
        assert create_and_predict(client).shape == (4, 3)


@pytest.mark.parametrize("certificate", ["none", "from another CA"])
def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(
    start_server: Callable[..., Running], pki: Pki, certificate: str
) -> None:
    server = tls_server(start_server, pki, mutual=True)
    own = {
        "none": {},
        "from another CA": {"cert_file": pki.other_client_cert, "key_file": pki.other_client_key},
    }
    with (
        Client(server.address, tls=TLS(ca_file=pki.ca, **own[certificate]), **FAILS_FAST) as client,  # type: ignore[arg-type]
        pytest.raises(UnavailableError),
    ):
        list(client.list_models())


def test_a_client_certificate_needs_its_key_and_a_file_must_be_readable(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TLS(ca_file=pki.ca, cert_file=pki.client_cert)
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=f"ca_file {re.escape(missing)}: cannot read it"):
        Client("127.0.0.1:1", tls=TLS(ca_file=missing))


# ------------------------------------------------------------------------------------ tokens


class Recorder:
    """A real gRPC server that answers every gradwire method with an empty message (one, for a
    stream) and keeps the metadata each call arrived with: what the server side really saw."""

    KINDS: ClassVar = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    """A method handler by (client streams, server streams)."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        service = pb.DESCRIPTOR.services_by_name["Trainer"]
        handlers = {
            m.name: self.KINDS[m.client_streaming, m.server_streaming](
                self._answer(m.name, m.server_streaming)
            )
            for m in service.methods
        }
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service.full_name, handlers)]
        )

    def _answer(self, method: str, streams: bool) -> Callable[[Any, grpc.ServicerContext], Any]:
        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            if not isinstance(request, bytes):
                b"".join(request)  # a client stream: read to its end
            with self.lock:
                self.seen[method] = dict(context.invocation_metadata())
            return iter([b""]) if streams else b""

        return answer


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.server.stop(None)


def seen_by_the_server(recorder: Recorder, client: Client) -> dict[str, str | None]:
    """The authorization header each kind of call carried: unary, server stream, client stream."""
    assert list(client.list_models()) == []
    assert len(list(client.stub.WatchRun(pb.WatchRunRequest(run_id="r"), timeout=10))) == 1
    client.stub.UploadDataset(iter([pb.UploadDatasetRequest(chunk=b"x")] * 3), timeout=10)
    return {method: recorder.seen[method].get("authorization") for method in sorted(recorder.seen)}


EVERY_KIND = {"ListModels", "UploadDataset", "WatchRun"}


def test_a_token_goes_with_every_call_over_plaintext_to_loopback(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = recorder.server.add_insecure_port("127.0.0.1:0")
    recorder.server.start()
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    with Client(f"127.0.0.1:{port}") as client:
        assert seen_by_the_server(recorder, client) == dict.fromkeys(EVERY_KIND, f"Bearer {TOKEN}")


def test_a_token_goes_with_every_call_over_tls(recorder: Recorder, pki: Pki) -> None:
    with open(pki.server_key, "rb") as key, open(pki.server_cert, "rb") as cert:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    port = recorder.server.add_secure_port("127.0.0.1:0", credentials)
    recorder.server.start()
    with Client(f"127.0.0.1:{port}", tls=TLS(ca_file=pki.ca), token=TOKEN) as client:
        assert seen_by_the_server(recorder, client) == dict.fromkeys(EVERY_KIND, f"Bearer {TOKEN}")


def test_without_a_token_no_authorization_is_sent(recorder: Recorder) -> None:
    port = recorder.server.add_insecure_port("127.0.0.1:0")
    recorder.server.start()
    with Client(f"127.0.0.1:{port}") as client:
        assert seen_by_the_server(recorder, client) == dict.fromkeys(EVERY_KIND)


def test_a_token_never_travels_in_plaintext_off_this_machine() -> None:
    with pytest.raises(ValueError, match="a token goes over TLS only"):
        Client("192.0.2.1:50051", token=TOKEN)  # TEST-NET-1: never contacted, refused before


# ------------------------------------------------------------------------------------ startup


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        ({"tls_key_file": "key"}, "--tls-key-file (GRADWIRE_TLS_KEY_FILE) is set but --tls-cert-file"),
        ({"tls_cert_file": "cert"}, "--tls-cert-file (GRADWIRE_TLS_CERT_FILE) is set but --tls-key-file"),
        ({"tls_client_ca_file": "ca"}, "--tls-client-ca-file (GRADWIRE_TLS_CLIENT_CA_FILE) is set but"),
        (
            {"tls_cert_file": "missing", "tls_key_file": "key"},
            "--tls-cert-file (GRADWIRE_TLS_CERT_FILE): cannot read",
        ),
        ({"tls_cert_file": "cert", "tls_key_file": "other key"}, "are not a PEM certificate and its"),
        ({"tls_cert_file": "key", "tls_key_file": "key"}, "are not a PEM certificate and its"),
    ],
)
def test_tls_settings_the_server_cannot_use_are_refused_at_startup(
    database_url: str, pki: Pki, tmp_path: Path, given: dict[str, str], refusal: str
) -> None:
    files = {
        "cert": pki.server_cert,
        "key": pki.server_key,
        "other key": pki.client_key,  # a key, but not the certificate's
        "ca": pki.ca,
        "missing": str(tmp_path / "missing.pem"),
    }
    settings = Settings(
        address="127.0.0.1:0", database_url=database_url, **{k: files[v] for k, v in given.items()}
    )
    with pytest.raises(StartupError) as refused:
        create_server(settings)
    assert refusal in str(refused.value)


def test_serve_says_mutual_tls_and_serves_it_or_refuses_unusable_files_in_one_line(
    database_url: str, pki: Pki, tmp_path: Path
) -> None:
    tls = ["--tls-cert-file", pki.server_cert, "--tls-key-file", pki.server_key]
    serve = [GRADWIRE, "serve", "--address", "127.0.0.1:0", "--database-url", database_url, "--auth", "off"]
    server = subprocess.Popen(
        [*serve, *tls, "--tls-client-ca-file", pki.ca],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # blocks until the server has bound its port
        match = re.fullmatch(r"gradwire listening on (\S+) over mutual TLS \(database .*\)\n", line)
        assert match, line
        client_tls = TLS(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        with Client(match.group(1), tls=client_tls) as client:
            assert client.healthy()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0

    missing = str(tmp_path / "missing.pem")
    refused = subprocess.run(
        [*serve, "--tls-cert-file", missing, "--tls-key-file", pki.server_key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    refusal = f"--tls-cert-file (GRADWIRE_TLS_CERT_FILE): cannot read {missing}: No such file or directory"
    assert refused.stderr.splitlines()[-1] == f"gradwire: {refusal}"  # after the database's own log lines


def test_a_plaintext_server_says_so(database_url: str) -> None:
    serve = [GRADWIRE, "serve", "--address", "127.0.0.1:0", "--database-url", database_url, "--auth", "off"]
    server = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        assert re.fullmatch(
            r"gradwire listening on \S+ in plaintext \(database .*\)\n", server.stdout.readline()
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


# ------------------------------------------------------------------------------------ CLI


def test_client_commands_take_the_tls_flags(
    start_server: Callable[..., Running], pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    server = tls_server(start_server, pki, mutual=True)
    at = ["--server", server.address, "--tls-ca", pki.ca]
    with Client(server.address, tls=TLS(pki.ca, pki.client_cert, pki.client_key)) as client:
        model_id = client.create_model(SPEC, name="listed").id
    assert main(["models", "list", *at, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key]) == 0
    assert model_id in capsys.readouterr().out

    with pytest.raises(SystemExit) as refused:  # no client certificate: the handshake fails
        main(["models", "list", *at])
    assert refused.value.code == 1
    assert f"cannot reach the server at {server.address}" in capsys.readouterr().err

    with pytest.raises(SystemExit) as usage:
        main(["models", "list", *at, "--tls-cert", pki.client_cert])
    assert usage.value.code == 2
    assert capsys.readouterr().err.startswith("gradwire: TLS: give cert_file and key_file")


# ------------------------------------------------------------------------------------ the probe


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual tls"])
def test_the_probe_checks_a_tls_server_as_its_container_configures_it(
    start_server: Callable[..., Running], pki: Pki, mutual: bool
) -> None:
    server = tls_server(start_server, pki, mutual=mutual)
    container = {"GRADWIRE_TLS_CERT_FILE": pki.server_cert, "GRADWIRE_TLS_CA_FILE": pki.ca}
    if mutual:
        container |= {
            "GRADWIRE_CLIENT_CERT_FILE": pki.client_cert,
            "GRADWIRE_CLIENT_KEY_FILE": pki.client_key,
        }
    assert probe.check(server.address, environ=container) == (True, "SERVING")
    assert probe.check(server.address, environ={})[0] is False  # plaintext to a TLS listener
    untrusting = container | {"GRADWIRE_TLS_CA_FILE": pki.other_ca}
    assert probe.check(server.address, environ=untrusting)[0] is False
    named = container | {"GRADWIRE_PROBE_TLS_NAME": "localhost"}  # the name in the certificate
    assert probe.check(server.address, environ=named) == (True, "SERVING")
    unreadable = container | {"GRADWIRE_TLS_CA_FILE": pki.ca + ".missing"}
    serving, said = probe.check(server.address, environ=unreadable)
    assert not serving
    assert said.startswith("cannot read ")
    assert said.endswith(".missing: No such file or directory")
