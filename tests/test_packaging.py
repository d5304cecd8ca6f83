"""The built wheel: everything under gradwire., the migrations and stubs included, nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_the_gradwire_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("gradwire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"gradwire"}
    for needed in (
        "gradwire/engine/__init__.py",
        "gradwire/v1/gradwire_pb2.py",
        "gradwire/v1/gradwire_pb2_grpc.py",
        "gradwire/v1/gradwire.proto",
        "gradwire/storage/migrations/env.py",
        "gradwire/storage/migrations/versions/0001_initial.py",
    ):
        assert needed in names, needed
