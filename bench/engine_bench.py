"""``make bench``: the engine's training speed and memory, against references measured in the same run.

Workloads (synthetic data):

* ``mlp784``: 784-256-128-10 ReLU, softmax cross-entropy, batch 128, 60,000 rows, float32;
* ``mlp20``: 20-64-1 ReLU, squared error, batch 32, 10,000 rows, float32;
* ``online``: 4-5-3 sigmoid, squared error, batch 1 (online learning, the textbook's rule),
  150 iris-sized rows, float64, SGD only;

each trained with SGD and (but ``online``) Adam by

* ``engine``: :class:`gradwire.engine.Trainer` with everything on (history, per-layer gradient
  norms and update ratios, finiteness checks, metrics, shuffling by index);
* ``bare``: the minimal NumPy loop doing the same arithmetic (forward, backward, update) and
  nothing else;
* ``torch``: PyTorch on the CPU with the same layers, loss, optimiser and batches, when installed.

Contenders run interleaved, several rounds; each figure is the best of its rounds (on a shared,
noisy machine the fastest round is the least disturbed one). Beside them, the NumPy GEMM rate
gives the ceiling (the step's matrix products alone), and a child process measures how much the
engine's resident memory grows while training ``mlp784`` over its dataset. Each workload's targets
(:data:`TARGETS`) are checked against these same-run references. Results are printed and written to
``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import write_results
from gradwire.engine import Dense, Network, NetworkSpec, OptimizerConfig, TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results" / "engine.json"
LR = {"sgd": 0.01, "adam": 0.001}
B1, B2, EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple[int, ...]
    loss: str
    output: str
    batch: int
    rows: int
    epochs: int
    hidden: str = "relu"
    dtype: str = "float32"
    optimizers: tuple[str, ...] = ("sgd", "adam")


WORKLOADS = (
    Workload("mlp784", (784, 256, 128, 10), "softmax_crossentropy", "softmax", 128, 60_000, 2),
    Workload("mlp20", (20, 64, 1), "squared_error", "identity", 32, 10_000, 5),
    Workload("online", (4, 5, 3), "squared_error", "sigmoid", 1, 150, 40, "sigmoid", "float64", ("sgd",)),
)


@dataclass(frozen=True)
class Target:
    """A figure of the engine's against one reference from the same run: ``engine/reference ≥
    at_least`` for rates (``vs_bare``, ``vs_ceiling``), ``µs per step ≤ at_most`` (``us_per_step``)."""

    measure: str
    bound: float
    why: str

    def met(self, row: dict[str, float]) -> bool:
        value = row[self.measure]
        return value <= self.bound if self.measure == "us_per_step" else value >= self.bound

    def describe(self, row: dict[str, float]) -> str:
        sign = "≤" if self.measure == "us_per_step" else "≥"
        verdict = "met" if self.met(row) else "MISSED"
        name, unit = MEASURES[self.measure]
        value = f"{row[self.measure]:.3f}{unit}"
        return f"{name} {value} (target {sign} {self.bound}{unit}, {self.why}: {verdict})"


MEASURES = {
    "vs_ceiling": ("engine/ceiling", "×"),
    "vs_bare": ("engine/bare", "×"),
    "us_per_step": ("time a step", " µs"),
}
"""Each target's figure in words, and its unit: a ratio to a reference measured in the same run,
or microseconds."""


TARGETS = {
    "mlp784": (
        Target("vs_ceiling", 0.8, "within 80 % of its matrix products alone"),
        Target("vs_bare", 0.9, "within 10 % of a bare NumPy loop"),
    ),
    "mlp20": (Target("vs_bare", 1.0, "as fast as a bare NumPy loop"),),
    "online": (Target("us_per_step", 15.0, "one-sample steps"),),
}


def dataset(w: Workload, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs in the workload's dtype, generated in chunks so no float64 copy of float32 data ever
    exists; one-hot targets for several outputs, a smooth function of the inputs for one."""
    rng = np.random.default_rng(seed)
    X = np.empty((rows, w.sizes[0]), w.dtype)
    for start in range(0, rows, 4096):
        X[start : start + 4096] = rng.standard_normal((min(4096, rows - start), w.sizes[0]), w.dtype)
    if w.sizes[-1] > 1:
        classes = w.sizes[-1]
        labels = (X[:, :classes].argmax(axis=1) + rng.integers(0, 2, rows)) % classes
        Y = np.eye(classes, dtype=w.dtype)[labels]
    else:
        Y = (np.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]).astype(w.dtype)
    return X, Y


def spec_for(w: Workload) -> NetworkSpec:
    init = "he_normal" if w.hidden == "relu" else "xavier_uniform"
    hidden = [Dense(units, w.hidden, init) for units in w.sizes[1:-1]]
    return NetworkSpec(
        w.sizes[0], (*hidden, Dense(w.sizes[-1], w.output, "xavier_uniform")), w.loss, w.dtype, 0
    )


# ---------------------------------------------------------------------------------- contenders


def run_engine(w: Workload, opt: str, X: np.ndarray, Y: np.ndarray, epochs: int) -> float:
    config = TrainConfig(epochs=epochs, batch_size=w.batch, optimizer=OptimizerConfig(opt, LR[opt]), seed=1)
    trainer = Trainer(Network(spec_for(w)), config)
    start = time.perf_counter()
    trainer.fit(X, Y)
    return time.perf_counter() - start


def _activate(z: np.ndarray, name: str) -> None:
    """The activation in place, as plainly as NumPy allows."""
    if name == "relu":
        np.maximum(z, 0, out=z)
    elif name == "sigmoid":
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1
        np.reciprocal(z, out=z)
    elif name == "softmax":
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)


def _derivative(a: np.ndarray, name: str) -> np.ndarray:
    """g′(in) from the activation's output ``a``."""
    return a > 0 if name == "relu" else a * (1 - a)


def run_bare(w: Workload, opt: str, X: np.ndarray, Y: np.ndarray, epochs: int) -> float:
    """Forward, backward and update for each minibatch: the arithmetic and nothing else."""
    net = Network(spec_for(w))  # the same initial weights; only the arrays are used
    params = [p.copy() for p in net.params]
    m = [np.zeros_like(p) for p in params]
    s = [np.zeros_like(p) for p in params]
    rng = np.random.default_rng(1)
    n, t = len(X), 0
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n)
        for begin in range(0, n, w.batch):
            idx = order[begin : begin + w.batch]
            x, y = X[idx], Y[idx]
            acts = [x]
            for i in range(0, len(params), 2):
                z = acts[-1] @ params[i]
                z += params[i + 1]
                _activate(z, w.hidden if i + 2 < len(params) else w.output)
                acts.append(z)
            delta = acts[-1] - y  # the fused output error of identity or softmax outputs
            if w.output == "sigmoid":
                delta *= _derivative(acts[-1], w.output)
            delta /= len(x)
            grads: list[np.ndarray] = []
            for layer in range(len(acts) - 2, -1, -1):
                grads[:0] = [acts[layer].T @ delta, delta.sum(axis=0)]
                if layer:
                    delta = delta @ params[2 * layer].T
                    delta *= _derivative(acts[layer], w.hidden)
            t += 1
            for j, g in enumerate(grads):
                if opt == "sgd":
                    params[j] -= LR[opt] * g
                else:
                    m[j] *= B1
                    m[j] += (1 - B1) * g
                    s[j] *= B2
                    s[j] += (1 - B2) * (g * g)
                    denom = np.sqrt(s[j])
                    denom *= 1 / (1 - B2**t) ** 0.5
                    denom += EPS
                    params[j] -= (LR[opt] / (1 - B1**t)) * m[j] / denom
    return time.perf_counter() - start


def run_torch(w: Workload, opt: str, X: np.ndarray, Y: np.ndarray, epochs: int) -> float:
    import torch

    torch.manual_seed(1)
    modules = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}
    layers: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(w.sizes, w.sizes[1:], strict=False)):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        last = i == len(w.sizes) - 2
        if not last or w.output == "sigmoid":  # softmax is inside CrossEntropyLoss
            layers.append(modules[w.output if last else w.hidden]())
    model = torch.nn.Sequential(*layers).to(getattr(torch, w.dtype))
    optimizer = (
        torch.optim.SGD(model.parameters(), LR[opt])
        if opt == "sgd"
        else torch.optim.Adam(model.parameters(), LR[opt], betas=(B1, B2), eps=EPS)
    )
    Xt = torch.from_numpy(X)
    if w.loss == "softmax_crossentropy":
        Yt, loss_fn = torch.from_numpy(Y.argmax(axis=1)), torch.nn.CrossEntropyLoss()
    else:
        Yt, loss_fn = torch.from_numpy(Y), torch.nn.MSELoss()
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(Xt), generator=generator)
        for begin in range(0, len(Xt), w.batch):
            idx = order[begin : begin + w.batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(Xt[idx]), Yt[idx]).backward()
            optimizer.step()
    return time.perf_counter() - start


def torch_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    torch.set_num_threads(os.cpu_count() or 1)
    return True


# ---------------------------------------------------------------------------------- references


def gemm_ceiling(w: Workload, repeats: int) -> tuple[float, float]:
    """The matrix products of one training step alone, timed with NumPy: ``(samples/s, GFLOP/s)``.

    Per layer: the forward ``x W``, the weight gradient ``xᵀ Δ`` and, past the first layer, the
    input gradient ``Δ Wᵀ``. No training loop can beat this rate with the same BLAS.
    """
    rng = np.random.default_rng(0)
    shapes = list(zip(w.sizes, w.sizes[1:], strict=False))
    xs = [rng.standard_normal((w.batch, i), w.dtype) for i, _ in shapes]
    ds = [rng.standard_normal((w.batch, o), w.dtype) for _, o in shapes]
    ws = [rng.standard_normal((i, o), w.dtype) for i, o in shapes]
    flops = sum(2 * w.batch * i * o * (3 if k else 2) for k, (i, o) in enumerate(shapes))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(50):
            for k, (x, d, W) in enumerate(zip(xs, ds, ws, strict=True)):
                x @ W
                x.T @ d
                if k:
                    d @ W.T
        best = min(best, (time.perf_counter() - start) / 50)
    return w.batch / best, flops / best / 1e9


def memory_probe(rows: int) -> dict[str, float]:
    """In a fresh process: resident-size growth while the engine trains one epoch of mlp784."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.engine_bench", "--memory-child", str(rows)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(rows: int) -> None:
    w = WORKLOADS[0]
    X, Y = dataset(w, rows)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    before = _rss_kib("VmRSS")
    run_engine(w, "adam", X, Y, 1)
    growth = (_rss_kib("VmHWM") - before) * 1024
    data = X.nbytes + Y.nbytes
    print(json.dumps({"dataset_bytes": data, "growth_bytes": growth, "growth_fraction": growth / data}))


# ---------------------------------------------------------------------------------- driver


def measure(
    w: Workload, opt: str, contenders: dict[str, Callable[..., float]], rows: int, epochs: int, rounds: int
) -> dict[str, float]:
    X, Y = dataset(w, rows)
    for run in contenders.values():  # warm-up: caches, BLAS threads, allocator
        run(w, opt, X[: w.batch * 20], Y[: w.batch * 20], 1)
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            seconds[name].append(run(w, opt, X, Y, epochs))
    # The fastest round is the one least disturbed by the rest of the machine.
    return {name: rows * epochs / min(times) for name, times in seconds.items()}


def summarise(w: Workload, rate: dict[str, float], ceiling: float, gflops: float) -> dict[str, object]:
    row: dict[str, object] = {f"{k}_samples_per_s": v for k, v in rate.items()}
    row |= {f"{k}_us_per_step": 1e6 * w.batch / v for k, v in rate.items()}
    row |= {"gemm_ceiling_samples_per_s": ceiling, "gemm_gflops": gflops}
    row["us_per_step"] = row["engine_us_per_step"]
    row["vs_bare"] = rate["engine"] / rate["bare"]
    row["vs_ceiling"] = rate["engine"] / ceiling
    if "torch" in rate:
        row["vs_torch"] = rate["engine"] / rate["torch"]
    measured = {k: v for k, v in row.items() if isinstance(v, float)}
    row["targets"] = {
        t.measure: {"bound": t.bound, "why": t.why, "met": t.met(measured)} for t in TARGETS[w.name]
    }
    return row


def describe(w: Workload, row: dict[str, object]) -> str:
    per = "µs/step" if w.batch == 1 else "/s"
    unit = "_us_per_step" if w.batch == 1 else "_samples_per_s"
    figures = "  ".join(
        f"{k.split('_')[0]} {v:,.1f}{per}" if w.batch == 1 else f"{k.split('_')[0]} {v:,.0f}{per}"
        for k, v in row.items()
        if k.endswith(unit) and isinstance(v, float)
    )
    measured = {k: v for k, v in row.items() if isinstance(v, float)}
    text = f"{figures} ({row['gemm_gflops']:.0f} GFLOP/s)  engine/bare {row['vs_bare']:.3f}"
    if w.batch > 1:  # at one sample a step, the products are not what bounds a step
        text += f"  engine/ceiling {row['vs_ceiling']:.3f}"
    if "vs_torch" in row:
        text += f"  engine/torch {row['vs_torch']:.2f}"
    return text + "".join(f"\n        {t.describe(measured)}" for t in TARGETS[w.name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the speed")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--workload", choices=[w.name for w in WORKLOADS], action="append", help="only these (default: all)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    contenders: dict[str, Callable[..., float]] = {"engine": run_engine, "bare": run_bare}
    if not args.no_torch and torch_available():
        contenders["torch"] = run_torch
    rounds = 1 if args.quick else args.rounds
    results: dict[str, object] = {
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "torch": "torch" in contenders,
    }
    for w in (w for w in WORKLOADS if not args.workload or w.name in args.workload):
        rows = min(2_000, w.rows) if args.quick else w.rows
        ceiling, gflops = gemm_ceiling(w, 5)
        for opt in w.optimizers:
            rate = measure(w, opt, contenders, rows, 1 if args.quick else w.epochs, rounds)
            row = summarise(w, rate, ceiling, gflops)
            results[f"{w.name}/{opt}"] = row
            print(f"{w.name:7s} {opt:5s} {describe(w, row)}", flush=True)
    memory = memory_probe(2_000 if args.quick else WORKLOADS[0].rows)
    results["memory"] = memory
    print(
        f"memory: training mlp784 grew the process by {memory['growth_bytes'] / 2**20:.1f} MiB, "
        f"{100 * memory['growth_fraction']:.1f}% of the {memory['dataset_bytes'] / 2**20:.0f} MiB dataset "
        "(target < 25%)"
    )
    write_results(args.output, results, args.quick)


if __name__ == "__main__":
    main()
