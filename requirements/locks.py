"""The dependency locks: one file of exact versions and hashes per use, made from pyproject.toml.

    python requirements/locks.py compile [--upgrade]   re-resolve every lock (``make lock``)
    python requirements/locks.py sync NAME             make this interpreter's environment NAME's lock
    python requirements/locks.py verify NAME           does this environment equal NAME's lock?
    python requirements/locks.py check                 does every lock satisfy pyproject.toml?
    python requirements/locks.py latest VENV           the newest releases the ranges allow, tested

pyproject.toml keeps the ranges that ``pip install gradwire`` needs; the locks say exactly what
``make run``, ``make test``, CI and the image install, so a release elsewhere changes nothing here
until ``make lock`` takes it in. Every lock is a whole environment: the build tools and pip are
pinned too, and gradwire itself is installed from the source tree without its dependencies.

The locks are made by uv (``uv pip compile --universal``), one resolution valid on every platform
and every Python the project supports. ``dev`` is resolved first, and every other lock inside it,
so each version any lock names is one that the test suite ran against.

Only the standard library is imported at the top: ``sync`` and ``verify`` run in a fresh
environment before anything else is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROJECT = "gradwire"
TOOLS = ("pip",)
"""Pinned in every lock beside pyproject.toml's build requirements: the installer itself."""


@dataclass(frozen=True)
class Lock:
    name: str
    extras: tuple[str, ...]
    purpose: str

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.txt"


LOCKS = (  # dev first: every other lock is resolved within it
    Lock("dev", ("dev",), "make test, make check, make lock and CI"),
    Lock("server", ("server",), "make run and the image"),
    Lock("client", (), "pip install gradwire: the SDK and the client commands"),
    Lock("sklearn", ("sklearn",), "pip install 'gradwire[sklearn]'"),
    Lock("plot", ("plot",), "pip install 'gradwire[plot]'"),
    Lock("otel", ("otel",), "pip install 'gradwire[otel]' (the image adds it to server)"),
    Lock("ray", ("server", "ray"), "the server on a Ray cluster, its head and its workers"),
)
BY_NAME = {lock.name: lock for lock in LOCKS}


@dataclass(frozen=True)
class PeerLock:
    """The environment of a program gradwire's tests talk to that cannot share gradwire's
    environment, locked from its own ``requirements/NAME.in``; gradwire is not installed there."""

    name: str
    purpose: str

    @property
    def source(self) -> Path:
        return HERE / f"{self.name}.in"

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.txt"


PEERS = (PeerLock("triton", "tests/interop: tritonclient, whose protobuf cannot be gradwire's"),)


def pyproject() -> Mapping[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def python_floor() -> str:
    """The lowest Python pyproject.toml accepts (``>=3.11`` gives ``3.11``): the locks hold for it."""
    requires = str(pyproject()["project"]["requires-python"])  # type: ignore[index]
    return requires.removeprefix(">=").strip()


def tool_requirements() -> list[str]:
    return [*pyproject()["build-system"]["requires"], *TOOLS]  # type: ignore[index]


def direct_requirements(extras: Iterable[str]) -> list[str]:
    """pyproject.toml's requirements for gradwire with ``extras``, extras that name gradwire's own
    (``gradwire[server,otel]``) followed, and the tools every lock pins."""
    project = pyproject()["project"]
    found, todo, seen = [*project["dependencies"], *tool_requirements()], list(extras), set()  # type: ignore[index]
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:  # type: ignore[index]
            own = re.fullmatch(rf"{PROJECT}\[(.*)\]", text)
            if own:
                todo += [e.strip() for e in own.group(1).split(",") if e.strip() not in seen]
            else:
                found.append(text)
    return found


def normalise(name: str) -> str:
    """PEP 503's form of a distribution name: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- compile ------------------------------------------------------------------------------------


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        sys.exit("locks: uv is not installed here: it comes with the dev lock ('make test' installs it)")
    return found


def compile_lock(lock: Lock, upgrade: bool) -> None:
    """``uv pip compile`` of pyproject.toml's dependencies plus ``lock.extras`` into ``lock.path``."""
    command = [
        uv(), "pip", "compile", "pyproject.toml", "-",
        "--universal", "--fork-strategy", "fewest", "--python-version", python_floor(),
        "--generate-hashes", "--quiet", "--output-file", str(lock.path.relative_to(ROOT)),
        "--custom-compile-command", "make lock",
    ]  # fmt: skip
    command += [arg for extra in lock.extras for arg in ("--extra", extra)]
    if lock.name != LOCKS[0].name:
        command += ["--constraint", str(LOCKS[0].path.relative_to(ROOT))]
    if upgrade:
        command.append("--upgrade")
    tools = "\n".join(tool_requirements()) + "\n"
    subprocess.run(command, input=tools, text=True, check=True, cwd=ROOT)
    print(f"requirements/{lock.name}.txt: {len(pins(lock.path))} packages, for {lock.purpose}")


# --- reading a lock and an environment -----------------------------------------------------------


def pins(path: Path) -> dict[str, tuple[str, str]]:
    """A lock's ``name -> (version, marker)``; the marker is ``""`` where the pin always applies."""
    found: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if match:
            name, version, marker = match.groups()
            found[normalise(name)] = (version, marker or "")
    return found


def marker_holds(marker: str) -> bool:
    """Whether a PEP 508 marker holds here. packaging is not in every lock; pip always is, and it
    carries a copy of packaging, the same code that decided what it installed."""
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        from pip._vendor.packaging.markers import Marker  # type: ignore[assignment]
    return bool(Marker(marker).evaluate())


def expected(lock: Lock) -> dict[str, str]:
    """What the lock installs in this interpreter: its pins whose markers hold here."""
    return {name: version for name, (version, marker) in pins(lock.path).items() if marker_holds(marker)}


def installed() -> dict[str, str]:
    """Every distribution in this interpreter's environment, but the project itself."""
    found = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    found.pop(PROJECT, None)
    return found


@dataclass(frozen=True)
class Difference:
    missing: dict[str, str]
    extra: dict[str, str]
    changed: dict[str, tuple[str, str]]  # name -> (locked, installed)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed)

    def lines(self) -> Iterable[str]:
        yield from (f"  missing: {n}=={v}" for n, v in sorted(self.missing.items()))
        yield from (f"  not in the lock: {n}=={v}" for n, v in sorted(self.extra.items()))
        yield from (
            f"  {n}: {have} installed, {want} locked" for n, (want, have) in sorted(self.changed.items())
        )


def compare(want: Mapping[str, str], have: Mapping[str, str]) -> Difference:
    return Difference(
        missing={n: v for n, v in want.items() if n not in have},
        extra={n: v for n, v in have.items() if n not in want},
        changed={n: (want[n], have[n]) for n in want.keys() & have.keys() if want[n] != have[n]},
    )


# --- sync and verify -----------------------------------------------------------------------------


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check", *args], check=True)


def sync(lock: Lock) -> None:
    """Install exactly ``lock`` here: its pins, checked against its hashes, nothing resolved anew;
    then remove what it does not name, and install gradwire itself (editable, no dependencies)."""
    pip("install", "--require-hashes", "--no-deps", "-r", str(lock.path))
    surplus = compare(expected(lock), installed()).extra
    if surplus:
        pip("uninstall", "--yes", *sorted(surplus))
    pip("install", "--no-deps", "--no-build-isolation", "--editable", str(ROOT))
    verify(lock)


def verify(lock: Lock) -> None:
    difference = compare(expected(lock), installed())
    if difference:
        sys.exit(
            "\n".join([f"this environment differs from requirements/{lock.name}.txt:", *difference.lines()])
        )
    print(f"environment equals requirements/{lock.name}.txt: {len(expected(lock))} packages and gradwire")


def check() -> int:
    """Every lock pins every requirement pyproject.toml gives its use, inside its range; offline."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
    problems = []
    for lock in LOCKS:
        pinned = pins(lock.path)
        for requirement in map(Requirement, direct_requirements(lock.extras)):
            version, _ = pinned.get(normalise(requirement.name), ("", ""))
            if not version:
                problems.append(f"requirements/{lock.name}.txt pins no {requirement.name}")
            elif not requirement.specifier.contains(version, prereleases=True):
                problems.append(
                    f"requirements/{lock.name}.txt: {requirement.name}=={version} is outside {requirement}"
                )
    if problems:
        print(
            "\n".join([*problems, "the locks are older than pyproject.toml: run 'make lock'"]),
            file=sys.stderr,
        )
        return 1
    print(f"every lock satisfies pyproject.toml: {', '.join(lock.name for lock in LOCKS)}")
    return 0


# --- the newest releases -------------------------------------------------------------------------

FAST_SUITE = (
    "-m", "not slow",
    "--ignore=tests/process", "--ignore=tests/test_lean_install.py", "--ignore=tests/test_locks.py",
)  # fmt: skip
"""The suite's fast part: no training to a target, no server processes killed and restarted, and
not the locks' own tests (this environment is, on purpose, not the lock's)."""


def latest(venv: Path) -> int:
    """Install the newest releases pyproject.toml's ranges allow into a fresh ``venv``, run the fast
    part of the suite there, and where it fails, find which release (beside the lock) breaks it."""
    venv = venv.resolve()
    if venv in (ROOT, Path(sys.prefix).resolve()) or (venv.exists() and not (venv / "pyvenv.cfg").exists()):
        sys.exit(f"locks: {venv} is not a scratch virtual environment to replace")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    in_venv = [python, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    for install in (tool_requirements(), ["--editable", f"{ROOT}[dev]"]):
        if subprocess.run([*in_venv, "install", "--upgrade", *install]).returncode:
            print("check-latest: pip could not install the newest releases (above): no package index")
            print("reachable, or the ranges admit no set of releases that fit together")
            return 2
    report = subprocess.run([python, __file__, "newer"], check=True, capture_output=True, text=True).stdout
    newer: dict[str, list[str]] = json.loads(report)
    print("newest releases the ranges allow, beside the dev lock:")
    for name, (locked, new) in sorted(newer.items()):
        print(f"  {name}: {locked or 'not'} locked, {new} newest")
    if not newer:
        print("  none: the lock holds the newest releases")
    cache = ["-o", f"cache_dir={venv / 'pytest-cache'}"]
    tests = subprocess.run([python, "-m", "pytest", "-q", *cache, *FAST_SUITE], cwd=ROOT)
    if tests.returncode == 0:
        print("check-latest: the fast suite passes on the newest releases")
        return 0
    failed = venv / "pytest-cache" / "v" / "cache" / "lastfailed"
    first = failed.read_text()  # each --lf run below rewrites it: every one starts from these
    culprits = []
    for name, (locked, new) in sorted(newer.items()):
        failed.write_text(first)
        if locked and passes_with(in_venv, python, cache, name, locked, new):
            culprits.append(name)
    for name in culprits:
        locked, new = newer[name]
        print(f"check-latest: {name} {new} breaks the suite; it passes with the locked {locked}")
    if not culprits:
        print("check-latest: the suite fails on the newest releases, and no one release alone explains it")
    return 1


def passes_with(
    in_venv: Sequence[str], python: str, cache: Sequence[str], name: str, locked: str, new: str
) -> bool:
    """Whether the tests that failed pass once ``name`` alone goes back to its locked version."""
    subprocess.run([*in_venv, "install", "--no-deps", f"{name}=={locked}"], check=True)
    again = subprocess.run(
        [python, "-m", "pytest", "-q", "--lf", *cache, *FAST_SUITE], cwd=ROOT, capture_output=True
    )
    subprocess.run([*in_venv, "install", "--no-deps", f"{name}=={new}"], check=True)
    return again.returncode == 0


def newer() -> None:
    """Run inside the fresh environment: a JSON map of the packages whose version is not the dev
    lock's, ``name -> [locked, installed]`` (``locked`` is ``""`` for a package the lock lacks)."""
    want, have = expected(LOCKS[0]), installed()
    print(json.dumps({n: (want.get(n, ""), v) for n, v in have.items() if want.get(n) != v}))


# --- the command line ----------------------------------------------------------------------------


def compile_peer(peer: PeerLock, upgrade: bool) -> None:
    """``uv pip compile`` of ``peer.source`` (with pip) into ``peer.path``, on its own."""
    command = [
        uv(), "pip", "compile", str(peer.source.relative_to(ROOT)), "-",
        "--universal", "--python-version", python_floor(),
        "--generate-hashes", "--quiet", "--output-file", str(peer.path.relative_to(ROOT)),
        "--custom-compile-command", "make lock",
    ]  # fmt: skip
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, input="\n".join(TOOLS) + "\n", text=True, check=True, cwd=ROOT)
    print(f"requirements/{peer.name}.txt: {len(pins(peer.path))} packages, for {peer.purpose}")


def compile_all(args: argparse.Namespace) -> int:
    for lock in LOCKS:
        compile_lock(lock, args.upgrade)
    for peer in PEERS:
        compile_peer(peer, args.upgrade)
    return 0


COMMANDS = {  # name -> (what it does, its arguments, how it runs)
    "compile": ("re-resolve every lock from pyproject.toml", ("--upgrade",), compile_all),
    "sync": ("make this environment the lock's", ("lock",), lambda args: sync(BY_NAME[args.lock])),
    "verify": ("does this environment equal the lock?", ("lock",), lambda args: verify(BY_NAME[args.lock])),
    "check": ("does every lock satisfy pyproject.toml's ranges?", (), lambda args: check()),
    "latest": ("test the newest releases in a fresh environment", ("venv",), lambda args: latest(args.venv)),
    "newer": ("(inside that environment) what differs from the dev lock, as JSON", (), lambda args: newer()),
}
ARGUMENTS: dict[str, dict[str, object]] = {
    "--upgrade": {"action": "store_true", "help": "take the newest versions the ranges allow"},
    "lock": {"choices": list(BY_NAME)},
    "venv": {"type": Path, "help": "where to make the fresh environment (removed first)"},
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="requirements/locks.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, arguments, run) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        command.set_defaults(run=run)
        for argument in arguments:
            command.add_argument(argument, **ARGUMENTS[argument])  # type: ignore[arg-type]
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
