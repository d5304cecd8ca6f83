"""Where a training step's time goes: ``python -m bench.profile_engine [--workload online|mlp20|mnist]``.

Issue 10 ("Engine speed"), first step: measure before changing the engine. For each workload
the script prints µs per step by category and each category's share of the step, from three
kinds of timing (``time.perf_counter``, median over rounds):

1. **whole step**: :meth:`Trainer.fit` over whole epochs divided by the steps taken. This is the
   figure issue 10 must lower; it stays valid whatever changes inside ``engine/``;
2. **phases**: a copy of ``Trainer._run_epoch`` / ``_step`` that calls the same engine objects in
   the same order, with a clock read between phases (gather, forward, loss, backward, statistics,
   optimiser, metric, loop). It mirrors ``engine/training.py`` as it was before issue 10: update
   it with the engine, or read only the whole-step figure after a change;
3. **kernels**: the NumPy operations inside forward and backward (GEMMs, element-wise passes)
   timed alone on arrays of the step's shapes, which split the forward and backward phases into
   arithmetic and the Python around it.

Then the levers: each alternative timed against what the engine does now, on the same arrays,
and a lean prototype of the whole step (buffers allocated once, ``out=`` everywhere, statistics
by one ``reduceat``), checked to give the engine's weights.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.engine_bench import B1, B2, EPS
from gradwire.engine import Dense, Network, NetworkSpec, OptimizerConfig, TrainConfig, Trainer
from gradwire.engine.data import batch_bounds
from gradwire.engine.layers import LogitDenseLayer
from gradwire.engine.training import _EpochStats

Array = np.ndarray


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple[int, ...]
    hidden: str
    output: str
    loss: str
    dtype: str
    batch: int
    rows: int
    optimizer: str
    lr: float
    epochs: int  # per timed round
    reps: int  # calls per timing of one operation

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
            "online", (4, 5, 3), "sigmoid", "sigmoid", "squared_error", "float64", 1, 150,
            "sgd", 0.1, 20, 3000,
        ),
        Workload(
            "mlp20", (20, 64, 1), "relu", "identity", "squared_error", "float32", 32, 10_016,
            "adam", 1e-3, 2, 2000,
        ),
        Workload(
            "mnist", (784, 256, 128, 10), "relu", "softmax", "softmax_crossentropy", "float32", 128, 12_800,
            "adam", 1e-3, 1, 30,
        ),
    )
}  # fmt: skip


def dataset(w: Workload, seed: int = 0) -> tuple[Array, Array]:
    """Random inputs; one-hot targets for a classifier or a 3-class (iris-like) online set, a smooth
    function of the inputs otherwise. Kept in the network's dtype, like engine_bench's data."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w.rows, w.sizes[0])).astype(w.dtype)
    if w.sizes[-1] > 1:
        labels = (X[:, : w.sizes[-1]].argmax(axis=1) + rng.integers(0, 2, w.rows)) % w.sizes[-1]
        Y = np.eye(w.sizes[-1], dtype=w.dtype)[labels]
    else:
        Y = (np.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]).astype(w.dtype)
    return X, Y


def network(w: Workload) -> Network:
    init = "he_normal" if w.hidden == "relu" else "xavier_uniform"
    hidden = [Dense(units, w.hidden, init) for units in w.sizes[1:-1]]
    out = Dense(w.sizes[-1], w.output, "xavier_uniform")
    return Network(NetworkSpec(w.sizes[0], (*hidden, out), w.loss, w.dtype, 0))


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
    "loss",
    "backward",
    "grad_stats",
    "commit_clip",
    "optimizer",
    "update_stats",
    "metric",
    "loop_epoch",
)


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


def phase_epoch(tr: Trainer, X: Array, Y: Array) -> tuple[list[float], int]:
    """One epoch of ``Trainer._run_epoch`` / ``_step`` (training.py before issue 10), the same calls in
    the same order, with a clock read between phases: seconds per phase, and the steps."""
    net, cfg, g = tr.network, tr.config, tr.grad_flat
    clock = time.perf_counter
    acc = [0.0] * len(PHASES)
    start = clock()
    order = tr.rng.permutation(len(X))
    lr = tr.schedule.rate(tr.epoch)
    stats = _EpochStats(len(tr.layer_paths), net.loss.metric, lr)
    segments = tr.segments
    steps = 0
    t9 = clock()
    acc[9] += t9 - start
    for begin, end in batch_bounds(len(X), cfg.batch_size, net.min_training_rows):
        t0 = clock()
        batch = order[begin:end]
        xb = X[batch].astype(net.dtype, copy=False)
        yb = Y[batch].astype(net.dtype, copy=False)
        t1 = clock()
        a, caches = net.forward(xb, training=True)
        t2 = clock()
        loss = net.loss_value(a, caches, yb)
        if not math.isfinite(loss):
            raise FloatingPointError("loss")
        t3 = clock()
        net.backward(caches, a, yb, tr.grad_views)
        t4 = clock()
        grad_sq = [float(np.vdot(g[s], g[s])) for s in segments]
        total = sum(grad_sq)
        if not math.isfinite(total):
            raise FloatingPointError("gradient")
        t5 = clock()
        net.commit(caches)
        clip = cfg.clip_norm
        if clip is not None and total > clip * clip:
            g *= clip / math.sqrt(total)
        t6 = clock()
        u = tr.optimizer.step(net.flat, g, lr)
        net.flat -= u
        t7 = clock()
        stats.add(loss, len(xb), grad_sq, [float(np.vdot(u[s], u[s])) for s in segments])
        t8 = clock()
        stats.metric.update(a, yb)
        t10 = clock()
        for i, (t_a, t_b) in enumerate(((t9, t0), (t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            acc[(9, 0, 1, 2, 3, 4)[i]] += t_b - t_a
        acc[5] += t6 - t5
        acc[6] += t7 - t6
        acc[7] += t8 - t7
        acc[8] += t10 - t8
        steps += 1
        t9 = clock()  # the bookkeeping above is the profiler's, not the engine's
    t11 = clock()
    if not np.isfinite(net.flat).all():
        raise FloatingPointError("weights")
    tr._close_epoch(stats, None, 0.0)
    acc[9] += clock() - t11
    return acc, steps


def time_phases(w: Workload, X: Array, Y: Array) -> dict[str, float]:
    """Seconds per step by phase, each less the clock read that lands in it."""
    tr = trainer(w)
    sums = [0.0] * len(PHASES)
    steps = 0
    for _ in range(w.epochs):
        acc, n = phase_epoch(tr, X, Y)
        sums = [s + a for s, a in zip(sums, acc, strict=True)]
        steps += n
    tick = clock_cost()
    return {name: max(s / steps - tick, 0.0) for name, s in zip(PHASES, sums, strict=True)}


# ------------------------------------------------------------------------------------ kernels


@dataclass
class StepArrays:
    """One step's arrays, as the engine makes them: inputs, per-layer activations, Δs, weights."""

    net: Network
    xb: Array
    yb: Array
    inputs: list[Array]  # each layer's input
    outputs: list[Array]  # each layer's activation a
    deltas: list[Array]  # each layer's Δ (∂L/∂z), of a plausible size
    grads: list[Array]  # gradient views, W then b per layer


def step_arrays(w: Workload, X: Array, Y: Array) -> StepArrays:
    tr = trainer(w)
    net = tr.network
    xb, yb = X[: w.batch].copy(), Y[: w.batch].copy()
    _, caches = net.forward(xb, training=True)
    inputs = [c[0] for c in caches]
    outputs = [c[1] for c in caches]
    rng = np.random.default_rng(2)
    deltas = [(0.01 * rng.standard_normal(o.shape)).astype(o.dtype) for o in outputs]
    return StepArrays(net, xb, yb, inputs, outputs, deltas, tr.grad_views)


def time_kernels(w: Workload, s: StepArrays, reps: int) -> dict[str, float]:
    """Seconds per step of the arithmetic inside forward and backward, each op timed alone."""
    net, layers = s.net, s.net.layers
    out: dict[str, float] = dict.fromkeys(("fwd_gemm", "fwd_elem", "out_error", "bwd_gemm", "bwd_elem"), 0.0)
    for i, layer in enumerate(layers):
        x, W, b, act = s.inputs[i], layer.W, layer.b, layer.activation
        out["fwd_gemm"] += per_call(lambda x=x, W=W: x @ W, reps)
        z = (x @ W).copy()
        out["fwd_elem"] += per_call(lambda z=z, b=b: np.add(z, b, out=z), reps)
        if act.name == "softmax" or isinstance(layer, LogitDenseLayer):
            out["fwd_elem"] += per_call(lambda z=z, act=act: act.forward(z.copy()), reps)
        else:
            out["fwd_elem"] += per_call(lambda z=z, act=act: act.forward(z), reps)
        d, gW, gb = s.deltas[i], s.grads[2 * i], s.grads[2 * i + 1]
        out["bwd_gemm"] += per_call(lambda x=x, d=d, gW=gW: np.matmul(x.T, d, out=gW), reps)
        if i > 0:
            out["bwd_gemm"] += per_call(lambda d=d, W=W: d @ W.T, reps)
        out["bwd_elem"] += per_call(lambda d=d, gb=gb: np.add.reduce(d, axis=0, out=gb), reps)
        if i < len(layers) - 1:  # the hidden activation's derivative, on a fresh copy of ∂L/∂a
            buf = np.empty_like(d)
            copy = per_call(lambda buf=buf, d=d: np.copyto(buf, d), reps)
            both = per_call(
                lambda buf=buf, d=d, a=s.outputs[i], act=act: act.backward(a, np.copyto(buf, d) or buf), reps
            )
            out["bwd_elem"] += max(both - copy, 0.0)
    a, y = s.outputs[-1], s.yb
    last = layers[-1].activation
    if net.fused_delta is not None:
        out["out_error"] = per_call(lambda: net.fused_delta(a, y), reps)
    else:
        out["out_error"] = per_call(lambda: last.backward(a, net.loss.gradient(a, y)), reps)
    return out


# ------------------------------------------------------------------------------------- levers


class LeanStep:
    """A prototype of the whole step with every buffer allocated once and ``out=`` everywhere
    (full batches only: the workloads' row counts are multiples of their batch).

    The same arithmetic and the same statistics as the engine (per-layer ‖g‖ and ‖u‖ summed over
    the epoch, finiteness, loss, the engine's metric), by fewer NumPy calls: a measure of what a
    lean path could reach, not a proposal for its code. Dense layers of relu, sigmoid or identity,
    an identity/sigmoid output with squared error or a softmax with its cross-entropy; SGD or Adam.
    """

    def __init__(self, w: Workload, net: Network) -> None:
        self.w, self.net = w, net
        dt, n = net.dtype, w.batch
        self.Ws = [layer.W for layer in net.layers]
        self.bs = [layer.b for layer in net.layers]
        self.acts = [layer.activation.name for layer in net.layers]
        self.z = [np.empty((n, W.shape[1]), dt) for W in self.Ws]
        self.d = [np.empty_like(z) for z in self.z]
        self.t = [np.empty_like(z) for z in self.z]
        self.mask = [np.empty(z.shape, bool) for z in self.z]
        self.e = np.empty_like(self.z[-1])
        self.flat = net.flat
        self.g = np.empty_like(self.flat)
        self.gv = net.unflatten(self.g)
        self.sq = np.empty_like(self.flat)
        self.tmp = np.empty_like(self.flat)
        self.u = np.empty_like(self.flat)
        self.m, self.s = np.zeros_like(self.flat), np.zeros_like(self.flat)
        self.starts = np.array([seg.start for _, seg in net.layer_segments])
        self.gs = np.empty(len(self.starts), dt)
        self.us = np.empty_like(self.gs)
        self.acc_g = np.zeros(len(self.starts))
        self.acc_u = np.zeros(len(self.starts))
        self.t_step = 0
        self.loss_sum = 0.0

    def step(self, xb: Array, yb: Array, metric: object) -> bool:
        n = len(xb)
        a = xb
        for W, b, z, act in zip(self.Ws, self.bs, self.z, self.acts, strict=True):
            np.matmul(a, W, out=z)
            z += b
            if act == "relu":
                np.maximum(z, 0.0, out=z)
            elif act == "sigmoid":
                z *= 0.5
                np.tanh(z, out=z)
                z += 1.0
                z *= 0.5
            a = z
        d, e = self.d[-1], self.e
        if self.acts[-1] == "softmax":  # exact loss from the shifted logits, then a = softmax
            z = self.z[-1]
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=e)
            total = e.sum(axis=1)
            loss = (float(np.log(total).sum()) - float(np.vdot(yb, z))) / n
            np.divide(e, total[:, None], out=z)
            np.subtract(z, yb, out=d)
        else:
            np.subtract(a, yb, out=d)
            loss = 0.5 * float(np.vdot(d, d)) / n
            if self.acts[-1] == "sigmoid":
                np.subtract(1.0, a, out=self.t[-1])
                self.t[-1] *= a
                d *= self.t[-1]
        d *= 1.0 / n
        if not math.isfinite(loss):
            return False
        for i in range(len(self.Ws) - 1, -1, -1):
            x = xb if i == 0 else self.z[i - 1]
            np.matmul(x.T, self.d[i], out=self.gv[2 * i])
            np.add.reduce(self.d[i], axis=0, out=self.gv[2 * i + 1])
            if i:
                prev = self.d[i - 1]
                np.matmul(self.d[i], self.Ws[i].T, out=prev)
                if self.acts[i - 1] == "relu":
                    np.greater(x, 0.0, out=self.mask[i - 1])
                    prev *= self.mask[i - 1]
                elif self.acts[i - 1] == "sigmoid":
                    t = self.t[i - 1]
                    np.subtract(1.0, x, out=t)
                    t *= x
                    prev *= t
        g, sq = self.g, self.sq
        np.multiply(g, g, out=sq)
        np.add.reduceat(sq, self.starts, out=self.gs)
        if not math.isfinite(float(self.gs.sum())):
            return False
        u = self._update(g, sq)
        self.flat -= u
        np.multiply(u, u, out=sq)
        np.add.reduceat(sq, self.starts, out=self.us)
        self.acc_g += np.sqrt(self.gs, out=self.gs)
        self.acc_u += np.sqrt(self.us, out=self.us)
        self.loss_sum += loss * n
        metric.update(a, yb)  # type: ignore[attr-defined]
        return True

    def _update(self, g: Array, g2: Array) -> Array:
        lr = self.w.lr
        if self.w.optimizer == "sgd":
            g *= lr
            return g
        self.t_step += 1
        m, s, tmp, u = self.m, self.s, self.tmp, self.u
        m *= B1
        np.multiply(g, 1.0 - B1, out=tmp)
        m += tmp
        s *= B2
        np.multiply(g2, 1.0 - B2, out=tmp)
        s += tmp
        np.sqrt(s, out=tmp)
        tmp *= 1.0 / (1.0 - B2**self.t_step) ** 0.5
        tmp += EPS
        np.multiply(m, lr / (1.0 - B1**self.t_step), out=u)
        u /= tmp
        return u


def lean_epoch(lean: LeanStep, X: Array, Y: Array, rng: np.random.Generator) -> int:
    net, n = lean.net, lean.w.batch
    order = rng.permutation(len(X))
    metric = _EpochStats(1, net.loss.metric, 0.0).metric
    steps = 0
    for begin, end in batch_bounds(len(X), n, net.min_training_rows):
        batch = order[begin:end]
        xb = X[batch].astype(net.dtype, copy=False)
        yb = Y[batch].astype(net.dtype, copy=False)
        if not lean.step(xb, yb, metric):
            raise FloatingPointError("lean step")
        steps += 1
    return steps


def check_lean(w: Workload, X: Array, Y: Array) -> float:
    """Largest relative difference between the weights after one epoch of the engine and of
    :class:`LeanStep`, from the same start and the same shuffle."""
    tr = trainer(w)
    tr.fit(X, Y, epochs=1)
    lean = LeanStep(w, network(w))
    lean_epoch(lean, X, Y, np.random.default_rng(1))
    scale = float(np.abs(tr.network.flat).max())
    return float(np.abs(tr.network.flat - lean.flat).max()) / scale


def time_lean(w: Workload, X: Array, Y: Array) -> float:
    lean = LeanStep(w, network(w))
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    steps = sum(lean_epoch(lean, X, Y, rng) for _ in range(w.epochs))
    return (time.perf_counter() - start) / steps


def time_levers(w: Workload, s: StepArrays, reps: int) -> dict[str, float]:
    """Seconds per step of what the engine does now against an alternative, on the same arrays."""
    net, layers = s.net, s.net.layers
    r: dict[str, float] = {}
    # 1. results into buffers kept across steps: the GEMMs that allocate their result today
    alloc = out_ = 0.0
    for i, layer in enumerate(layers):
        x, W, d = s.inputs[i], layer.W, s.deltas[i]
        zbuf = np.empty((len(x), W.shape[1]), W.dtype)
        alloc += per_call(lambda x=x, W=W: x @ W, reps)
        out_ += per_call(lambda x=x, W=W, zbuf=zbuf: np.matmul(x, W, out=zbuf), reps)
        if i:
            gbuf = np.empty_like(x)
            alloc += per_call(lambda d=d, W=W: d @ W.T, reps)
            out_ += per_call(lambda d=d, W=W, gbuf=gbuf: np.matmul(d, W.T, out=gbuf), reps)
    r["gemm_alloc"], r["gemm_out"] = alloc, out_
    # ... and the optimiser's temporaries
    flat = net.flat.copy()
    g, m, tmp = np.ones_like(flat), np.ones_like(flat), np.empty_like(flat)
    if w.optimizer == "adam":
        r["opt_alloc"] = per_call(lambda: ((1.0 - B1) * g, m * 0.5), reps) + per_call(
            lambda: np.sqrt(m), reps
        )
        r["opt_out"] = per_call(
            lambda: (np.multiply(g, 1.0 - B1, out=tmp), np.multiply(m, 0.5, out=tmp)), reps
        ) + per_call(lambda: np.sqrt(m, out=tmp), reps)
    # 2. the output layer's copy of its logits (softmax with cross-entropy only)
    r["logit_copy"] = (
        per_call(lambda: s.outputs[-1].copy(), reps) if isinstance(layers[-1], LogitDenseLayer) else 0.0
    )
    # 3. the input gradient of the first layer, which the engine already skips
    r["first_input_grad"] = per_call(lambda: s.deltas[0] @ layers[0].W.T, reps)
    # 4. output error and loss: the engine's calls against one fused pass into a buffer
    a, y = s.outputs[-1], s.yb
    n = len(a)
    last = layers[-1].activation
    d, t = np.empty_like(a), np.empty_like(a)
    if net.fused_delta is not None:
        r["out_error_now"] = per_call(lambda: net.fused_delta(a, y), reps)
        r["out_error_fused"] = per_call(
            lambda: (np.subtract(a, y, out=d), np.multiply(d, 1.0 / n, out=d)), reps
        )
    else:
        r["out_error_now"] = per_call(lambda: last.backward(a, net.loss.gradient(a, y)), reps)

        def fused() -> None:
            np.subtract(a, y, out=d)
            np.subtract(1.0, a, out=t)
            np.multiply(t, a, out=t)
            np.multiply(t, 1.0 / n, out=t)
            np.multiply(d, t, out=d)

        r["out_error_fused"] = per_call(fused, reps)
    if w.loss == "squared_error":  # the loss from the Δ's a − y, already in a buffer
        r["loss_now"] = per_call(lambda: net.loss.value(a, y), reps)
        r["loss_from_delta"] = per_call(lambda: 0.5 * float(np.vdot(d, d)) / n, reps)
    # 5. the gradient-health statistics: a vdot per layer segment, twice, against a reduceat
    segments = [seg for _, seg in net.layer_segments]
    starts = np.array([seg.start for seg in segments])
    gflat = np.ones_like(flat)
    sq, gs, us = np.empty_like(flat), np.empty(len(segments), flat.dtype), np.empty(len(segments), flat.dtype)
    acc_g, acc_u = np.zeros(len(segments)), np.zeros(len(segments))
    stats = _EpochStats(len(segments), net.loss.metric, 0.1)

    def stats_now() -> None:
        grad_sq = [float(np.vdot(gflat[s], gflat[s])) for s in segments]
        if not math.isfinite(sum(grad_sq)):
            raise FloatingPointError
        stats.add(0.5, n, grad_sq, [float(np.vdot(gflat[s], gflat[s])) for s in segments])

    def stats_reduceat() -> None:
        np.multiply(gflat, gflat, out=sq)
        np.add.reduceat(sq, starts, out=gs)
        if not math.isfinite(float(gs.sum())):
            raise FloatingPointError
        np.multiply(gflat, gflat, out=sq)
        np.add.reduceat(sq, starts, out=us)
        acc_g.__iadd__(np.sqrt(gs, out=gs))
        acc_u.__iadd__(np.sqrt(us, out=us))

    def stats_half() -> None:  # SGD without decay: ‖u‖ = η‖g‖, so only the gradient's vdots
        grad_sq = [float(np.vdot(gflat[s], gflat[s])) for s in segments]
        if not math.isfinite(sum(grad_sq)):
            raise FloatingPointError
        stats.add(0.5, n, grad_sq, [0.01 * q for q in grad_sq])

    r["stats_now"] = per_call(stats_now, reps)
    r["stats_half"] = per_call(stats_half, reps)
    r["stats_reduceat"] = per_call(stats_reduceat, reps)
    # 6. the metric
    metric = stats.metric
    r["metric"] = per_call(lambda: metric.update(a, y), reps)
    # 7. gathering a batch by fancy index against a slice of pre-shuffled data
    order = np.arange(w.batch)
    Xd = np.ascontiguousarray(s.xb)
    r["gather_index"] = per_call(lambda: Xd[order].astype(net.dtype, copy=False), reps)
    r["gather_slice"] = per_call(lambda: Xd[0 : w.batch], reps)
    return r


# ------------------------------------------------------------------------------------ report

ROWS = (
    ("forward GEMMs (x W)", "fwd_gemm"),
    ("backward GEMMs (xᵀΔ, ΔWᵀ)", "bwd_gemm"),
    ("bias + activation (forward)", "fwd_elem"),
    ("activation derivatives + ∂b", "bwd_elem"),
    ("output error Δ", "out_error"),
    ("loss value", "loss"),
    ("optimiser update + w ← w − u", "optimizer"),
    ("gradient-health statistics", "stats"),
    ("metric", "metric"),
    ("gather + cast X[batch]", "gather"),
    ("Python in forward/backward", "python"),
    ("loop, commit/clip, epoch close", "rest"),
)


def categories(phases: dict[str, float], kernels: dict[str, float]) -> dict[str, float]:
    fwd = kernels["fwd_gemm"] + kernels["fwd_elem"]
    bwd = kernels["out_error"] + kernels["bwd_gemm"] + kernels["bwd_elem"]
    return {
        **kernels,
        "loss": phases["loss"],
        "optimizer": phases["optimizer"],
        "stats": phases["grad_stats"] + phases["update_stats"],
        "metric": phases["metric"],
        "gather": phases["gather"],
        "python": max(phases["forward"] - fwd, 0.0) + max(phases["backward"] - bwd, 0.0),
        "rest": phases["commit_clip"] + phases["loop_epoch"],
    }


def profile(w: Workload, rounds: int) -> dict[str, object]:
    X, Y = dataset(w)
    reps = w.reps
    time_fit(w, X[: w.batch * 20], Y[: w.batch * 20])  # warm-up: caches, BLAS threads, allocator
    arrays = step_arrays(w, X, Y)
    runs: dict[str, list[float]] = {}
    for _ in range(rounds):
        row = {"fit": time_fit(w, X, Y), "lean": time_lean(w, X, Y)}
        phases = time_phases(w, X, Y)
        kernels = time_kernels(w, arrays, reps)
        row |= categories(phases, kernels) | {f"phase_{k}": v for k, v in phases.items()}
        row |= time_levers(w, arrays, reps)
        for key, value in row.items():
            runs.setdefault(key, []).append(value)
    median = {key: statistics.median(values) for key, values in runs.items()}
    median["lean_rel_diff"] = check_lean(w, X, Y)
    return median


def report(w: Workload, r: dict[str, float]) -> None:
    us = 1e6
    total = sum(r[key] for _, key in ROWS)
    print(f"\n{w.title}")
    print(f"  {'category':34s} {'µs/step':>9s} {'share':>7s}")
    for label, key in ROWS:
        print(f"  {label:34s} {r[key] * us:9.2f} {100 * r[key] / total:6.1f}%")
    print(f"  {'sum of the categories':34s} {total * us:9.2f}")
    print(f"  {'whole step, Trainer.fit':34s} {r['fit'] * us:9.2f}   (median of rounds)")
    match = f"weights match the engine's to {r['lean_rel_diff']:.1e}"
    print(f"  {'lean prototype, same statistics':34s} {r['lean'] * us:9.2f}   ({match})")
    print("  levers (µs/step: now → alternative, saving)")

    def lever(label: str, now: float, alt: float) -> None:
        print(f"    {label:44s} {now * us:8.2f} → {alt * us:8.2f}  saves {(now - alt) * us:7.2f}")

    lever("GEMM results into kept buffers (out=)", r["gemm_alloc"], r["gemm_out"])
    if "opt_alloc" in r:
        lever("Adam temporaries into kept buffers", r["opt_alloc"], r["opt_out"])
    lever("output layer's logits copy", r["logit_copy"], 0.0)
    print(f"    {'first layer ΔWᵀ (already skipped)':44s} {r['first_input_grad'] * us:8.2f}   saves 0 (done)")
    lever("fused output error into a buffer", r["out_error_now"], r["out_error_fused"])
    if "loss_now" in r:
        lever("squared-error loss from Δ's a − y", r["loss_now"], r["loss_from_delta"])
    lever("statistics by reduceat, sums kept in arrays", r["stats_now"], r["stats_reduceat"])
    if w.optimizer == "sgd":
        lever("SGD: update norms as η × gradient norms", r["stats_now"], r["stats_half"])
    lever("gather by slicing pre-shuffled data", r["gather_index"], r["gather_slice"])
    lever("whole step: lean path (all of the above)", total, r["lean"])


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
