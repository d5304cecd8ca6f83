"""One SGD step of a 3-2-1 sigmoid network, worked out by hand (Russell & Norvig 18.7).

x = (1, 0.5, −1), y = 1, learning rate α = 0.5, squared error ½(y − a)².

Hidden:  in₁ = 0.1·1 + 0.3·0.5 + (−0.5)(−1) + 0.05 = 0.8     a₁ = σ(0.8)   = 0.68997448
         in₂ = −0.2·1 + 0.4·0.5 + 0.2·(−1) − 0.05 = −0.25   a₂ = σ(−0.25) = 0.43782350
Output:  in  = 0.7·a₁ − 0.3·a₂ + 0.1 = 0.45163509           a  = σ(in)    = 0.61102792
Loss:    ½(1 − 0.61102792)² = 0.07564964
Errors:  Δ  = (y − a)·a(1 − a) = 0.09244808
         Δ₁ = a₁(1 − a₁)·0.7·Δ = 0.01384288,   Δ₂ = a₂(1 − a₂)·(−0.3)·Δ = −0.00682639
Update:  W₂ⱼ ← W₂ⱼ + α aⱼ Δ;  b₂ ← b₂ + α Δ;  W₁ᵢⱼ ← W₁ᵢⱼ + α xᵢ Δⱼ;  b₁ⱼ ← b₁ⱼ + α Δⱼ
"""

from __future__ import annotations

import numpy as np
import pytest

from gradwire.engine import Dense, Network, NetworkSpec, OptimizerConfig, TrainConfig, Trainer

X = np.array([[1.0, 0.5, -1.0]])
Y = np.array([[1.0]])
W1 = np.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.2]])
B1 = np.array([0.05, -0.05])
W2 = np.array([[0.7], [-0.3]])
B2 = np.array([0.1])
ALPHA = 0.5


def network() -> Network:
    spec = NetworkSpec(
        3, (Dense(2, "sigmoid", "small_uniform"), Dense(1, "sigmoid", "small_uniform")), "squared_error"
    )
    return Network.from_state(spec, {"0.W": W1, "0.b": B1, "1.W": W2, "1.b": B2})


def test_forward_pass_matches_the_hand_computation() -> None:
    cache = network().forward(X)[1][1]  # the output layer's: its input and its output
    hidden, output = cache.x, cache.a
    np.testing.assert_allclose(hidden, [[0.68997448, 0.43782350]], atol=5e-9)
    np.testing.assert_allclose(output, [[0.61102792]], atol=5e-9)
    assert network().loss_and_gradients(X, Y)[0] == pytest.approx(0.07564964, abs=5e-9)


def test_one_sgd_step_matches_the_hand_computation() -> None:
    net = network()
    config = TrainConfig(epochs=1, batch_size=1, shuffle=False, optimizer=OptimizerConfig("sgd", ALPHA))
    Trainer(net, config).fit(X, Y)
    delta, d1, d2 = 0.09244808, 0.01384288, -0.00682639
    a1, a2 = 0.68997448, 0.43782350
    expected = {
        "1.W": W2 + ALPHA * np.array([[a1 * delta], [a2 * delta]]),
        "1.b": B2 + ALPHA * delta,
        "0.W": W1 + ALPHA * X.T @ np.array([[d1, d2]]),
        "0.b": B1 + ALPHA * np.array([d1, d2]),
    }
    for name, value in net.named_parameters():
        np.testing.assert_allclose(value, expected[name], atol=1e-8, err_msg=name)


def test_the_step_equals_the_scalar_algorithm_to_rounding() -> None:
    """The same step written as Russell & Norvig's loops over units, in full precision."""
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    x, y = X[0], Y[0, 0]
    a_hidden = [sigmoid(sum(x[i] * W1[i, j] for i in range(3)) + B1[j]) for j in range(2)]
    a_out = sigmoid(sum(a_hidden[j] * W2[j, 0] for j in range(2)) + B2[0])
    delta = (y - a_out) * a_out * (1 - a_out)
    deltas = [a_hidden[j] * (1 - a_hidden[j]) * W2[j, 0] * delta for j in range(2)]
    net = network()
    Trainer(net, TrainConfig(epochs=1, batch_size=1, optimizer=OptimizerConfig("sgd", ALPHA))).fit(X, Y)
    params = dict(net.named_parameters())
    for j in range(2):
        assert params["1.W"][j, 0] == pytest.approx(W2[j, 0] + ALPHA * a_hidden[j] * delta, rel=1e-14)
        assert params["0.b"][j] == pytest.approx(B1[j] + ALPHA * deltas[j], rel=1e-14)
        for i in range(3):
            assert params["0.W"][i, j] == pytest.approx(W1[i, j] + ALPHA * x[i] * deltas[j], rel=1e-14)
    assert params["1.b"][0] == pytest.approx(B2[0] + ALPHA * delta, rel=1e-14)
