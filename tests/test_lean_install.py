"""``pip install gradwire`` is the SDK and the client commands, on grpcio, protobuf and NumPy only:
the wheel is installed into a fresh virtual environment without extras, beside exactly what
requirements/client.txt locks, and there it trains and predicts through a real server (run from
the project's environment), its client commands work, and ``gradwire serve`` says what to install
instead of failing on an import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
CLIENT_LOCK = ROOT / "requirements" / "client.txt"
SERVER_ONLY = ("sqlalchemy", "alembic", "psycopg", "prometheus_client", "onnx")
"""What the server needs and the client must do without."""


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment with the gradwire wheel and its base dependencies only: its bin folder."""
    folder = tmp_path_factory.mktemp("lean")
    wheels = folder / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT)]
    subprocess.run([*build, "-w", str(wheels)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("gradwire-*.whl")
    venv.create(folder / "env", with_pip=True)
    bin_dir = folder / "env" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    for install in (["--require-hashes", "-r", str(CLIENT_LOCK)], [str(wheel)]):
        installed = subprocess.run([*pip, *install], capture_output=True, text=True, timeout=600)
        assert installed.returncode == 0, installed.stderr[-2000:]
    return bin_dir


def test_the_environment_is_the_client_lock_and_the_wheel(lean: Path) -> None:
    verified = run(lean, "python", str(ROOT / "requirements" / "locks.py"), "verify", "client")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = run(lean, "python", "-m", "pip", "show", "gradwire")
    assert "Version: 0.1.0" in shown.stdout


def run(bin_dir: Path, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120, **kwargs
    )


def test_the_base_install_has_none_of_the_servers_dependencies(lean: Path) -> None:
    probe = f"import importlib.util as u; print([m for m in {SERVER_ONLY!r} if u.find_spec(m)])"
    assert run(lean, "python", "-c", probe).stdout.strip() == "[]"


def test_the_sdk_and_the_client_commands_work_there(lean: Path, database_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from gradwire.client import Client
        layers = [{"kind": "dense", "units": 4, "activation": "tanh"},
                  {"kind": "dense", "units": 1, "activation": "sigmoid"}]
        spec = {"input_dim": 2, "layers": layers, "loss": "binary_crossentropy", "seed": 1}
        X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
        Y = np.array([[0], [1], [1], [0]], float)
        with Client(sys.argv[1]) as client:
            model = client.create_model(spec, name="lean")
            history = model.fit(X, Y, epochs=5, batch_size=4)
            print(model.id, len(history.history["loss"]), model.predict(X).shape)
        """
    )
    with ServerProcess(database_url) as server:
        done = run(lean, "python", "-c", script, server.address)
        assert done.returncode == 0, done.stderr
        model_id, epochs, shape = done.stdout.split(maxsplit=2)
        assert (epochs, shape.strip()) == ("5", "(4, 1)")
        listed = run(lean, "gradwire", "models", "list", "--server", server.address)
        assert listed.returncode == 0, listed.stderr
        assert model_id in listed.stdout


def test_serve_without_the_server_extra_says_what_to_install(lean: Path, tmp_path: Path) -> None:
    done = run(lean, "gradwire", "serve", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "gradwire: gradwire serve needs the server's dependencies: pip install 'gradwire[server]'"
    ]
