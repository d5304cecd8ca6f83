"""Health and the listening address of an in-process server: a stop says NOT_SERVING on every
Watch stream and then ends it, and an address in use is refused, never shared."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradwire.client import Client
from gradwire.service import Settings, create_server, stop_server
from gradwire.service.core.errors import StartupError

SERVICES = ("", "gradwire.v1.Trainer")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE = 30.0


def watch(channel: grpc.Channel, service: str) -> Any:
    """A health Watch stream: an iterator of replies that is also the call (its code, once ended)."""
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)


def test_a_stop_says_not_serving_on_every_watch_then_ends_it(database_url: str) -> None:
    server, port, app = create_server(Settings(address="127.0.0.1:0", database_url=database_url))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        calls = [watch(channel, name) for name in SERVICES]
        assert [next(call).status for call in calls] == [SERVING, SERVING]
        started = time.monotonic()
        stop_server(server, app, grace=GRACE)
        assert time.monotonic() - started < GRACE / 2  # no watch held the stop for its grace period
        assert [[reply.status for reply in call] for call in calls] == [[NOT_SERVING]] * 2
        assert [call.code() for call in calls] == [grpc.StatusCode.OK] * 2  # ended, not cancelled


def test_an_address_in_use_is_refused_and_the_server_on_it_serves_on(database_url: str) -> None:
    settings = Settings(address="127.0.0.1:0", database_url=database_url)
    server, port, app = create_server(settings)
    try:
        taken = f"127.0.0.1:{port}"
        with pytest.raises(StartupError) as refused:
            create_server(Settings(address=taken, database_url=database_url))
        assert str(refused.value) == f"cannot listen on {taken}: the address is in use (or not available)"
        with grpc.insecure_channel(taken) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICES[1]), timeout=10
            )
            assert reply.status == SERVING
    finally:
        stop_server(server, app)


def test_health_watches_have_slots_of_their_own_and_never_take_the_unary_or_stream_threads(
    start_server: Any, calls_ended: Any
) -> None:
    running = start_server(max_streams=1, health_streams=2)
    with grpc.insecure_channel(running.address) as channel, Client(running.address, timeout=30) as client:
        calls = [watch(channel, "") for _ in range(2)]
        assert [next(call).status for call in calls] == [SERVING, SERVING]
        with pytest.raises(grpc.RpcError) as info:
            next(watch(channel, ""))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert check.status == SERVING  # unary calls are answered beside the full stream slots
        rows = np.arange(6.0).reshape(3, 2)
        assert client.upload_dataset(rows).shape == (3, 2)  # so is a stream: keyless watchers took none
        calls[0].cancel()
        with calls_ended.changed:  # the refused watch ended, then the cancelled one gave its slot back
            watches = lambda: sum(method.endswith("/Watch") for method, _ in calls_ended.ended)  # noqa: E731
            assert calls_ended.changed.wait_for(lambda: watches() >= 2, 30)
        assert next(watch(channel, "")).status == SERVING
