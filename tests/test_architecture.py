"""The dependency arrows and the install layout, checked rather than hoped for.

import-linter (``make check``) enforces the arrows between gradwire's packages; this test adds
the one contract it cannot state: the engine imports nothing but NumPy and the standard library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def top_level_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_engine_imports_numpy_and_the_standard_library_only() -> None:
    outside = top_level_imports(ROOT / "engine") - set(sys.stdlib_module_names) - {"numpy"}
    assert outside == set()


def test_only_the_gradwire_namespace_is_installed(tmp_path: Path) -> None:
    """From a folder outside the checkout, the short source-folder names must not import."""
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('engine', 'service', 'storage', 'client', 'proto', 'tests', 'bench') "
        "if u.find_spec(m)]); import gradwire.engine"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_every_module_of_the_service_sits_in_a_layer_of_its_contract() -> None:
    """import-linter's layers bind only the modules inside them: a module dropped loose into
    service/ would escape every arrow, so each must live in a layer the contract names, and each
    layer must be a package of setuptools'."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layered,) = [c for c in contracts if c["type"] == "layers" and c["containers"] == ["gradwire.service"]]
    folders = {p.name for p in (ROOT / "service").iterdir() if p.is_dir() and p.name != "__pycache__"}
    loose = {p.name for p in (ROOT / "service").glob("*.py")} - {"__init__.py"}
    assert loose == set()
    assert folders == set(layered["layers"])
    packages = set(config["tool"]["setuptools"]["packages"])
    assert {f"gradwire.service.{layer}" for layer in layered["layers"]} <= packages


def test_the_vocabulary_names_every_stop_reason_the_engine_and_the_service_give() -> None:
    """The engine may not import the contract, so its stop reasons are spelled twice: here they
    are held to one list, and every one of them has a run status."""
    from gradwire.engine import STOP_REASONS
    from gradwire.service.execution.jobs import FAILURE_KINDS, STATUS_AT_STOP
    from gradwire.v1.vocabulary import StopReason

    assert set(STOP_REASONS) <= set(StopReason)
    assert set(STATUS_AT_STOP) == set(STOP_REASONS)
    assert set(FAILURE_KINDS.values()) <= set(StopReason)


def test_the_contract_and_the_estimators_name_every_optimiser_the_engine_has() -> None:
    """The SDK may not import the engine: the contract's optimiser names (which the command
    line offers) and the estimators' solvers are the engine's, held here."""
    from gradwire.client.sklearn import SOLVERS
    from gradwire.engine import OPTIMIZERS as ENGINE_OPTIMIZERS
    from gradwire.v1.vocabulary import OPTIMIZERS

    assert tuple(ENGINE_OPTIMIZERS) == OPTIMIZERS == SOLVERS
