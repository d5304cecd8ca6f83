"""Each optimiser's steps against its update rule written out, element by element."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwire.engine import (
    OPTIMIZERS,
    BatchNorm,
    Dense,
    Network,
    NetworkSpec,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    Trainer,
)
from gradwire.engine.optimizers import make_optimizer
from gradwire.engine.schedules import make_schedule

LR, MU, B1, B2, EPS, RHO = 0.1, 0.8, 0.9, 0.99, 1e-8, 0.95
GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.5, 1.0]), np.array([1.0, 1.0, -3.0])]
W0 = np.array([1.0, -2.0, 0.5])


def reference(name: str, wd: float) -> list[np.ndarray]:
    """The weights after each of the three steps, computed from the published rules."""
    w, v, m, s = W0.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    out = []
    for t, grad in enumerate(GRADS, start=1):
        g = grad + (wd * w if name != "adamw" else 0.0)
        if name == "sgd":
            w = w - LR * g
        elif name == "momentum":
            v = MU * v + LR * g
            w = w - v
        elif name == "nesterov":
            v = MU * v + LR * g
            w = w - (MU * v + LR * g)
        elif name in ("adam", "adamw"):
            m = B1 * m + (1 - B1) * g
            s = B2 * s + (1 - B2) * g**2
            m_hat, s_hat = m / (1 - B1**t), s / (1 - B2**t)
            w = w - LR * m_hat / (np.sqrt(s_hat) + EPS) - (LR * wd * w if name == "adamw" else 0.0)
        elif name == "rmsprop":
            s = RHO * s + (1 - RHO) * g**2
            w = w - LR * g / (np.sqrt(s) + EPS)
        out.append(w.copy())
    return out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_steps_follow_the_written_rule(name: str, wd: float) -> None:
    config = OptimizerConfig(name, LR, momentum=MU, beta1=B1, beta2=B2, epsilon=EPS, rho=RHO, weight_decay=wd)
    w = W0.copy()
    opt = make_optimizer(config, w)
    for grad, expected in zip(GRADS, reference(name, wd), strict=True):
        w -= opt.step(w, grad.copy(), LR)
        np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_weight_decay_spares_entries_outside_the_mask(name: str) -> None:
    config = OptimizerConfig(name, LR, weight_decay=0.5)
    w = W0.copy()
    u = make_optimizer(config, w, decay_mask=np.array([0.0, 1.0, 0.0])).step(w, np.zeros(3), LR)
    assert u[0] == u[2] == 0.0
    assert u[1] != 0.0


def test_weight_decay_reaches_dense_weights_only() -> None:
    spec = NetworkSpec(2, (Dense(3, "relu"), BatchNorm(), Dense(1, "identity")), "squared_error")
    net = Network(spec)
    trainer = Trainer(net, TrainConfig(optimizer=OptimizerConfig("sgd", weight_decay=0.1)))
    assert trainer.optimizer.decay_mask is not None
    masks = dict(zip(net.param_names, net.unflatten(trainer.optimizer.decay_mask), strict=True))
    assert {name for name, m in masks.items() if m.all()} == {"0.W", "2.W"}
    assert not any(masks[name].any() for name in ("0.b", "1.gamma", "1.beta", "2.b"))


def test_global_norm_clipping_rescales_the_whole_gradient() -> None:
    """With SGD the applied step is exactly η·g·c/‖g‖ once ‖g‖ exceeds c."""
    spec = NetworkSpec(
        2, (Dense(3, "tanh", "xavier_normal"), Dense(1, "identity", "xavier_normal")), "squared_error"
    )
    X, Y = np.array([[3.0, -2.0], [1.0, 4.0]]), np.array([[10.0], [-8.0]])
    net = Network(spec)
    _, grads = net.loss_and_gradients(X, Y)
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    clip = norm / 4
    before = net.state_arrays()
    config = TrainConfig(
        epochs=1, batch_size=2, shuffle=False, optimizer=OptimizerConfig("sgd", 0.1), clip_norm=clip
    )
    Trainer(net, config).fit(X, Y)
    for name, value in net.named_parameters():
        np.testing.assert_allclose(value, before[name] - 0.1 * grads[name] * clip / norm, rtol=1e-12)


SCHEDULES = {
    "constant": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "step": [1.0, 1.0, 0.5, 0.5, 0.25, 0.25],
    "exponential": [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125],
    "cosine": [1.0, 0.9330127, 0.75, 0.5, 0.25, 0.0669873],
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_formulas(name: str) -> None:
    schedule = make_schedule(ScheduleConfig(name, step_size=2, gamma=0.5, t_max=6), 1.0)
    rates = [schedule.rate(e) for e in range(6)]
    np.testing.assert_allclose(rates, SCHEDULES[name], atol=1e-7)


def test_reduce_on_plateau_waits_patience_epochs_then_cuts() -> None:
    schedule = make_schedule(
        ScheduleConfig("plateau", factor=0.5, patience=2, min_lr=0.2, threshold=0.0), 1.0
    )
    rates = []
    for loss in [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]:
        schedule.observe(loss)
        rates.append(schedule.rate(0))
    # Improvements at 5, 4 and 3; three epochs without one trigger a cut; never below min_lr.
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2]
