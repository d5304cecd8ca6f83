"""SDK behaviour that needs no model: retries, deadlines, the raw stub."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from gradwire.client import Client, UnavailableError
from gradwire.v1 import gradwire_pb2 as pb


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
