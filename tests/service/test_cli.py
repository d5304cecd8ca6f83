"""The gradwire command: database upgrade, refusals, and the client commands on a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import Running
from sqlalchemy import text

from gradwire.service.cli import main
from gradwire.storage import make_engine, open_store
from gradwire.storage.database import current_revision, head_revision

GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
SPEC = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 3, "activation": "identity", "init": "xavier_uniform"}],
    "loss": "squared_error",
}


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert current_revision(make_engine(url)) == head_revision()


def test_serve_refuses_an_out_of_date_database_naming_the_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = open_store(url)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    done = subprocess.run(
        [GRADWIRE, "serve", "--address", "127.0.0.1:0", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "gradwire db upgrade" in done.stderr


def test_client_commands(server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2))
    y = x @ np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]])
    np.savez(tmp_path / "data.npz", x=x, y=y)
    at = ["--server", server.address]

    assert main(["models", "create", "--spec", str(spec_file), "--name", "linear", *at]) == 0
    model_id = capsys.readouterr().out.strip()
    assert (
        main(
            [
                "train",
                model_id,
                "--data",
                str(tmp_path / "data.npz"),
                "--epochs",
                "40",
                "--optimizer",
                "adam",
                "--learning-rate",
                "0.05",
                "--validation-split",
                "0.25",
                *at,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "epoch 40/40" in captured.err  # the progress bar, one line per epoch
    assert "version 2" in captured.out
    assert (
        main(
            [
                "predict",
                model_id,
                "--inputs",
                str(tmp_path / "data.npz"),
                "--output",
                str(tmp_path / "out.npz"),
                *at,
            ]
        )
        == 0
    )
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert out["outputs"].shape == (64, 3)
    capsys.readouterr()
    assert main(["models", "show", model_id, *at]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["version"], shown["spec"]["loss"]) == ("linear", 2, "squared_error")
    assert main(["history", model_id, *at]) == 0
    table = capsys.readouterr().out
    assert "completed" in table
    assert [line.split()[0] for line in table.splitlines()[2:]] == [str(e) for e in range(1, 41)]
    assert main(["models", "delete", model_id, *at]) == 0
    capsys.readouterr()
    assert main(["models", "show", model_id, *at]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_bad_input_from_the_shell_prints_the_field(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SPEC, "loss": "hinge"}))
    assert main(["models", "create", "--spec", str(bad), "--server", server.address]) == 1
    assert "spec.loss" in capsys.readouterr().err
