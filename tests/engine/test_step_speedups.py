"""The engine's speed-ups (issue 10) change no result: training gives the bits of the textbook loop.

The reference here is the per-minibatch loop written with plain NumPy operators (``x @ W + b``,
activations as formulas, Python-float constants, one fancy-indexed gather and one metric update
per minibatch, the squared norms by ``np.vdot``), as the engine did it before its step was made
cheap. Weights and training losses must match it bit for bit. Three figures are sums taken in a
different order now, and match within float rounding only, which the tests state as tolerances:

* per-layer gradient norms (summed in NumPy every :data:`~gradwire.engine.training.FOLD_STEPS`);
* plain SGD's update norms, ``η‖g‖`` instead of ``‖ηg‖``;
* the training metric, updated once per group of minibatches instead of per minibatch (R² then
  shifts its targets by the first group's mean, not the first minibatch's).

The tricks the step relies on are tested one by one below it: 0-d constants round like Python
floats, ``x.dot(W)`` gives the bits of ``x @ W``, a one-row column sum is the row.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from gradwire.engine import Dense, Network, NetworkSpec, OptimizerConfig, TrainConfig, Trainer
from gradwire.engine.data import GATHER_BYTES, batch_groups
from gradwire.engine.layers import column_sums
from gradwire.engine.losses import LOGIT_LOSSES, LOSSES
from gradwire.engine.metrics import METRICS
from gradwire.engine.scalars import DTYPES, scalar, scalars

Array = np.ndarray

# ------------------------------------------------------------------------ the plain loop

FORWARD: dict[str, Callable[[Array], Array]] = {
    "identity": lambda z: z,
    "sigmoid": lambda z: (np.tanh(z * 0.5) + 1.0) * 0.5,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "softmax": lambda z: (e := np.exp(z - z.max(axis=1, keepdims=True))) / e.sum(axis=1, keepdims=True),
}
DERIVATIVE: dict[str, Callable[[Array], Array]] = {  # g′(in) from a = g(in)
    "identity": lambda a: np.ones_like(a),
    "sigmoid": lambda a: a * (1.0 - a),
    "tanh": lambda a: 1.0 - a * a,
    "relu": lambda a: a > 0,
}


def output_error(spec: NetworkSpec, a: Array, z: Array, y: Array) -> tuple[float, Array]:
    """The mean loss and Δ = ∂L/∂in of the output layer, each the textbook way."""
    n, pair = len(a), (spec.output_activation, spec.loss)
    if pair in LOGIT_LOSSES:  # cross-entropies: loss from the logits, Δ = (a − y)/n
        return LOGIT_LOSSES[pair](z, y), (a - y) / n
    d = y - a
    loss = 0.5 * float(np.vdot(d, d)) / n
    return loss, DERIVATIVE[spec.output_activation](a) * ((a - y) / n)


def adam(config: OptimizerConfig, state: dict[str, Array], g: Array, lr: float, t: int) -> Array:
    b1, b2, eps = config.beta1, config.beta2, config.epsilon
    state["m"] = state["m"] * b1 + (1.0 - b1) * g
    state["s"] = state["s"] * b2 + (g * g) * (1.0 - b2)
    return (state["m"] * (lr / (1.0 - b1**t))) / (np.sqrt(state["s"]) * (1.0 / (1.0 - b2**t) ** 0.5) + eps)


@dataclass
class Plain:
    """What the plain loop ends with: weights, then per epoch the loss, norms, ratios and metric."""

    flat: Array
    losses: list[float]
    grad_norms: list[list[float]]
    update_ratios: list[list[float]]
    metrics: list[float]


def plain_training(spec: NetworkSpec, config: TrainConfig, X: Array, Y: Array) -> Plain:
    """Dense layers only, no batch norm, so every split is the plain one."""
    net = Network(spec)  # for its initial weights and its flat layout only
    flat = net.flat.copy()
    Ws, bs = net.unflatten(flat)[0::2], net.unflatten(flat)[1::2]
    grad = np.empty_like(flat)
    gWs, gbs = net.unflatten(grad)[0::2], net.unflatten(grad)[1::2]
    segments = [segment for _, segment in net.layer_segments]
    acts = [layer.activation for layer in spec.layers if isinstance(layer, Dense)]
    opt = config.optimizer
    state = {"m": np.zeros_like(flat), "s": np.zeros_like(flat)}
    rng = np.random.default_rng(config.seed)
    out = Plain(flat, [], [], [], [])
    t = 0
    for _ in range(config.epochs):
        order = rng.permutation(len(X))
        loss_sum, g_sums, u_sums, steps = 0.0, [0.0] * len(Ws), [0.0] * len(Ws), 0
        metric = METRICS[LOSSES[spec.loss].metric]()
        for begin in range(0, len(X), config.batch_size):
            rows = order[begin : begin + config.batch_size]
            x, y = X[rows].astype(net.dtype), Y[rows].astype(net.dtype)
            inputs, z = [], x
            for W, b, act in zip(Ws, bs, acts, strict=True):
                inputs.append(z)
                pre = z @ W + b
                z = FORWARD[act](pre)
            loss, delta = output_error(spec, z, pre, y)
            for i in reversed(range(len(Ws))):
                gWs[i][...] = inputs[i].T @ delta
                gbs[i][...] = delta.sum(axis=0)
                if i:
                    delta = (delta @ Ws[i].T) * DERIVATIVE[acts[i - 1]](inputs[i])
            grad_sq = [float(np.vdot(grad[s], grad[s])) for s in segments]
            if config.clip_norm is not None and sum(grad_sq) > config.clip_norm**2:
                grad *= config.clip_norm / math.sqrt(sum(grad_sq))
            t += 1
            lr = opt.learning_rate
            u = grad * lr if opt.name == "sgd" else adam(opt, state, grad, lr, t)
            flat -= u
            loss_sum += loss * len(x)
            steps += 1
            for i, s in enumerate(segments):
                g_sums[i] += math.sqrt(grad_sq[i])
                u_sums[i] += math.sqrt(float(np.vdot(u[s], u[s])))
            metric.update(z, y)
        out.losses.append(loss_sum / len(X))
        out.grad_norms.append([g / steps for g in g_sums])
        weight_norms = [math.sqrt(float(np.vdot(flat[s], flat[s]))) for s in segments]
        out.update_ratios.append([u / steps / w for u, w in zip(u_sums, weight_norms, strict=True)])
        out.metrics.append(metric.value())
    return out


# ------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    spec: NetworkSpec
    config: TrainConfig
    rows: int
    targets: str  # "classes", "binary" or "values"

    def data(self) -> tuple[Array, Array]:
        rng = np.random.default_rng(11)
        X = rng.standard_normal((self.rows, self.spec.input_dim))
        k = self.spec.output_dim
        if self.targets == "classes":
            return X, np.eye(k)[rng.integers(0, k, self.rows)]
        if self.targets == "binary":
            return X, (rng.random((self.rows, k)) > 0.5).astype(float)
        return X, rng.standard_normal((self.rows, k)) + 50.0  # far from 0: R²'s shift matters


def sgd(lr: float) -> OptimizerConfig:
    return OptimizerConfig("sgd", lr)


CASES = {
    "online 4-5-3 sigmoid, batch 1": Case(
        NetworkSpec(4, [Dense(5, "sigmoid", "xavier_uniform"), Dense(3, "sigmoid", "xavier_uniform")],
                    "squared_error", "float64", 3),
        TrainConfig(epochs=4, batch_size=1, optimizer=sgd(0.1), seed=2), 150, "classes",
    ),
    "20-64-1 relu, float32, Adam, a remainder": Case(
        NetworkSpec(20, [Dense(64, "relu"), Dense(1, "identity", "xavier_uniform")], "squared_error",
                    "float32", 1),
        TrainConfig(epochs=3, batch_size=32, optimizer=OptimizerConfig("adam", 0.001), seed=1),
        1000, "values",
    ),
    "softmax cross-entropy, tanh, clipped": Case(
        NetworkSpec(12, [Dense(16, "tanh", "xavier_normal"), Dense(4, "softmax", "xavier_uniform")],
                    "softmax_crossentropy", "float64", 2),
        TrainConfig(epochs=4, batch_size=7, optimizer=sgd(0.5), seed=3, clip_norm=0.05), 103, "classes",
    ),
    "binary cross-entropy, float32, deep": Case(
        NetworkSpec(6, [Dense(8, "relu"), Dense(8, "tanh"), Dense(2, "sigmoid", "xavier_uniform")],
                    "binary_crossentropy", "float32", 4),
        TrainConfig(epochs=3, batch_size=10, optimizer=sgd(0.2), seed=5), 97, "binary",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_training_gives_the_plain_loops_bits(name: str) -> None:
    case = CASES[name]
    X, Y = case.data()
    net = Network(case.spec)
    trainer = Trainer(net, case.config)
    trainer.fit(X, Y)
    plain = plain_training(case.spec, case.config, X, Y)

    np.testing.assert_array_equal(net.flat, plain.flat)  # the weights: every bit
    assert [r.train_loss for r in trainer.history] == plain.losses  # the losses: every bit
    rounding = 1e-12 if case.spec.dtype == "float64" else 1e-5  # sums taken in another order
    for record, norms, ratios, metric in zip(
        trainer.history, plain.grad_norms, plain.update_ratios, plain.metrics, strict=True
    ):
        np.testing.assert_allclose(list(record.grad_norms.values()), norms, rtol=rounding)
        np.testing.assert_allclose(list(record.update_ratios.values()), ratios, rtol=rounding)
        assert record.train_metric == pytest.approx(metric, rel=rounding, abs=rounding)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("layout", ["fortran", "column slice", "row stride"])
def test_how_the_callers_array_lies_in_memory_changes_no_bit(layout: str, shuffle: bool) -> None:
    """Strided inputs are packed before any product (a strided BLAS call may round otherwise)."""
    spec = NetworkSpec(6, [Dense(8, "tanh"), Dense(1, "identity")], "squared_error", "float32", 5)
    config = TrainConfig(epochs=2, batch_size=32, shuffle=shuffle, optimizer=sgd(0.05), seed=6)
    rng = np.random.default_rng(12)
    packed = rng.standard_normal((200, 6)).astype(np.float32)
    Y = rng.standard_normal((200, 1)).astype(np.float32)
    wide = np.repeat(packed, 2, axis=1)  # column slice: every other column of a wider array
    tall = np.repeat(packed, 2, axis=0)  # row stride: every other row of a taller array
    strided = {"fortran": np.asfortranarray(packed), "column slice": wide[:, ::2], "row stride": tall[::2]}
    X = strided[layout]
    assert not X.flags.c_contiguous
    assert np.array_equal(X, packed)
    nets = [Network(spec), Network(spec)]
    for net, data in zip(nets, (packed, X), strict=True):
        Trainer(net, config).fit(data, Y)
    np.testing.assert_array_equal(nets[1].flat, nets[0].flat)
    np.testing.assert_array_equal(nets[0].predict(X), nets[0].predict(packed))
    strided_loss, strided_grads = nets[0].loss_and_gradients(X, Y)
    packed_loss, packed_grads = nets[0].loss_and_gradients(packed, Y)
    assert strided_loss == packed_loss
    for name, grad in packed_grads.items():
        np.testing.assert_array_equal(strided_grads[name], grad, err_msg=name)


def test_the_metric_of_an_epoch_is_over_all_of_its_rows_in_any_grouping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group per minibatch (the old way) or one group for the epoch: the same accuracy, exactly."""
    case = CASES["softmax cross-entropy, tanh, clipped"]
    X, Y = case.data()
    metrics = []
    for gather_bytes in (1, GATHER_BYTES):
        monkeypatch.setattr("gradwire.engine.data.GATHER_BYTES", gather_bytes)
        trainer = Trainer(Network(case.spec), case.config)
        one_group = trainer.batches_per_group >= 15  # 103 rows in batches of 7
        assert one_group == (gather_bytes == GATHER_BYTES)
        trainer.fit(X, Y)
        metrics.append([r.train_metric for r in trainer.history])
    assert metrics[0] == metrics[1]


def test_training_adds_little_memory_beside_the_data() -> None:
    """What one epoch allocates beyond the data stays a small part of it (the gather is bounded)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40_000, 64))  # 20 MB
    Y = np.eye(4)[rng.integers(0, 4, 40_000)]
    net = Network(NetworkSpec(64, [Dense(32, "relu"), Dense(4, "softmax")], "softmax_crossentropy"))
    trainer = Trainer(net, TrainConfig(epochs=1, batch_size=64, optimizer=sgd(0.01)))
    tracemalloc.start()
    try:
        trainer.fit(X, Y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * (X.nbytes + Y.nbytes)
    assert peak < 4 * GATHER_BYTES  # the group, its outputs, the permutation: not the data


# ------------------------------------------------------------------------ the tricks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.5, 1.0, 0.1, 0.999, 1e-8, 1 / 3, 7.0])
def test_a_0d_constant_rounds_like_the_python_float(dtype: np.dtype, value: float) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(4096) * 10.0 ** rng.integers(-30, 30, 4096)).astype(dtype)
    c = scalar(value, dtype)
    for op in (np.add, np.subtract, np.multiply, np.divide, np.maximum):
        got, want = op(x, c), op(x, value)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=op.__name__)
    assert [float(a) for a in scalars(value, 2.0)[dtype]] == [float(dtype.type(value)), 2.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(1, 4, 5), (1, 1, 1), (7, 3, 1), (32, 20, 64), (128, 784, 256), (3, 300, 2)]
)
def test_ndarray_dot_gives_the_bits_of_matmul(dtype: np.dtype, shape: tuple[int, int, int]) -> None:
    n, fan_in, fan_out = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, fan_in)).astype(dtype)
    W = rng.standard_normal((fan_in, fan_out)).astype(dtype)
    d = rng.standard_normal((n, fan_out)).astype(dtype)
    np.testing.assert_array_equal(x.dot(W), x @ W)
    np.testing.assert_array_equal(d.dot(W.T), d @ W.T)
    out = np.empty((fan_in, fan_out), dtype)
    x.T.dot(d, out=out)
    np.testing.assert_array_equal(out, x.T @ d)
    g = d.ravel()
    assert g.dot(g) == np.vdot(g, g)


def test_a_one_row_column_sum_is_the_row_as_a_reduction_gives_it() -> None:
    x, out = np.random.default_rng(3).standard_normal((1, 9)), np.empty(9)
    column_sums(x, out)
    np.testing.assert_array_equal(out, np.add.reduce(x, axis=0))
    np.testing.assert_array_equal(out, x[0])


def test_squared_error_gives_value_and_gradient_together_as_apart() -> None:
    rng = np.random.default_rng(4)
    loss = LOSSES["squared_error"]
    for rows in (1, 5):
        a, y = rng.standard_normal((rows, 3)), rng.standard_normal((rows, 3))
        value, gradient = loss.value_and_gradient(a, y)
        assert value == loss.value(a, y)
        np.testing.assert_array_equal(gradient, loss.gradient(a, y))


def test_minibatches_are_grouped_in_order_and_each_once() -> None:
    bounds = [(i, i + 3) for i in range(0, 30, 3)]
    for per_group in (1, 3, 4, 10, 11):
        groups = list(batch_groups(iter(bounds), per_group))
        assert [b for group in groups for b in group] == bounds
        assert all(len(group) == per_group for group in groups[:-1])


def test_groups_are_taken_as_the_batches_come_never_all_at_once() -> None:
    """An epoch of a million one-row batches holds one group of bounds, not a million."""
    endless = ((i, i + 1) for i in itertools.count())
    groups = batch_groups(endless, 4)
    assert next(groups) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert next(groups)[0] == (4, 5)
