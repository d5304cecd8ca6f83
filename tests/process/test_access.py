"""Access control with real server processes: keys made with the CLI, revoked with the CLI, refused
by every server process on the database within ``auth_cache_seconds``; a server without
authentication says so first; a server that would listen beyond this machine unprotected refuses
to start unless told ``--insecure``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ServerProcess

from gradwire.client import Client, UnauthenticatedError
from gradwire.service.transport.server import AUTH_OFF

GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
SPEC = {"input_dim": 2, "layers": [{"kind": "dense", "units": 1}], "loss": "squared_error"}
BOUND = 1.0
"""auth_cache_seconds of the servers here: a revoked key works at most this long on each."""


def gradwire(*arguments: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """An operator command on the database, as the README gives it."""
    argv = [GRADWIRE, *arguments, "--database-url", database_url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def make_key(tenant: str, database_url: str) -> str:
    made = gradwire("keys", "create", "--tenant", tenant, database_url=database_url)
    assert made.returncode == 0, made.stderr
    (key,) = made.stdout.splitlines()  # the key and nothing else: KEY=$(gradwire keys create ...)
    assert key.split("_")[1] in made.stderr  # the note names its id
    return key


def refused_within(address: str, key: str, deadline: float) -> float:
    """Seconds until a call with ``key`` is refused, asking until ``deadline`` seconds have passed."""
    started = time.monotonic()
    with Client(address, token=key, retries=1) as client:
        while time.monotonic() - started < deadline:
            try:
                list(client.list_models())
            except UnauthenticatedError:
                return time.monotonic() - started
    raise AssertionError(f"{address} still takes the revoked key after {deadline} s")


def test_a_key_revoked_with_the_cli_is_refused_by_every_server_within_the_bound(database_url: str) -> None:
    first = ServerProcess(database_url, auth="on", auth_cache_seconds=BOUND)
    with first, ServerProcess(database_url, auth="on", auth_cache_seconds=BOUND) as second:
        key = make_key("acme", database_url)
        with Client(first.address) as keyless, pytest.raises(UnauthenticatedError, match="API key"):
            list(keyless.list_models())
        with Client(first.address, token=key) as one, Client(second.address, token=key) as other:
            model = one.create_model(SPEC)
            assert [m.id for m in other.list_models()] == [model.id]  # both know the key now
        key_id = key.split("_")[1]
        listed = gradwire("keys", "list", database_url=database_url).stdout.split("\t")
        assert listed[:3] == [key_id, "acme", "active"]
        revoked = gradwire("keys", "revoke", key_id, database_url=database_url)
        assert revoked.returncode == 0, revoked.stderr
        took = [refused_within(server.address, key, BOUND + 10) for server in (first, second)]
        assert max(took) <= BOUND + 2.0, took  # the documented bound, and a margin for a busy machine
        fresh = make_key("acme", database_url)
        with Client(second.address, token=fresh) as again:  # the tenant's model, through a new key
            assert [m.id for m in again.list_models()] == [model.id]


def test_without_authentication_the_first_log_line_says_so(database_url: str) -> None:
    with ServerProcess(database_url, auth="off") as server:
        server.wait_for_log("server started")
        assert server.logs[0]["message"] == AUTH_OFF
        assert server.logs[0]["level"] == "WARNING"
    with ServerProcess(database_url, auth="on") as server:
        started = server.wait_for_log("server started")
        assert started["auth"] is True
        assert all(entry["message"] != AUTH_OFF for entry in server.logs)


@pytest.mark.parametrize(("auth", "missing"), [("on", "TLS"), ("off", "authentication and TLS")])
def test_listening_beyond_loopback_unprotected_is_refused_unless_insecure(
    auth: str, missing: str, database_url: str
) -> None:
    serve = [GRADWIRE, "serve", "--address", "0.0.0.0:0", "--database-url", database_url, "--auth", auth]
    refused = subprocess.run(serve, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"gradwire: refusing to listen on 0.0.0.0:0 without {missing}: ")
    assert "pass --insecure " in line
    with ServerProcess(database_url, address="0.0.0.0:0", auth=auth, insecure="true") as server:
        assert server.wait_for_log("server started")["address"].startswith("0.0.0.0:")


def test_commands_that_only_read_create_no_database_and_name_the_one_they_read(tmp_path: Path) -> None:
    """Run from a folder where no server keeps its data, ``keys list`` once made an empty
    ``./data/gradwire.db`` and printed nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}  # the default database
    argv = {name: [GRADWIRE, *name.split()] for name in ("keys list", "tenants list")}
    for name, command in argv.items():
        refused = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert refused.returncode == 1, name
        assert f"there is no {tmp_path / 'data' / 'gradwire.db'}" in refused.stderr
        assert "nothing was created" in refused.stderr
        assert list(tmp_path.iterdir()) == []
    made = subprocess.run(
        [GRADWIRE, "keys", "create", "--tenant", "acme"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr  # a command that writes makes the database
    listed = subprocess.run(
        argv["keys list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert listed.returncode == 0
    assert listed.stdout.split("\t")[1] == "acme"
    assert listed.stderr == f"database sqlite:///{tmp_path / 'data' / 'gradwire.db'}\n"
