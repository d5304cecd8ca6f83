"""Analytic gradients against central differences, in float64, on small random networks."""

from __future__ import annotations

import numpy as np
import pytest

from gradwire.engine import (
    FUSED_DELTAS,
    LOSSES,
    BatchNorm,
    Dense,
    Network,
    NetworkSpec,
    Residual,
    check_gradients,
    one_hot,
)
from gradwire.engine.activations import get_activation

TOLERANCE = 1e-6
ACCEPTED_PAIRS = [(act, loss) for loss, spec in LOSSES.items() for act in spec.accepts]


def targets_for(loss: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Targets each loss is meant for: one-hot rows, 0/1 entries or real values."""
    if loss == "softmax_crossentropy":
        return one_hot(rng.integers(0, k, n), k)
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (n, k)).astype(float)
    return rng.normal(size=(n, k))


def test_every_loss_accepts_at_least_its_matched_output() -> None:
    assert len(ACCEPTED_PAIRS) == 8  # softmax + binary cross-entropy is refused (see losses.py)
    assert set(FUSED_DELTAS) <= set(ACCEPTED_PAIRS)


@pytest.mark.parametrize(("output", "loss"), ACCEPTED_PAIRS)
@pytest.mark.parametrize("hidden", ["identity", "sigmoid", "tanh", "relu", "leaky_relu"])
def test_gradients_match_central_differences(
    output: str, loss: str, hidden: str, rng: np.random.Generator
) -> None:
    k = 3
    spec = NetworkSpec(
        4,
        (
            Dense(5, hidden, "xavier_normal"),
            Dense(4, hidden, "xavier_normal"),
            Dense(k, output, "xavier_normal"),
        ),
        loss=loss,
        seed=int(rng.integers(1000)),
    )
    X, Y = rng.normal(size=(6, 4)), targets_for(loss, 6, k, rng)
    assert check_gradients(Network(spec), X, Y).worst <= TOLERANCE


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(training: bool, rng: np.random.Generator) -> None:
    spec = NetworkSpec(
        3,
        (
            Dense(6, "identity", "he_normal"),
            BatchNorm("tanh"),
            Dense(4, "relu"),
            BatchNorm("sigmoid"),
            Dense(2, "softmax", "xavier_uniform"),
        ),
        loss="softmax_crossentropy",
        seed=7,
    )
    net = Network(spec)
    # Non-trivial scale, shift and running statistics, so every term of the formulas matters.
    for name, p in net.named_parameters():
        if name.endswith(("gamma", "beta")):
            p[:] = rng.uniform(0.5, 1.5, p.shape)
    for layer in (net.layers[1], net.layers[3]):
        layer.running_mean[:] = rng.normal(size=layer.running_mean.shape)  # type: ignore[attr-defined]
        layer.running_var[:] = rng.uniform(0.5, 2.0, layer.running_var.shape)  # type: ignore[attr-defined]
    X, Y = rng.normal(size=(8, 3)), one_hot(rng.integers(0, 2, 8), 2)
    assert check_gradients(net, X, Y, training=training).worst <= TOLERANCE


def test_skip_connection_gradients(rng: np.random.Generator) -> None:
    spec = NetworkSpec(
        3,
        (
            Dense(5, "tanh", "xavier_normal"),
            Residual(
                (Dense(5, "relu", "he_normal"), BatchNorm(), Dense(5, "tanh", "xavier_normal")),
                "relu",
            ),
            Residual((Dense(5, "sigmoid", "xavier_normal"),), "identity"),
            Dense(2, "identity", "xavier_normal"),
        ),
        loss="squared_error",
        seed=11,
    )
    X, Y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    assert check_gradients(Network(spec), X, Y).worst <= TOLERANCE


@pytest.mark.parametrize("pair", sorted(FUSED_DELTAS))
def test_fused_output_error_equals_the_chain_rule_composition(
    pair: tuple[str, str], rng: np.random.Generator
) -> None:
    """Δ from the shortcut equals activation.backward(a, ∂L/∂a), the general composition."""
    output, loss = pair
    z = rng.normal(size=(10, 4))
    a = get_activation(output).forward(z.copy())
    Y = targets_for(loss, 10, 4, rng)
    composed = get_activation(output).backward(a, LOSSES[loss].gradient(a, Y))
    np.testing.assert_allclose(FUSED_DELTAS[pair](a, Y), composed, rtol=1e-10, atol=1e-14)


def test_gradients_change_nothing_and_never_write_into_inputs(rng: np.random.Generator) -> None:
    spec = NetworkSpec(
        3, (Dense(4, "relu"), BatchNorm(), Dense(2, "softmax")), "softmax_crossentropy", seed=2
    )
    net = Network(spec)
    before = net.state_arrays()
    X, Y = rng.normal(size=(5, 3)), one_hot(rng.integers(0, 2, 5), 2)
    X.flags.writeable = False
    Y.flags.writeable = False
    first = net.loss_and_gradients(X, Y)
    second = net.loss_and_gradients(X, Y)
    assert first[0] == second[0]
    for name in first[1]:
        np.testing.assert_array_equal(first[1][name], second[1][name])
    for name, array in net.state_arrays().items():
        np.testing.assert_array_equal(array, before[name])


def test_gradient_of_squared_error_is_the_seed_delta() -> None:
    """One sigmoid unit: ∂L/∂in = −(y − a)·a(1 − a), Russell & Norvig's Δ with a gradient's sign."""
    spec = NetworkSpec(1, (Dense(1, "sigmoid", "small_uniform"),), "squared_error", seed=0)
    net = Network(spec)
    net.load_state_arrays({"0.W": np.array([[0.8]]), "0.b": np.array([0.1])})
    x, y = 0.5, 1.0
    a = 1 / (1 + np.exp(-(0.8 * x + 0.1)))
    delta = (y - a) * a * (1 - a)
    _, grads = net.loss_and_gradients(np.array([[x]]), np.array([[y]]))
    assert grads["0.W"][0, 0] == pytest.approx(-x * delta, rel=1e-12)
    assert grads["0.b"][0] == pytest.approx(-delta, rel=1e-12)
