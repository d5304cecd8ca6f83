"""``gradwire serve`` and ``gradwire db upgrade`` as real child processes: the database URL is shown
without its password, and every failure to start is one line on stderr and an exit code (1: it
failed, 2: what was given is wrong), never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
LAUNCHERS = {"command": [GRADWIRE], "module": [sys.executable, "-m", "gradwire.service.ops.cli"]}
"""The installed command, and its module run with ``python -m``: the two must behave alike."""
PASSWORD = "pw-never-shown"


def closed_port() -> int:
    """A port nothing listens on: bound, read, and closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    *arguments: str, env: dict[str, str] | None = None, launcher: str = "command"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LAUNCHERS[launcher], *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def failure(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The exit code and the one line on stderr of a command that must fail at once."""
    out, err = process.communicate(timeout=120)
    assert "Traceback" not in err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gradwire: ")
    return process.returncode, lines[0]


def start_failures(port: int, data_dir: Path) -> list[tuple[list[str], dict[str, str], int, tuple[str, ...]]]:
    """(arguments, environment, exit code, the words of the one line) of starts that must fail."""
    down = f"postgresql://gradwire:{PASSWORD}@127.0.0.1:{port}/gradwire"  # nothing listens there
    shown = f"database postgresql://gradwire:***@127.0.0.1:{port}/gradwire: "
    serve = ["serve", "--address", "127.0.0.1:0", "--data-dir", str(data_dir), "--auth", "off"]
    unparsable = down.replace(str(port), "not-a-port")
    return [
        ([*serve, "--database-url", down], {}, 1, (shown, "Connection refused")),
        (["db", "upgrade", "--database-url", down], {}, 1, (shown, "Connection refused")),
        ([*serve, "--database-url", unparsable], {}, 2, ("database URL (--database-url", "does not parse")),
        (serve, {"GRADWIRE_TRAIN_WORKERS": "two"}, 2, ("GRADWIRE_TRAIN_WORKERS='two': ", "a whole number")),
        ([*serve, "--train-workers", "0"], {"GRADWIRE_TRAIN_WORKERS": "two"}, 2, ("--train-workers 0: ",)),
    ]  # fmt: skip


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_every_failure_to_start_is_one_line_and_an_exit_code(tmp_path: Path, launcher: str) -> None:
    cases = start_failures(closed_port(), tmp_path)
    # All at once: each takes seconds to import.
    started = [start(*arguments, env=env, launcher=launcher) for arguments, env, _, _ in cases]
    for process, (arguments, env, code, words) in zip(started, cases, strict=True):
        status, line = failure(process)
        assert status == code, (arguments, env, line)
        assert all(word in line for word in words), (arguments, env, line)
        assert PASSWORD not in line
    assert not list(tmp_path.iterdir())  # refused before anything was made


def test_the_startup_line_and_db_upgrade_show_the_url_without_its_password(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password=PASSWORD)  # the test database trusts its clients: any password will do
    given, shown = url.render_as_string(hide_password=False), url.render_as_string(hide_password=True)

    upgraded = subprocess.run(
        [GRADWIRE, "db", "upgrade", "--database-url", given], capture_output=True, text=True, timeout=120
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == f"database {shown} is at the current schema\n"

    server = start("serve", "--address", "127.0.0.1:0", "--database-url", given, "--auth", "off")
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # blocks until the server has bound its port
        assert line.startswith("gradwire listening on 127.0.0.1:")
        assert line.endswith(f" (database {shown})\n")
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert PASSWORD not in upgraded.stdout + upgraded.stderr + line + out + err
