"""The Node client example (``examples/node``) against a real ``gradwire serve`` with
authentication on: ``npm ci`` from its lock file, then the example end to end (create, Train,
UploadDataset, StartRun + WatchRun, Predict, a decoded BadRequest), checked against what the
Python SDK reads from the same model; without a key it must fail, and say why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import google.rpc
import numpy as np
import pytest
from helpers import ServerProcess

from gradwire.client import Client

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
GOOGLEAPIS = str(Path(next(iter(google.rpc.__path__))).parents[1])  # holds google/rpc/status.proto

pytestmark = pytest.mark.skipif(not (NODE and NPM), reason="the Node example needs node and npm on PATH")

XOR = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)


@pytest.fixture(scope="module")
def installed() -> Path:
    """``npm ci``: exactly the locked packages, into examples/node/node_modules (git ignores it)."""
    argv = [str(NPM), "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    done = subprocess.run(
        argv, cwd=EXAMPLE, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return EXAMPLE


def example(address: str, *token: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [str(NODE), "example.js", address, *token]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GRADWIRE_", "GOOGLEAPIS_"))}
    return subprocess.run(
        argv, cwd=EXAMPLE, capture_output=True, text=True, timeout=60, env=environment | env, check=False
    )


def make_key(database_url: str) -> str:
    argv = [GRADWIRE, "keys", "create", "--tenant", "node", "--database-url", database_url]
    made = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_the_node_example_trains_predicts_and_decodes_error_details(installed: Path, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'gradwire.db'}"
    with ServerProcess(database_url, auth="on") as server:
        key = make_key(database_url)
        done = example(server.address, key, GOOGLEAPIS_PROTO_DIR=GOOGLEAPIS)
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        lines = done.stdout.splitlines()
        summary = json.loads(lines[-1].removeprefix("summary: "))

        train, run, predict, error = (summary[k] for k in ("train", "run", "predict", "error"))
        assert train["stop_reason"] == "max_epochs"
        assert train["epochs_run"] == train["progress_events"] == 300  # one progress event per epoch
        assert train["version"] == "2"  # int64 as a decimal string: proto-loader's longs: String
        assert (run["status"], run["epochs_done"], run["version"]) == ("completed", 100, "3")
        assert "train: epoch 300/300" in done.stdout
        assert "watch: run completed (max_epochs), 100 epochs, model version 3" in lines

        assert (predict["version"], predict["shape"], predict["dtype"]) == ("3", [4, 1], "FLOAT32")
        outputs = np.array(predict["outputs"])
        assert outputs.shape == (4, 1)
        assert ((outputs > 0) & (outputs < 1)).all()  # sigmoid probabilities
        assert predict["labels"] == [[0], [1], [1], [0]]  # XOR learnt
        with Client(server.address, token=key) as client:  # the bytes decoded as the SDK decodes them
            expected = client.model(summary["model_id"]).predict(XOR)
        np.testing.assert_array_equal(outputs, expected)

        assert error["code"] == "INVALID_ARGUMENT"
        fields = [violation["field"] for violation in error["violations"]]
        assert fields == ["spec.layers[0].units", "spec.loss"]
        assert "error: BadRequest field spec.loss: unknown value 'hinge'" in done.stdout

        # No key: UNAUTHENTICATED, exit 1. (The google/rpc protos found without GOOGLEAPIS_PROTO_DIR.)
        refused = example(server.address)
        assert refused.returncode == 1, refused.stdout
        assert "google/rpc protos from" in refused.stdout
        assert "failed (UNAUTHENTICATED)" in refused.stderr
