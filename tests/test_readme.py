"""The README's quickstart, run as written against a real `gradwire serve`, so it cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GRADWIRE = str(Path(sys.executable).with_name("gradwire"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``gradwire serve`` as a child process on a free port; yields its address."""
    process = subprocess.Popen(
        [
            GRADWIRE,
            "serve",
            "--address",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
            "--log-format",
            "text",
            "--auth",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the server has bound its port
        match = re.search(r"listening on (\S+)", line)
        assert match, f"unexpected first line from gradwire serve: {line!r}"
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0


def test_python_examples_run(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADWIRE_SERVER", served)
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert len(blocks) >= 2, "the README lost its Python examples"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_cli_quickstart_runs(served: str, tmp_path: Path) -> None:
    block = next(
        b for b in re.findall(r"```sh\n(.*?)```", README, re.DOTALL) if "gradwire models create" in b
    )
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("gradwire ")]
    env = {**os.environ, "GRADWIRE_SERVER": served}
    model_id = ""
    outputs = []
    for command in commands:
        rename = {
            "gradwire": GRADWIRE,
            "MODEL_ID": model_id,
            "predictions.csv": str(tmp_path / "predictions.csv"),
        }
        argv = [rename.get(word, word) for word in shlex.split(command)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
        if command.startswith("gradwire models create"):
            model_id = done.stdout.strip()
    assert "stopped: " in outputs[1]
    assert "version 2" in outputs[1]
    predictions = (tmp_path / "predictions.csv").read_text().split()
    assert [float(p) > 0.5 for p in predictions] == [False, True, True, False]
    assert model_id in outputs[-1]
