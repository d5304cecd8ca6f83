"""A real server on a real port (bound to port 0) over a real database, and SDK clients."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from helpers import CallsEnded, Running

from gradwire.client import Client
from gradwire.service import Settings, create_server, stop_server

TEST_SETTINGS = {"checkpoint_interval": 0.05, "poll_seconds": 0.1, "auth": False, "http_address": ""}
"""Commit often and look often, so that the tests see epochs as they happen; no keys, but in the
tests of keys (which turn ``auth`` on); no HTTP port, but in the tests of HTTP (which open one)."""


@pytest.fixture
def executor() -> str:
    """Where the servers of a test execute runs: on threads, which start with the server at no
    cost. The modules that test executing runs override this fixture with every executor; real
    ``gradwire serve`` processes (tests/process) use the default, worker processes."""
    return "thread"


@pytest.fixture
def start_server(database_url: str, executor: str) -> Iterator[Callable[..., Running]]:
    """Starts servers on ``database_url`` (keyword arguments override settings); stops them all."""
    started = []

    def start(**overrides: object) -> Running:
        values = {"database_url": database_url, **TEST_SETTINGS, "executor": executor, **overrides}
        settings = Settings(address="127.0.0.1:0", **values)  # type: ignore[arg-type]
        server, port, app = create_server(settings)
        started.append((server, app))
        return Running(f"127.0.0.1:{port}", app, settings, server)

    yield start
    for server, app in started:
        stop_server(server, app, grace=30)  # runs stop at their epoch's end, well within it


@pytest.fixture
def calls_ended() -> Iterator[CallsEnded]:
    handler = CallsEnded()
    logger = logging.getLogger("gradwire.rpc")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def server(start_server: Callable[..., Running]) -> Running:
    return start_server()


@pytest.fixture
def client(server: Running) -> Iterator[Client]:
    with Client(server.address, timeout=60) as c:
        yield c
