"""Hypothesis properties: shapes, finiteness on large inputs, seed determinism, zero gradients."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradwire.engine import (
    LOSSES,
    OPTIMIZERS,
    BatchNorm,
    Dense,
    Network,
    NetworkSpec,
    OptimizerConfig,
    Residual,
)
from gradwire.engine.activations import HIDDEN_ACTIVATIONS
from gradwire.engine.initializers import INITIALIZERS
from gradwire.engine.optimizers import make_optimizer

PAIRS = [(act, loss) for loss, spec in LOSSES.items() for act in spec.accepts]


@st.composite
def specs(draw: st.DrawFn) -> NetworkSpec:
    input_dim = width = draw(st.integers(1, 6))
    layers: list = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["dense", "batchnorm", "residual"]))
        if kind == "dense":
            width = draw(st.integers(1, 8))
            layers.append(
                Dense(
                    width,
                    draw(st.sampled_from(HIDDEN_ACTIVATIONS)),
                    draw(st.sampled_from(sorted(INITIALIZERS))),
                )
            )
        elif kind == "batchnorm":
            layers.append(BatchNorm(draw(st.sampled_from(HIDDEN_ACTIVATIONS))))
        else:
            layers.append(Residual((Dense(width, "relu"), Dense(width, "identity")), "tanh"))
    output, loss = draw(st.sampled_from(PAIRS))
    layers.append(Dense(draw(st.integers(1, 4)), output, "xavier_uniform"))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return NetworkSpec(input_dim, layers, loss, dtype, draw(st.integers(0, 2**32)))


@settings(max_examples=60, deadline=None)
@given(spec=specs(), n=st.integers(1, 20), data=st.data())
def test_outputs_have_the_right_shape_dtype_and_are_finite(
    spec: NetworkSpec, n: int, data: st.DataObject
) -> None:
    X = data.draw(arrays(np.float64, (n, spec.input_dim), elements=st.floats(-1e4, 1e4)))
    out = Network(spec).predict(X)
    assert out.shape == (n, spec.output_dim)
    assert out.dtype == np.dtype(spec.dtype)
    assert np.isfinite(out).all()


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1.0, 1e30), seed=st.integers(0, 1000), dtype=st.sampled_from(["float32", "float64"]))
def test_softmax_stays_finite_and_normalised_on_huge_inputs(scale: float, seed: int, dtype: str) -> None:
    spec = NetworkSpec(
        3,
        (Dense(4, "identity", "he_normal"), Dense(3, "softmax", "he_normal")),
        "softmax_crossentropy",
        dtype,
        seed,
    )
    X = np.random.default_rng(seed).normal(size=(8, 3)) * min(scale, 1e30 if dtype == "float64" else 1e15)
    out = Network(spec).predict(X)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    Y = np.eye(3)[np.arange(8) % 3]
    loss, grads = Network(spec).loss_and_gradients(X, Y)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in grads.values())


@settings(max_examples=30, deadline=None)
@given(spec=specs())
def test_same_seed_same_network(spec: NetworkSpec) -> None:
    first, second = Network(spec).state_arrays(), Network(spec).state_arrays()
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name])


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(OPTIMIZERS)),
    lr=st.floats(1e-6, 10.0),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    seed=st.integers(0, 1000),
)
def test_zero_gradients_leave_parameters_unchanged(
    name: str, lr: float, shape: tuple[int, int], seed: int
) -> None:
    w = np.random.default_rng(seed).normal(size=shape)
    before = w.copy()
    optimizer = make_optimizer(OptimizerConfig(name, lr), w)
    for _ in range(3):
        w -= optimizer.step(w, np.zeros(shape), lr)
    np.testing.assert_array_equal(w, before)
