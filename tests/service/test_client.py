"""SDK behaviour that needs no model: retries, deadlines, the raw stub."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import Running

from gradwire.client import Client, UnavailableError
from gradwire.client.sdk import TLS, Connection, grpc_target
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 1, "activation": "sigmoid"}],
    "loss": "binary_crossentropy",
}


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Records the attempts that leave the client, per method (a real interceptor on a real channel)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = {}

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.calls.setdefault(details.method, []).append(request)
        return continuation(details, request)


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_calls_safe_to_repeat_are_retried_on_unavailable() -> None:
    """Reads, and creations that carry a request id (the same one on every attempt); never a delete."""
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{closed_port()}"), counter)
    with Client(channel=channel, retries=2, backoff=0.0, timeout=5) as client:
        with pytest.raises(UnavailableError) as info:
            client.model("any")
        assert isinstance(info.value.__cause__, grpc.RpcError)
        with pytest.raises(UnavailableError):
            client.create_model(
                {"input_dim": 1, "layers": [{"kind": "dense", "units": 1}], "loss": "squared_error"}
            )
        with pytest.raises(UnavailableError):
            client.delete_model("any")
    calls = {method.rsplit("/", 1)[1]: requests for method, requests in counter.calls.items()}
    assert {method: len(requests) for method, requests in calls.items()} == {
        "GetModel": 3,
        "CreateModel": 3,
        "DeleteModel": 1,
    }
    ids = {request.request_id for request in calls["CreateModel"]}
    assert len(ids) == 1
    assert len(ids.pop()) == 32


def test_the_raw_stub_is_reachable(client: Client) -> None:
    reply = client.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert list(reply.models) == []


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("127.0.0.1:1", "127.0.0.1:1"),
        ("db.example:50051", "db.example:50051"),  # one name: gRPC resolves it, and balances its records
        ("127.0.0.1:1, 127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        (["localhost:1", "127.0.0.1:2"], "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_several_addresses_become_one_balanced_target(given: Any, target: str) -> None:
    assert grpc_target(given) == target


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("127.0.0.1:1,[::1]:2", "mix IPv4 and IPv6"),
        ("127.0.0.1:1,nowhere.invalid:2", "resolves to no address"),
        ("127.0.0.1:1,127.0.0.1", "is not host:port"),
    ],
)
def test_addresses_that_cannot_be_one_target_are_refused(given: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        grpc_target(given)


def test_a_token_goes_in_plaintext_only_when_every_replica_is_on_this_machine() -> None:
    with Client("127.0.0.1:1,127.0.0.2:2", token="t"):
        pass
    with pytest.raises(ValueError, match="a token goes over TLS only"):
        Client("127.0.0.1:1,192.0.2.1:2", token="t")


def test_a_client_of_several_replicas_goes_on_when_one_stops(start_server: Callable[..., Running]) -> None:
    first, second = start_server(), start_server()
    with Client([first.address, second.address], timeout=10) as client:
        made = [client.create_model(SPEC) for _ in range(4)]
        first.server.stop(None).wait()  # the replica's port closes: calls go to the other
        for model in made:
            assert model.refresh().id == model.id  # each one answered by the replica left


def test_calls_are_balanced_over_the_replicas(start_server: Callable[..., Running], tmp_path: Path) -> None:
    """Two servers on two databases: the models one client creates land on both (one channel,
    calls spread round the addresses), not all on the first."""
    first, second = start_server(), start_server(database_url=f"sqlite:///{tmp_path / 'second.db'}")
    with Client([first.address, second.address], timeout=10) as client:
        for _ in range(6):
            client.create_model(SPEC)
    for replica in (first, second):
        with Client(replica.address) as alone:
            assert len(list(alone.list_models())) >= 1


def test_replicas_over_tls_are_checked_against_their_one_host_name(tmp_path: Path) -> None:
    """Several addresses become IPs for the balancer; over TLS the certificate is checked against
    the name given, so the replicas must share one."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until the first call")
    tls = TLS(ca_file=str(ca))
    assert Connection.of("localhost:1,localhost:2", tls, "", False, 4).options[-1] == (
        "grpc.ssl_target_name_override",
        "localhost",
    )
    with pytest.raises(ValueError, match="one host name"):
        Connection.of("localhost:1,127.0.0.1:2", tls, "", False, 4)
    assert ("grpc.ssl_target_name_override", "localhost") not in Connection.of(
        "localhost:1", tls, "", False, 4
    ).options
