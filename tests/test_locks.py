"""The dependency locks (requirements/*.txt) and the tool that makes and checks them.

A fresh machine installs exactly what these files say, so they are checked against what they
promise: every lock within pyproject.toml's ranges and within the dev lock the suite runs on, the
generated protobuf code runnable on every release the ranges allow, every install in the build
files taken from a lock, and the environment check naming every difference it finds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
TOOL = LOCK_DIR / "locks.py"
LOCK_FILES = sorted(LOCK_DIR.glob("*.txt"))
GENERATED = ROOT / "proto" / "gradwire" / "v1"


def locks_module():  # the tool is a script, not part of the package: loaded from its file
    import importlib.util

    spec = importlib.util.spec_from_file_location("locks", TOOL)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["locks"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


locks = locks_module()


def logical_requirements(path: Path) -> dict[str, Requirement]:
    """A requirements file read the way pip reads it: continuation lines joined, options and
    comments dropped, each line a PEP 508 requirement."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    lines = [re.sub(r"\s--hash=\S+", "", line).split(" #")[0].strip() for line in joined.splitlines()]
    found = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {locks.normalise(r.name): r for r in found}


def test_the_lock_table_names_every_lock_file_and_nothing_else() -> None:
    assert {lock.path for lock in (*locks.LOCKS, *locks.PEERS)} == set(LOCK_FILES)
    assert locks.LOCKS[0].name == "dev"  # the one the others are resolved within
    assert all(peer.source.exists() for peer in locks.PEERS)  # each peer's lock is made from its .in


def test_a_peer_lock_pins_exactly_what_its_source_asks_for() -> None:
    for peer in locks.PEERS:
        pinned = locks.pins(peer.path)
        for requirement in logical_requirements(peer.source).values():
            version, _ = pinned.get(locks.normalise(requirement.name), ("", ""))
            assert requirement.specifier.contains(version), (peer.name, requirement, version)


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda p: p.name)
def test_reading_a_lock_agrees_with_packaging(path: Path) -> None:
    by_packaging = logical_requirements(path)
    by_tool = locks.pins(path)
    assert by_tool.keys() == by_packaging.keys()
    for name, (version, marker) in by_tool.items():
        requirement = by_packaging[name]
        assert str(requirement.specifier) == f"=={version}"
        assert (str(requirement.marker) if requirement.marker else "") == marker.replace("'", '"')


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda p: p.name)
def test_every_pin_has_a_hash_and_an_exact_version(path: Path) -> None:
    blocks = re.split(r"\n(?=\S)", path.read_text())
    pinned = [block for block in blocks if re.match(r"[A-Za-z0-9]", block)]
    assert pinned, f"{path.name} pins nothing"
    for block in pinned:
        assert "==" in block.split("\\")[0], block.splitlines()[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{block.splitlines()[0]} has no hash"


def test_every_version_a_lock_names_is_the_one_the_suite_runs_on() -> None:
    dev = locks.pins(LOCK_DIR / "dev.txt")
    for lock in locks.LOCKS[1:]:
        for name, (version, _) in locks.pins(lock.path).items():
            assert dev.get(name, ("absent",))[0] == version, f"{lock.name}.txt: {name}=={version}"


def test_every_use_locks_the_build_tools_and_pip() -> None:
    for lock in locks.LOCKS:
        assert {"pip", "setuptools", "wheel"} <= locks.pins(lock.path).keys(), lock.name


def test_the_locks_satisfy_pyproject_and_a_narrowed_range_is_caught(tmp_path: Path) -> None:
    """``locks.py check`` (run by make check) passes on the tree, and fails, naming the package,
    once pyproject.toml asks for a version no lock has."""
    passed = subprocess.run([sys.executable, str(TOOL), "check"], capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr
    copy = tmp_path / "tree"
    shutil.copytree(LOCK_DIR, copy / "requirements")
    text = (ROOT / "pyproject.toml").read_text()
    narrowed = text.replace('"sqlalchemy>=2.0.30,<2.2"', '"sqlalchemy>=2.0.30,<2.0.31"')
    assert narrowed != text
    (copy / "pyproject.toml").write_text(narrowed)
    failed = subprocess.run(
        [sys.executable, str(copy / "requirements" / "locks.py"), "check"], capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "server.txt: sqlalchemy==" in failed.stderr
    assert "run 'make lock'" in failed.stderr


def test_an_environment_is_compared_with_a_lock_name_by_name() -> None:
    """This environment is the dev lock's; against the server lock, everything only the dev lock
    has is named as not in the lock, and nothing is missing or of another version."""
    compared = subprocess.run([sys.executable, str(TOOL), "verify", "server"], capture_output=True, text=True)
    assert compared.returncode == 1
    named = set(re.findall(r"not in the lock: (\S+)==", compared.stderr))
    dev, server = locks.expected(locks.BY_NAME["dev"]), locks.expected(locks.BY_NAME["server"])
    assert named >= dev.keys() - server.keys()
    assert "missing" not in compared.stderr
    assert "locked" not in compared.stderr


def test_the_comparison_names_missing_surplus_and_changed_packages() -> None:
    difference = locks.compare({"a": "1", "b": "2", "c": "3"}, {"b": "2", "c": "4", "d": "5"})
    assert list(difference.lines()) == [
        "  missing: a==1",
        "  not in the lock: d==5",
        "  c: 4 installed, 3 locked",
    ]
    assert not locks.compare({"a": "1"}, {"a": "1"})


def grpc_stamp() -> str:
    """The grpcio-tools release that generated the stubs, as it stamped itself into them."""
    found = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", (GENERATED / "gradwire_pb2_grpc.py").read_text())
    assert found
    return found.group(1)


def minimum(requirement: str) -> Version:
    """The lowest version a range of pyproject.toml allows: its ``>=`` or ``~=`` bound."""
    bounds = [Version(s.version) for s in Requirement(requirement).specifier if s.operator in (">=", "~=")]
    assert len(bounds) == 1, requirement
    return bounds[0]


def test_the_generated_code_runs_on_every_release_the_ranges_allow() -> None:
    """The generated modules refuse a grpcio or protobuf older than the generator that made them;
    pyproject.toml's lower bounds must not admit one (``pip install gradwire`` would install a
    package that fails on import)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {Requirement(d).name: minimum(d) for d in dependencies}
    protobuf_stamp = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        (GENERATED / "gradwire_pb2.py").read_text(),
    )
    assert protobuf_stamp
    assert floors["grpcio"] >= Version(grpc_stamp())
    assert floors["protobuf"] >= Version(".".join(protobuf_stamp.groups()))


def test_the_generated_code_was_made_by_the_locked_generator() -> None:
    locked_tools = locks.pins(LOCK_DIR / "dev.txt")["grpcio-tools"][0]
    assert grpc_stamp() == locked_tools


def test_the_image_installs_from_the_locks_only() -> None:
    """Every pip command in the Dockerfile installs a lock with its hashes, or the wheel built
    here without dependencies; the wheel is built with the locked setuptools, not a fresh one."""
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    commands = [c.strip() for c in re.findall(r"pip (?:install|wheel)[^&\n]*", dockerfile)]
    assert commands
    for command in commands:
        locked = "--require-hashes" in command and "--no-deps" in command and "-r " in command
        own_wheel = "--no-deps" in command and "gradwire" in command and "-r " not in command
        built_here = command.startswith("pip wheel") and "--no-build-isolation" in command
        assert locked or own_wheel or built_here, command
    for name in re.findall(r"requirements/(\w+)\.txt", dockerfile):
        assert name in locks.BY_NAME, name
