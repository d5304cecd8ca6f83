"""The numbers the engine reports stay exact at the extremes, checked against independent
computations: Decimal closed forms for losses and output errors at logit gaps up to 1e4, Fraction
sums for R² at offsets of 1e8 and 1e12, and the statistics module for batch norm's averages."""

from __future__ import annotations

import statistics
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest

from gradwire.engine import (
    LOSSES,
    BatchNorm,
    Dense,
    InvalidArgument,
    Network,
    NetworkSpec,
    OptimizerConfig,
    TrainConfig,
    Trainer,
    fit,
)
from gradwire.engine.activations import LEAKY_SLOPE
from gradwire.engine.data import batch_bounds
from gradwire.engine.layers import BatchNormLayer
from gradwire.engine.losses import FUSED_DELTAS, LOGIT_LOSSES
from gradwire.engine.metrics import R2
from gradwire.engine.spec import LayerSpec

GAPS = (0.5, 18.0, 53.0, 500.0, 1e4)
RTOL = {"float64": 1e-13, "float32": 1e-6}
PRECISION = 50
"""Decimal digits of the references: far beyond float64's 16."""

# ----------------------------------------------------------------------------- references


def ln1p(x: Decimal) -> Decimal:
    """``ln(1 + x)`` to ``PRECISION`` digits, even where ``x`` is far below one ulp of 1."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        if x > Decimal("1e-20"):
            return (1 + x).ln()
        return x - x * x / 2 + x * x * x / 3  # the series; the next term is below x·1e-60


def log1p_exp(t: float) -> Decimal:
    """``ln(1 + e^t)``."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return ln1p(Decimal(t).exp())


def softmax_ce_reference(z: list[float], y: list[float]) -> Decimal:
    """``Σ_k y_k (lse(z) − z_k)``, each ``lse(z) − z_k = ln(1 + Σ_{j≠k} e^(z_j − z_k))`` in Decimal."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        total = Decimal(0)
        for k, (zk, yk) in enumerate(zip(z, y, strict=True)):
            rest = sum(((Decimal(zj) - Decimal(zk)).exp() for j, zj in enumerate(z) if j != k), Decimal(0))
            total += Decimal(yk) * ln1p(rest)
        return total


def sigmoid_ce_reference(z: list[float], y: list[float]) -> Decimal:
    """``Σ_k −y_k ln σ(z_k) − (1 − y_k) ln(1 − σ(z_k))``, summed as
    ``Σ_k y_k ln(1 + e^−z_k) + (1 − y_k) ln(1 + e^z_k)``."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return sum(
            (
                Decimal(yk) * log1p_exp(-zk) + (1 - Decimal(yk)) * log1p_exp(zk)
                for zk, yk in zip(z, y, strict=True)
            ),
            Decimal(0),
        )


CASES = {
    # (output, loss): (its reference, rows of logits and targets as functions of the gap)
    ("softmax", "softmax_crossentropy"): (
        softmax_ce_reference,
        lambda g: [
            ([g, 0.0, -g], [0.0, 1.0, 0.0]),
            ([g, 0.0, -g], [1.0, 0.0, 0.0]),
            ([g, 0.0, -g], [0.0, 0.5, 0.5]),
        ],
    ),
    ("sigmoid", "binary_crossentropy"): (
        sigmoid_ce_reference,
        lambda g: [
            ([g, -g, 0.5], [0.0, 1.0, 1.0]),
            ([g, -g, 0.5], [1.0, 0.0, 0.0]),
            ([g, -g, 0.5], [0.25, 0.5, 1.0]),
        ],
    ),
}


def identity_network(output: str, loss: str, dtype: str) -> Network:
    """One dense layer with ``W = I``, ``b = 0``: its logits are its inputs."""
    net = Network(NetworkSpec(3, (Dense(3, output, "xavier_uniform"),), loss, dtype))
    net.load_state_arrays({"0.W": np.eye(3), "0.b": np.zeros(3)})
    return net


def problem(pair: tuple[str, str], gap: float, dtype: str) -> tuple[np.ndarray, np.ndarray, list[Decimal]]:
    """Logits (exact in ``dtype``), targets, and the reference loss of each row."""
    reference, rows = CASES[pair]
    X = np.array([z for z, _ in rows(gap)], dtype)
    Y = np.array([y for _, y in rows(gap)], dtype)
    exact = [reference([float(v) for v in x], [float(v) for v in y]) for x, y in zip(X, Y, strict=True)]
    return X, Y, exact


# ----------------------------------------------------------------------------- 1. losses from logits


def test_every_cross_entropy_pair_is_fused_and_reported_from_logits() -> None:
    accepted = {(act, name) for name, loss in LOSSES.items() for act in loss.accepts}
    cross_entropies = {pair for pair in accepted if pair[1] != "squared_error"}
    assert set(LOGIT_LOSSES) == cross_entropies
    assert cross_entropies <= set(FUSED_DELTAS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("gap", GAPS)
@pytest.mark.parametrize("pair", sorted(CASES))
def test_gradients_loss_is_exact_at_any_logit_gap(pair: tuple[str, str], gap: float, dtype: str) -> None:
    net = identity_network(*pair, dtype)
    X, Y, exact = problem(pair, gap, dtype)
    for i, want in enumerate(exact):  # one row at a time: a small loss is not hidden by a big one
        got = net.loss_and_gradients(X[i : i + 1], Y[i : i + 1])[0]
        # A loss below the dtype's smallest normal number may round to 0.
        assert got == pytest.approx(float(want), rel=RTOL[dtype], abs=float(np.finfo(dtype).tiny)), (
            i,
            float(want),
        )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("pair", sorted(CASES))
def test_evaluation_history_and_best_loss_are_exact_at_a_gap_of_ten_thousand(
    pair: tuple[str, str], dtype: str
) -> None:
    X, Y, exact = problem(pair, 1e4, dtype)
    mean = float(sum(exact) / len(exact))
    assert mean > 1e3  # where a clipped probability reported at most 36.04 (15.94 in float32)
    net = identity_network(*pair, dtype)
    assert net.evaluate(X, Y)[0] == pytest.approx(mean, rel=RTOL[dtype])
    # A step of 1e-30 leaves the weights as they were, so every epoch figure is the same loss.
    config = TrainConfig(
        epochs=1,
        batch_size=len(X),
        shuffle=False,
        optimizer=OptimizerConfig("sgd", 1e-30),
        loss_threshold=100.0,
    )
    result = Trainer(net, config).fit(X, Y, validation_data=(X, Y))
    record = result.history[0]
    assert record.train_loss == pytest.approx(mean, rel=RTOL[dtype])
    assert record.val_loss == pytest.approx(mean, rel=RTOL[dtype])
    assert result.best_loss == pytest.approx(mean, rel=RTOL[dtype])
    assert result.stop_reason == "max_epochs"  # the true loss is far above loss_threshold


# ----------------------------------------------------------------------------- 2. output errors


def sigmoid_d(z: float) -> tuple[Decimal, Decimal]:
    """``σ(z)`` and ``σ′(z) = e^−|z| / (1 + e^−|z|)²``."""
    e = (-abs(Decimal(z))).exp()
    return 1 / (1 + (-Decimal(z)).exp()), e / (1 + e) ** 2


def tanh_d(z: float) -> tuple[Decimal, Decimal]:
    """``tanh z`` and ``sech² z = 4 / (e^z + e^−z)²``."""
    e = (-2 * abs(Decimal(z))).exp()
    return (1 - e) / (1 + e) * (1 if z >= 0 else -1), 4 * e / (1 + e) ** 2


ELEMENTWISE = {
    "identity": lambda z: (Decimal(z), Decimal(1)),
    "sigmoid": sigmoid_d,
    "tanh": tanh_d,
    "relu": lambda z: (max(Decimal(z), Decimal(0)), Decimal(z > 0)),
    "leaky_relu": lambda z: (
        Decimal(z) if z > 0 else Decimal(z) * Decimal(LEAKY_SLOPE),
        Decimal(1) if z > 0 else Decimal(LEAKY_SLOPE),
    ),
}


def softmax_d(z: list[float]) -> list[Decimal]:
    m = max(z)
    e = [(Decimal(v) - Decimal(m)).exp() for v in z]
    return [v / sum(e) for v in e]


def output_error_reference(output: str, loss: str, z: list[float], y: list[float]) -> list[Decimal]:
    """``∂L/∂z`` of one row from closed forms: ``Jᵀ(a − y)`` for squared error, ``a·Σy − y`` or
    ``a − y`` for the matched cross-entropies."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        t = [Decimal(v) for v in y]
        if output == "softmax":
            a = softmax_d(z)
            if loss == "softmax_crossentropy":
                return [ak * sum(t) - tk for ak, tk in zip(a, t, strict=True)]
            v = [ak - tk for ak, tk in zip(a, t, strict=True)]
            dot = sum(vk * ak for vk, ak in zip(v, a, strict=True))
            return [ak * (vk - dot) for ak, vk in zip(a, v, strict=True)]
        pairs = [ELEMENTWISE[output](zk) for zk in z]
        if loss == "binary_crossentropy":
            return [ak - tk for (ak, _), tk in zip(pairs, t, strict=True)]
        return [(ak - tk) * dk for (ak, dk), tk in zip(pairs, t, strict=True)]


ACCEPTED = sorted((act, name) for name, loss in LOSSES.items() for act in loss.accepts)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("gap", [18.0, 53.0, 500.0])
@pytest.mark.parametrize(("output", "loss"), ACCEPTED)
def test_every_accepted_pair_has_an_output_error_exact_to_rounding_at_saturation(
    output: str, loss: str, gap: float, dtype: str
) -> None:
    """Absolute error a few ulps of the O(1) factors: no pair divides by a saturated a(1 − a).

    (Softmax with binary cross-entropy did, and was wrong by O(1) here; it is refused.)"""
    net = identity_network(output, loss, dtype)
    z, y = [gap, -gap, 0.5], [0.0, 1.0, 0.25]
    grads = net.loss_and_gradients(np.array([z]), np.array([y]))[1]
    want = [float(v) for v in output_error_reference(output, loss, z, y)]
    scale = max(1.0, gap if output in ("identity", "relu", "leaky_relu") else 1.0)
    np.testing.assert_allclose(grads["0.b"], want, rtol=0, atol=8 * np.finfo(dtype).eps * scale)


def test_softmax_with_binary_crossentropy_is_refused_naming_the_allowed_pairs() -> None:
    with pytest.raises(InvalidArgument) as info:
        NetworkSpec(2, (Dense(2, "softmax"),), "binary_crossentropy")
    assert info.value.field == "loss"
    assert info.value.allowed == ("sigmoid",)
    assert "a softmax output takes squared_error or softmax_crossentropy" in str(info.value)
    with pytest.raises(InvalidArgument, match=r"^loss: binary_crossentropy needs"):
        NetworkSpec.from_dict(
            {
                "input_dim": 2,
                "layers": [{"kind": "dense", "units": 2, "activation": "softmax"}],
                "loss": "binary_crossentropy",
            }
        )


# ----------------------------------------------------------------------------- 3. R² far from zero


def r2_reference(a: np.ndarray, y: np.ndarray) -> float:
    """1 − Σ SS_res / Σ SS_tot over all outputs, in exact rational arithmetic."""
    ys = [[Fraction(float(v)) for v in col] for col in y.T]
    d = [Fraction(float(t)) - Fraction(float(p)) for t, p in zip(y.flat, a.flat, strict=True)]
    res = sum((v * v for v in d), Fraction(0))
    tot = Fraction(0)
    for col in ys:
        mean = sum(col) / len(col)
        tot += sum(((v - mean) ** 2 for v in col), Fraction(0))
    return float(1 - res / tot)


@pytest.mark.parametrize("offsets", [(1e8,), (1e12,), (1e8, 1e12)])
def test_r2_is_exact_for_targets_far_from_zero(offsets: tuple[float, ...], rng: np.random.Generator) -> None:
    n = 45
    y = np.array(offsets) + rng.normal(size=(n, len(offsets)))
    a = y + 0.1 * rng.normal(size=y.shape)  # a near-perfect predictor: R² ≈ 0.99
    metric = R2()
    for start, stop in ((0, 7), (7, 8), (8, 40), (40, 45)):  # streamed, a one-row batch included
        metric.update(a[start:stop], y[start:stop])
    want = r2_reference(a, y)
    assert 0.98 < want < 1.0
    assert metric.value() == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- 4. batch norm batches


@pytest.mark.parametrize(
    ("n", "batch_size", "min_rows", "bounds"),
    [
        (33, 32, 2, [(0, 33)]),
        (65, 32, 2, [(0, 32), (32, 65)]),
        (34, 32, 2, [(0, 32), (32, 34)]),
        (64, 32, 2, [(0, 32), (32, 64)]),
        (33, 32, 1, [(0, 32), (32, 33)]),
        (5, 2, 2, [(0, 2), (2, 5)]),
        (1, 32, 2, [(0, 1)]),
        (0, 32, 2, []),
    ],
)
def test_batch_bounds_fold_only_a_remainder_below_min_rows(
    n: int, batch_size: int, min_rows: int, bounds: list[tuple[int, int]]
) -> None:
    assert list(batch_bounds(n, batch_size, min_rows)) == bounds


def batchnorm_first(seed: int = 1) -> Network:
    """Batch norm straight on the inputs: its batch statistics are the data's, whatever the weights."""
    return Network(
        NetworkSpec(2, (BatchNorm(momentum=0.8), Dense(1, "identity")), "squared_error", seed=seed)
    )


def test_33_rows_in_batches_of_32_move_the_running_averages_by_the_datas_own() -> None:
    rng = np.random.default_rng(8)
    X = rng.normal([3.0, -1.0], [2.0, 0.5], (33, 2))
    Y = rng.normal(size=(33, 1))
    net, epochs, m = batchnorm_first(), 3, 0.8
    Trainer(net, TrainConfig(epochs=epochs, batch_size=32, seed=4)).fit(X, Y)
    layer = net.layers[0]
    assert isinstance(layer, BatchNormLayer)
    kept = m**epochs  # each epoch is one batch of all 33 rows: r ← m·r + (1 − m)·(its statistic)
    for j, column in enumerate(X.T.tolist()):
        assert layer.running_var[j] == pytest.approx(
            kept + (1 - kept) * statistics.variance(column), rel=1e-12
        )
        assert layer.running_mean[j] == pytest.approx((1 - kept) * statistics.fmean(column), rel=1e-12)


def reference_sgd(
    net: Network, X: np.ndarray, Y: np.ndarray, batch_size: int, lr: float, epochs: int
) -> None:
    """The plain loop: a seeded permutation, batches of ``batch_size`` and whatever remains."""
    rng = np.random.default_rng(4)
    grad = np.empty_like(net.flat)
    views = net.gradient_views(grad)
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for begin in range(0, len(X), batch_size):
            rows = order[begin : begin + batch_size]
            a, caches = net.forward(X[rows], training=True)
            net.backward(caches, net.output_error(a, caches, Y[rows])[1], views)
            net.commit(caches)
            net.flat -= lr * grad


@pytest.mark.parametrize(
    ("layers", "n"),
    [
        ((Dense(4, "tanh"), Dense(1, "identity")), 33),  # no batch norm: the one-row step stays
        ((Dense(4, "identity"), BatchNorm("tanh"), Dense(1, "identity")), 34),  # a remainder of 2
        ((Dense(4, "identity"), BatchNorm("tanh"), Dense(1, "identity")), 64),  # no remainder
    ],
)
def test_every_other_split_trains_bit_for_bit_as_the_plain_loop(
    layers: tuple[LayerSpec, ...], n: int
) -> None:
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(n, 3)), rng.normal(size=(n, 1))
    spec = NetworkSpec(3, layers, "squared_error", seed=2)
    trained, reference = Network(spec), Network(spec)
    config = TrainConfig(epochs=2, batch_size=32, seed=4, optimizer=OptimizerConfig("sgd", 0.05))
    Trainer(trained, config).fit(X, Y)
    reference_sgd(reference, X, Y, 32, 0.05, 2)
    want = reference.state_arrays()
    for name, array in trained.state_arrays().items():
        np.testing.assert_array_equal(array, want[name], err_msg=name)


def test_batch_norm_refuses_what_would_leave_a_one_row_batch() -> None:
    X, Y = np.ones((1, 2)), np.ones((1, 1))
    with pytest.raises(InvalidArgument) as info:
        Trainer(batchnorm_first(), TrainConfig(epochs=1)).fit(X, Y)
    assert info.value.field == "X"
    with pytest.raises(InvalidArgument) as info:
        Trainer(batchnorm_first(), TrainConfig(epochs=1, batch_size=1)).fit(np.ones((4, 2)), np.ones((4, 1)))
    assert info.value.field == "batch_size"
    net = batchnorm_first()
    with pytest.raises(InvalidArgument, match="at least 2 rows") as info:
        net.loss_and_gradients(X, Y, field="inputs")
    assert info.value.field == "inputs"
    loss, _ = net.loss_and_gradients(X, Y, training=False)  # the running averages take one row
    assert np.isfinite(loss)
    # Without batch norm one row is an ordinary batch.
    plain = Network(NetworkSpec(2, (Dense(1, "identity"),), "squared_error"))
    assert Trainer(plain, TrainConfig(epochs=1)).fit(X, Y).epochs_run == 1
    assert np.isfinite(plain.loss_and_gradients(X, Y)[0])


# ----------------------------------------------------------------------------- data past a dtype's range


def test_data_past_a_float32_networks_range_is_refused_before_training() -> None:
    spec = NetworkSpec(2, (Dense(1, "identity"),), loss="squared_error", dtype="float32")
    X, Y = np.ones((6, 2)), np.ones((6, 1))
    big = X.copy()
    big[4, 1] = -float(np.finfo(np.float32).max) * 1.01  # finite in float64, -inf in float32
    for kwargs, field in (
        ({"X": big, "Y": Y}, "X"),
        ({"X": X, "Y": big[:, 1:]}, "Y"),
        ({"X": X, "Y": Y, "validation_data": (big, Y)}, "validation_data[0]"),
    ):
        network = Network(spec)
        before = network.flat.copy()
        with pytest.raises(InvalidArgument) as info:
            fit(network, config=TrainConfig(epochs=1), **kwargs)
        assert info.value.field == field
        np.testing.assert_array_equal(network.flat, before)  # refused before any step
    edge = X.copy()
    edge[0, 0] = float(np.finfo(np.float32).max)  # the largest float32 itself fits
    assert fit(Network(spec), edge, Y, TrainConfig(epochs=1)).stop_reason in ("max_epochs", "non_finite")


# ----------------------------------------------------------------------------- enormous steps


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"])
def test_a_learning_rate_near_floats_limit_ends_in_the_documented_non_finite_stop(
    optimizer: str, clip: float | None
) -> None:
    """A step of 1e308 overflows the weights: the run stops "non_finite" with the last finite
    weights (here the first epoch's start), never with an exception from the arithmetic."""
    spec = NetworkSpec(2, (Dense(3, "tanh"), Dense(1, "identity")), loss="squared_error")
    X, Y = np.arange(16.0).reshape(8, 2) / 8, np.arange(8.0).reshape(8, 1)
    network = Network(spec)
    start = network.flat.copy()
    config = TrainConfig(epochs=3, batch_size=4, optimizer=OptimizerConfig(optimizer, 1e308), clip_norm=clip)
    result = Trainer(network, config).fit(X, Y)
    assert result.stop_reason == "non_finite"
    assert np.isfinite(network.flat).all()
    np.testing.assert_array_equal(network.flat, start)
