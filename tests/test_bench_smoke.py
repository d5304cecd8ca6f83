"""The benchmark script runs end to end (tiny sizes; no timing is asserted here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A benchmark run to its end; where it fails, its stderr says why (an exit status does not)."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_engine_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "engine.json"
    bench("bench.engine_bench", "--quick", "--no-torch", "--output", str(output))
    results = json.loads(output.read_text())
    for key in ("mlp784/sgd", "mlp784/adam", "mlp20/sgd", "mlp20/adam"):
        row = results[key]
        assert row["engine_samples_per_s"] > 0
        assert row["bare_samples_per_s"] > 0
        assert row["gemm_ceiling_samples_per_s"] > 0
    assert results["memory"]["dataset_bytes"] > 0


def test_service_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "service.json"
    run = bench("bench.service_bench", "--quick", "--output", str(output))
    results = json.loads(output.read_text())
    train = results["train"]
    assert train["service_samples_per_s"] > 0
    assert train["engine_samples_per_s"] > 0
    assert train["transfer_seconds"] > 0
    assert train["upload_seconds"] > 0
    assert train["load_seconds"] > 0
    assert results["predict"]["echo_bytes_per_s"] > 0
    assert results["predict"]["single_row_predict_p50_ms"] > 0

    upload = results["upload"]
    assert upload["upload_bytes_per_s"] > 0
    assert upload["echo_bytes_per_s"] > 0
    assert upload["upload_vs_echo"] > 0
    memory = results["memory"]
    assert memory["peak_bytes"] >= memory["idle_bytes"] > 0
    assert memory["dataset_bytes"] > 0
    assert memory["growth_over_dataset"] is not None
    assert memory["peak_over_dataset"] > 0

    backends = ["sqlite"]
    if "skipped" in results["postgresql"]:
        assert "PostgreSQL figures skipped" in run.stdout
    else:
        backends.append("postgresql")
    assert results["small"]["engine_samples_per_s"] > 0
    assert results["xor"]["engine_seconds"] > 0
    for backend in backends:
        assert results["small"][backend]["service_samples_per_s"] > 0
        assert results["small"][backend]["service_vs_engine"] > 0
        assert results["xor"][backend]["fit_seconds"] > 0
    for figure in (upload, train, memory, *(results[k][b] for k in ("small", "xor") for b in backends)):
        assert {"target", "meets_target"} <= figure.keys()


def test_service_benchmark_skips_an_unreachable_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.common import PostgresUnavailable, scratch_postgres

    with (
        pytest.raises(PostgresUnavailable, match=re.escape("127.0.0.1:1")),
        scratch_postgres("postgresql://postgres@127.0.0.1:1/postgres", "gradwire_bench_never"),
    ):
        pass


def test_scaling_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "scaling.json"
    bench("bench.scaling_bench", "--quick", "--output", str(output))
    sqlite = json.loads(output.read_text())["backends"]["sqlite"]
    assert set(sqlite["concurrency"]["seconds"]) == {"one_worker", "workers", "threads"}
    assert all(seconds > 0 for seconds in sqlite["concurrency"]["seconds"].values())
    assert sqlite["responsiveness"]["get_model"]["busy_ms"] > 0
    assert sqlite["fit"]["workers"]["fit_seconds"] > 0
    assert len(sqlite["memory"]["worker_idle_bytes"]) == sqlite["concurrency"]["cores"]
