"""Where a training step's time goes: ``python -m bench.profile_engine [--workload online|mlp20|mnist]``.

For each workload the script prints µs per step by category and each category's share of the
step, from three kinds of timing (``time.perf_counter``, median over rounds):

1. **whole step**: :meth:`Trainer.fit` over whole epochs divided by the steps taken, the figure
   issue 10 ("Engine speed") lowered; it stays valid whatever changes inside ``engine/``;
2. **phases**: a copy of ``Trainer._run_epoch`` / ``_step`` that calls the same engine objects in
   the same order, with a clock read between phases (gather, forward, loss and output error,
   backward, gradient statistics, commit/clip, optimiser, update statistics, metric, loop). It
   mirrors ``engine/training.py`` as it is after issue 10 and must be updated with the engine:
   after a change there, read only the whole-step figure until it is;
3. **kernels**: the NumPy operations inside forward and backward (GEMMs, element-wise passes),
   called as the layers call them and timed alone on arrays of the step's shapes, which split
   the forward and backward phases into arithmetic and the Python around it.

The categories add up to the step: their sum is printed beside the whole-step figure. The
profile from before issue 10, with the levers then timed against that step, is in
docs/benchmarks.md (the script that took it: commit c7f4fbd).

``--cprofile`` adds call counts per step (the standard library's profiler). ``--loop SECONDS``
only trains, as a target for a sampling profiler; ``--pyspy FILE`` summarises a py-spy raw file::

    py-spy record --native -r 500 -f raw -o /tmp/online.txt -- \\
        .venv/bin/python -m bench.profile_engine --workload online --loop 20
    .venv/bin/python -m bench.profile_engine --pyspy /tmp/online.txt
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from bench import engine_bench as bench
from gradwire.engine import Network, OptimizerConfig, TrainConfig, Trainer
from gradwire.engine.data import batch_bounds, batch_groups
from gradwire.engine.layers import Cache, DenseLayer, LogitDenseLayer
from gradwire.engine.training import _EpochStats

Array = np.ndarray


@dataclass(frozen=True)
class Workload(bench.Workload):
    """A benchmark workload (its layers, loss, dtype, batch, rows, and epochs per timed round),
    profiled with one optimiser; ``reps`` is the calls per timing of one operation."""

    optimizer: str = "sgd"
    lr: float = 0.01
    reps: int = 1000

    @property
    def title(self) -> str:
        sizes = "-".join(map(str, self.sizes))
        return (
            f"{self.name}: {sizes} {self.hidden}/{self.output}, {self.loss}, batch {self.batch}, "
            f"{self.dtype}, {self.optimizer}"
        )


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "online", (4, 5, 3), "squared_error", "sigmoid", batch=1, rows=150, epochs=20,
            hidden="sigmoid", dtype="float64", optimizer="sgd", lr=0.1, reps=3000,
        ),
        Workload(
            "mlp20", (20, 64, 1), "squared_error", "identity", batch=32, rows=10_016, epochs=2,
            optimizer="adam", lr=1e-3, reps=2000,
        ),
        Workload(
            "mnist", (784, 256, 128, 10), "softmax_crossentropy", "softmax", batch=128, rows=12_800,
            epochs=1, optimizer="adam", lr=1e-3, reps=30,
        ),
    )
}  # fmt: skip


def dataset(w: Workload) -> tuple[Array, Array]:
    """The benchmark's data for ``w``, in the network's dtype."""
    return bench.dataset(w, w.rows)


def network(w: Workload) -> Network:
    return Network(bench.spec_for(w))


def trainer(w: Workload) -> Trainer:
    config = TrainConfig(
        epochs=w.epochs, batch_size=w.batch, optimizer=OptimizerConfig(w.optimizer, w.lr), seed=1
    )
    return Trainer(network(w), config)


def per_call(fn: Callable[[], object], reps: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of the mean seconds of one ``fn()``, less an empty call's."""

    def loop(f: Callable[[], object]) -> float:
        start = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - start) / reps

    empty = statistics.median(loop(lambda: None) for _ in range(rounds))
    return max(statistics.median(loop(fn) for _ in range(rounds)) - empty, 0.0)


# ------------------------------------------------------------------------------- whole step


def time_fit(w: Workload, X: Array, Y: Array) -> float:
    """Seconds per step of :meth:`Trainer.fit`, everything on, over ``w.epochs`` epochs."""
    tr = trainer(w)
    start = time.perf_counter()
    tr.fit(X, Y)
    steps = w.epochs * -(-len(X) // w.batch)
    return (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------------- phases

PHASES = (
    "gather",
    "forward",
    "output_error",
    "backward",
    "grad_stats",
    "commit_clip",
    "optimizer",
    "update_stats",
    "metric",
    "loop_epoch",
)
GATHER, FORWARD, OUTPUT_ERROR, BACKWARD, GRAD_STATS, COMMIT_CLIP, OPTIMIZER, UPDATE_STATS, METRIC, LOOP = (
    range(len(PHASES))
)
STEP_PHASES = (
    LOOP,
    GATHER,
    FORWARD,
    OUTPUT_ERROR,
    BACKWARD,
    GRAD_STATS,
    COMMIT_CLIP,
    OPTIMIZER,
    UPDATE_STATS,
)
"""Where the intervals of one step go, in order: the loop up to the step, the slicing of its rows
and the call of :func:`phase_step`, then the phases between that function's clock reads."""


@dataclass
class PhaseLedger:
    """Seconds charged to each phase, and the intervals they came in (each holds a clock read)."""

    seconds: list[float] = field(default_factory=lambda: [0.0] * len(PHASES))
    laps: list[int] = field(default_factory=lambda: [0] * len(PHASES))

    def charge(self, phases: Sequence[int], times: Sequence[float]) -> None:
        """The interval from ``times[k]`` to ``times[k + 1]`` goes to ``phases[k]``."""
        for phase, (t_a, t_b) in zip(phases, pairwise(times), strict=True):
            self.seconds[phase] += t_b - t_a
            self.laps[phase] += 1


def clock_cost() -> float:
    """Seconds one ``perf_counter()`` read adds to the phase it lands in."""
    clock = time.perf_counter

    def reads() -> None:
        clock()
        clock()
        clock()
        clock()
        clock()
        clock()
        clock()
        clock()
        clock()
        clock()

    return per_call(reads, 20_000) / 10


def phase_epoch(
    tr: Trainer, X: Array, Y: Array, ledger: PhaseLedger, should_stop: Callable[[], bool] | None = None
) -> int:
    """One epoch of ``Trainer._run_epoch`` as engine/training.py has it after issue 10 (engine
    speed), the same calls in the same order, with a clock read between phases charged to
    ``ledger``; returns the steps. It must be updated with the engine.

    All rows train, shuffled (the workloads' configurations). A stop request or a non-finite
    value raises where the engine would end the epoch early. The call of :func:`phase_step` and
    the slicing of its arguments are charged to gather, as the engine's call of ``_step``."""
    net, cfg = tr.network, tr.config
    clock = time.perf_counter
    start = clock()
    order = tr.rng.permutation(len(X))
    lr = tr.schedule.rate(tr.epoch)
    stats = _EpochStats(len(tr.layer_paths), net.loss.metric, lr)
    bounds = list(batch_bounds(len(X), cfg.batch_size, net.min_training_rows))
    steps = 0
    mark = clock()
    ledger.charge((LOOP,), (start, mark))
    for group in batch_groups(bounds, tr.batches_per_group):
        t0 = clock()
        first, last = group[0][0], group[-1][1]
        take = order[first:last]
        xs = X[take].astype(net.dtype, copy=False)
        ys = Y[take].astype(net.dtype, copy=False)
        outputs = np.empty_like(ys)
        ledger.charge((LOOP, GATHER), (mark, t0, clock()))
        mark = clock()
        for begin, end in group:
            if should_stop is not None and should_stop():
                raise RuntimeError("stop requested")
            t0 = clock()
            batch = slice(begin - first, end - first)
            times = phase_step(tr, xs[batch], ys[batch], lr, stats, outputs[batch])
            ledger.charge(STEP_PHASES, (mark, t0, *times))
            steps += 1
            mark = clock()  # the bookkeeping above is the profiler's, not the engine's
        t0 = clock()
        stats.metric.update(outputs, ys)
        ledger.charge((LOOP, METRIC), (mark, t0, clock()))
        mark = clock()
    if not np.isfinite(net.flat).all():
        raise FloatingPointError("weights")
    tr._close_epoch(stats, None, 0.0)  # in fit, after _run_epoch: charged to the loop too
    ledger.charge((LOOP,), (mark, clock()))
    return steps


def phase_step(
    tr: Trainer, xb: Array, yb: Array, lr: float, stats: _EpochStats, outputs: Array
) -> tuple[float, ...]:
    """``Trainer._step`` (training.py after issue 10) with a clock read at its start and after each
    of the phases in :data:`STEP_PHASES` from forward on: the reads. It must be updated with the engine."""
    clock = time.perf_counter
    t0 = clock()
    net, g = tr.network, tr.grad_flat
    a, caches = net.forward(xb, training=True)
    t1 = clock()
    loss, delta = net.output_error(a, caches, yb)
    if not math.isfinite(loss):
        raise FloatingPointError("loss")
    t2 = clock()
    net.backward(caches, delta, tr.grad_views)
    t3 = clock()
    grad_sq = [float(share.dot(share)) for share in tr.grad_segments]
    total = sum(grad_sq)
    if not math.isfinite(total):
        raise FloatingPointError("gradient")
    t4 = clock()
    net.commit(caches)
    clip, scale = tr.config.clip_norm, 1.0
    if clip is not None and total > clip * clip:
        scale = clip / math.sqrt(total)
        g *= scale
    t5 = clock()
    u = tr.optimizer.step(net.flat, g, lr)
    net.flat -= u
    t6 = clock()
    if tr.optimizer.scales_gradient:
        factor = (lr * scale) ** 2
        update_sq = [factor * sq for sq in grad_sq]
    else:
        update_sq = [float(share.dot(share)) for share in (u[s] for s in tr.segments)]
    stats.add(loss, len(xb), grad_sq, update_sq)
    outputs[...] = a
    return t0, t1, t2, t3, t4, t5, t6, clock()


def time_phases(w: Workload, X: Array, Y: Array) -> dict[str, float]:
    """Seconds per step by phase, each less the clock reads that land in it."""
    tr = trainer(w)
    ledger = PhaseLedger()
    steps = 0
    for _ in range(w.epochs):
        with np.errstate(over="ignore", invalid="ignore"):  # as fit runs an epoch
            steps += phase_epoch(tr, X, Y, ledger)
    tick = clock_cost()
    return {
        name: max((seconds - laps * tick) / steps, 0.0)
        for name, seconds, laps in zip(PHASES, ledger.seconds, ledger.laps, strict=True)
    }


# ------------------------------------------------------------------------------------ kernels

KERNELS = ("fwd_gemm", "fwd_elem", "bwd_gemm", "bwd_elem")


@dataclass
class StepArrays:
    """One step's arrays, as the engine makes them: the forward pass, its targets, a Δ per layer."""

    net: Network
    yb: Array
    a: Array  # the network's output
    caches: list[Cache]
    deltas: list[Array]  # each layer's Δ (∂L/∂z), of a plausible size
    grads: list[list[Array]]  # gradient views grouped by layer, as backward writes them


def step_arrays(w: Workload, X: Array, Y: Array) -> StepArrays:
    tr = trainer(w)
    net = tr.network
    xb, yb = X[: w.batch].copy(), Y[: w.batch].copy()
    a, caches = net.forward(xb, training=True)
    rng = np.random.default_rng(2)
    deltas = [(0.01 * rng.standard_normal(c[1].shape)).astype(net.dtype) for c in caches]
    return StepArrays(net, yb, a, caches, deltas, tr.grad_views)


def time_kernels(s: StepArrays, reps: int) -> dict[str, float]:
    """Seconds per step of the arithmetic inside forward and backward, each op timed alone; and
    ``out_error``, the loss and Δ functions that ``output_error`` calls."""
    out = dict.fromkeys(KERNELS, 0.0)
    for i in range(len(s.net.layers)):
        times = dense_kernels(s, i, reps)
        out = {k: out[k] + times[k] for k in KERNELS}
    return out | {"out_error": output_error_kernels(s, reps)}


def dense_kernels(s: StepArrays, i: int, reps: int) -> dict[str, float]:
    """Layer ``i``'s kernels as :class:`DenseLayer` calls them: ``need_input_grad`` is ``i > 0``,
    and a hidden layer's backward starts with its activation's derivative."""
    layer = s.net.layers[i]
    assert isinstance(layer, DenseLayer)
    x, a = s.caches[i][0], s.caches[i][1]
    W, b_row, act = layer.W, layer.b.reshape(1, -1), layer.activation
    d, (gW, gb) = s.deltas[i], s.grads[i]
    z, buf = x.dot(W), np.empty_like(d)
    keeps_logits = isinstance(layer, LogitDenseLayer)

    def bias() -> None:
        nonlocal z
        z += b_row

    def activate() -> None:  # in place, but on a copy where the layer keeps its logits
        if keeps_logits:
            act.forward(z.copy())
        else:
            act.forward(z)

    def column_sums() -> None:  # inline in backward_from_delta: one row copied, more reduced
        if len(d) == 1:
            gb[...] = d[0]
        else:
            np.add.reduce(d, axis=0, out=gb)

    def fresh() -> None:  # the derivative overwrites its ∂L/∂a: timed on a copy, less the copy
        np.copyto(buf, d)

    def derivative() -> None:
        np.copyto(buf, d)
        act.backward(a, buf)

    hidden = i < len(s.net.layers) - 1
    return {
        "fwd_gemm": per_call(lambda: x.dot(W), reps),
        "fwd_elem": per_call(bias, reps) + per_call(activate, reps),
        "bwd_gemm": per_call(lambda: x.T.dot(d, out=gW), reps)
        + (per_call(lambda: d.dot(W.T), reps) if i > 0 else 0.0),
        "bwd_elem": per_call(column_sums, reps)
        + (max(per_call(derivative, reps) - per_call(fresh, reps), 0.0) if hidden else 0.0),
    }


def output_error_kernels(s: StepArrays, reps: int) -> float:
    """Seconds of :meth:`Network.output_error`'s loss and Δ, called as it calls them."""
    net, a, y = s.net, s.a, s.yb
    if net.logit_loss is not None and net.fused_delta is not None:
        logit_loss, fused_delta, z = net.logit_loss, net.fused_delta, s.caches[-1][2]
        return per_call(lambda: (logit_loss(z, y), fused_delta(a, y)), reps)
    value_and_gradient = net.loss.shared or net.loss.value_and_gradient
    backward = net.output_layer.activation.backward
    return per_call(lambda: backward(a, value_and_gradient(a, y)[1]), reps)


# ------------------------------------------------------------------------------------ report

ROWS = (
    ("forward GEMMs (x·W)", "fwd_gemm"),
    ("backward GEMMs (xᵀΔ, ΔWᵀ)", "bwd_gemm"),
    ("bias + activation (forward)", "fwd_elem"),
    ("activation derivatives + ∂b", "bwd_elem"),
    ("loss + output error Δ", "output_error"),
    ("optimiser update + w ← w − u", "optimizer"),
    ("gradient statistics, outputs kept", "stats"),
    ("metric (once per group)", "metric"),
    ("gather + cast, per-step slices", "gather"),
    ("Python in forward/backward", "python"),
    ("loop, commit/clip, epoch close", "rest"),
)


def categories(phases: dict[str, float], kernels: dict[str, float]) -> dict[str, float]:
    """The rows of :data:`ROWS`: they add up to the phases, hence to the step."""
    fwd = kernels["fwd_gemm"] + kernels["fwd_elem"]
    bwd = kernels["bwd_gemm"] + kernels["bwd_elem"]
    return {
        **{k: kernels[k] for k in KERNELS},
        "output_error": phases["output_error"],
        "optimizer": phases["optimizer"],
        "stats": phases["grad_stats"] + phases["update_stats"],
        "metric": phases["metric"],
        "gather": phases["gather"],
        "python": max(phases["forward"] - fwd, 0.0) + max(phases["backward"] - bwd, 0.0),
        "rest": phases["commit_clip"] + phases["loop_epoch"],
    }


def profile(w: Workload, rounds: int) -> dict[str, float]:
    X, Y = dataset(w)
    time_fit(w, X[: w.batch * 20], Y[: w.batch * 20])  # warm-up: caches, BLAS threads, allocator
    arrays = step_arrays(w, X, Y)
    runs: dict[str, list[float]] = {}
    for _ in range(rounds):
        kernels = time_kernels(arrays, w.reps)
        row = {"fit": time_fit(w, X, Y), "out_error": kernels["out_error"]}
        row |= categories(time_phases(w, X, Y), kernels)
        for key, value in row.items():
            runs.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in runs.items()}


def report(w: Workload, r: dict[str, float]) -> None:
    us = 1e6
    total = sum(r[key] for _, key in ROWS)
    print(f"\n{w.title}")
    print(f"  {'category':34s} {'µs/step':>9s} {'share':>7s}")
    for label, key in ROWS:
        print(f"  {label:34s} {r[key] * us:9.2f} {100 * r[key] / total:6.1f}%")
    print(f"  {'sum of the categories':34s} {total * us:9.2f}")
    print(f"  {'whole step, Trainer.fit':34s} {r['fit'] * us:9.2f}   (median of rounds)")
    within = "(part of 'loss + output error Δ')"
    print(f"  {'loss + Δ functions alone':34s} {r['out_error'] * us:9.2f}   {within}")


# ------------------------------------------------------------------------------- profilers


def loop(w: Workload, seconds: float) -> None:
    """Train for about ``seconds``: the target of a sampling profiler."""
    X, Y = dataset(w)
    tr = trainer(w)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        tr.fit(X, Y)


def call_counts(w: Workload, top: int) -> None:
    """cProfile over one round of fit: the calls per step of the busiest functions."""
    X, Y = dataset(w)
    tr = trainer(w)
    steps = w.epochs * -(-len(X) // w.batch)
    profiler = cProfile.Profile()
    profiler.runcall(tr.fit, X, Y)
    st = pstats.Stats(profiler)
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # type: ignore[attr-defined]
    print(f"\ncProfile, {w.name}: {steps} steps; calls/step, tottime and cumtime µs/step (profiled)")
    for (file, line, name), (_, calls, tottime, cumtime, _) in rows[:top]:
        where = f"{Path(file).name}:{line} {name}" if line else name
        per_step = f"{calls / steps:7.1f} {1e6 * tottime / steps:8.2f} {1e6 * cumtime / steps:8.2f}"
        print(f"  {per_step}  {where[:80]}")
    total_calls = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
    print(f"  {total_calls / steps:.0f} function calls per step in all")


def summarise_pyspy(path: Path, top: int) -> None:
    """From a ``py-spy record -f raw`` file: the leaf frames, and the engine lines that hold
    the samples (each sample charged to its innermost frame in engine/)."""
    leaves: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total = 0
    for text in path.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1].split(" (")[0]] += n
        engine = [f for f in frames if "engine/" in f]
        lines[engine[-1] if engine else "(outside engine/)"] += n
    print(f"{total} samples; leaf frames:")
    for frame, n in leaves.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("innermost engine line:")
    for frame, n in lines.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cprofile", action="store_true", help="also print call counts per step")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--loop", type=float, metavar="SECONDS", help="only train (for py-spy)")
    parser.add_argument("--pyspy", type=Path, metavar="FILE", help="summarise a py-spy raw file")
    args = parser.parse_args()
    if args.pyspy:
        summarise_pyspy(args.pyspy, args.top)
        return
    chosen = list(WORKLOADS.values()) if args.workload == "all" else [WORKLOADS[args.workload]]
    if args.loop:
        for w in chosen:
            loop(w, args.loop)
        return
    print(f"NumPy {np.__version__}; µs per step, median of {args.rounds} rounds")
    for w in chosen:
        report(w, profile(w, args.rounds))
        if args.cprofile:
            call_counts(w, args.top)


if __name__ == "__main__":
    main()
