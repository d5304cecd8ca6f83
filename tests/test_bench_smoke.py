"""The benchmark script runs end to end (tiny sizes; no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_engine_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "engine.json"
    subprocess.run(
        [sys.executable, "-m", "bench.engine_bench", "--quick", "--no-torch", "--output", str(output)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(output.read_text())
    for key in ("mlp784/sgd", "mlp784/adam", "mlp20/sgd", "mlp20/adam"):
        row = results[key]
        assert row["engine_samples_per_s"] > 0
        assert row["bare_samples_per_s"] > 0
        assert row["gemm_ceiling_samples_per_s"] > 0
    assert results["memory"]["dataset_bytes"] > 0


def test_service_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "service.json"
    subprocess.run(
        [sys.executable, "-m", "bench.service_bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads(output.read_text())
    assert results["train"]["service_samples_per_s"] > 0
    assert results["train"]["transfer_seconds"] > 0
    assert results["predict"]["echo_bytes_per_s"] > 0
    assert results["predict"]["single_row_predict_p50_ms"] > 0
