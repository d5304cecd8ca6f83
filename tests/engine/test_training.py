"""Training: it learns, it stops for the stated reason, it keeps the best weights, it resumes exactly."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from helpers import two_spirals

from gradwire.engine import (
    LOSSES,
    BatchNorm,
    Dense,
    Network,
    NetworkSpec,
    OptimizerConfig,
    Residual,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    carry_optimizer_state,
    export_state,
    final_state,
    fit,
    one_hot,
    restore_trainer,
)
from gradwire.engine.state import from_bytes, to_bytes

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = np.array([[0.0], [1.0], [1.0], [0.0]])


def test_xor_with_sigmoid_units() -> None:
    """The seed's classic: no single unit can represent XOR; two hidden sigmoid units can."""
    spec = NetworkSpec(
        2,
        (Dense(3, "sigmoid", "xavier_uniform"), Dense(1, "sigmoid", "xavier_uniform")),
        "squared_error",
        seed=1,
    )
    net = Network(spec)
    config = TrainConfig(
        epochs=5000, batch_size=4, optimizer=OptimizerConfig("momentum", 2.0), loss_threshold=0.002
    )
    result = fit(net, XOR_X, XOR_Y, config)
    assert result.stop_reason == "loss_threshold"
    np.testing.assert_array_equal(net.predict(XOR_X) > 0.5, XOR_Y > 0.5)


@pytest.mark.slow
def test_two_spirals_reach_high_accuracy() -> None:
    X, labels = two_spirals(300, 0.02, np.random.default_rng(3))
    spec = NetworkSpec(
        2,
        (Dense(48, "relu"), Dense(48, "relu"), Dense(2, "softmax", "xavier_uniform")),
        "softmax_crossentropy",
        seed=4,
    )
    net = Network(spec)
    config = TrainConfig(epochs=300, batch_size=32, optimizer=OptimizerConfig("adam", 0.01), seed=5)
    result = fit(net, X, one_hot(labels, 2), config)
    accuracy = np.mean(net.predict(X).argmax(axis=1) == labels)
    assert accuracy >= 0.98, accuracy
    assert result.history[-1].train_metric >= 0.95
    assert result.history[-1].metric_name == "accuracy"


def test_regression_fits_a_smooth_function() -> None:
    rng = np.random.default_rng(6)
    X = rng.uniform(-3, 3, (400, 1))
    Y = np.sin(X) + 0.1 * X**2
    spec = NetworkSpec(
        1, (Dense(32, "tanh", "xavier_normal"), Dense(1, "identity", "xavier_normal")), "squared_error"
    )
    config = TrainConfig(
        epochs=200, batch_size=32, optimizer=OptimizerConfig("adam", 0.01), validation_fraction=0.25
    )
    net = Network(spec)
    result = fit(net, X, Y, config)
    residual = Y - net.predict(X)
    r2 = 1 - residual.var() / Y.var()
    assert r2 > 0.98
    assert result.history[-1].metric_name == "r2"
    assert result.history[result.best_epoch - 1].val_metric > 0.97


def noisy_problem(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 5))
    return X, X[:, :1] + rng.normal(0.0, 1.0, (60, 1))


def big_net(seed: int = 0) -> Network:
    spec = NetworkSpec(
        5, (Dense(64, "relu"), Dense(64, "relu"), Dense(1, "identity")), "squared_error", seed=seed
    )
    return Network(spec)


def test_early_stopping_returns_the_best_weights() -> None:
    """A large net on few noisy rows overfits; the validation loss turns and training stops."""
    X, Y = noisy_problem(7)
    Xv, Yv = noisy_problem(8)
    net = big_net()
    config = TrainConfig(epochs=500, batch_size=10, optimizer=OptimizerConfig("adam", 0.01), patience=8)
    result = fit(net, X, Y, config, validation_data=(Xv, Yv))
    val_losses = [r.val_loss for r in result.history]
    assert result.stop_reason == "early_stopping"
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert result.epochs_run == result.best_epoch + config.patience
    assert net.evaluate(Xv, Yv)[0] == pytest.approx(min(val_losses), rel=1e-12)
    assert min(val_losses) < val_losses[-1]


def test_best_weights_are_returned_when_epochs_run_out() -> None:
    X, Y = noisy_problem(7)
    Xv, Yv = noisy_problem(8)
    net = big_net()
    result = fit(
        net,
        X,
        Y,
        TrainConfig(epochs=60, batch_size=10, optimizer=OptimizerConfig("adam", 0.01)),
        validation_data=(Xv, Yv),
    )
    assert result.stop_reason == "max_epochs"
    assert result.best_epoch < 60
    assert net.evaluate(Xv, Yv)[0] == pytest.approx(result.best_loss, rel=1e-12)


def test_loss_threshold_and_callback_stop_with_their_reasons() -> None:
    X, Y = noisy_problem(1)
    result = fit(big_net(), X, Y, TrainConfig(epochs=500, batch_size=10, loss_threshold=0.7))
    assert result.stop_reason == "loss_threshold"
    assert result.history[-1].train_loss <= 0.7 < result.history[-2].train_loss
    seen: list[int] = []
    result = fit(
        big_net(), X, Y, TrainConfig(epochs=50), callback=lambda r: seen.append(r.epoch) or r.epoch == 3
    )
    assert (result.stop_reason, result.epochs_run, seen) == ("callback", 3, [1, 2, 3])


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"loss_threshold": 0.7}, "loss_threshold"), ({"patience": 3}, "early_stopping")],
)
def test_the_epoch_that_triggers_a_stop_is_reported_and_best_epoch_names_a_reported_epoch(
    options: dict, reason: str
) -> None:
    X, Y = noisy_problem(1)
    Xv, Yv = noisy_problem(2)
    config = TrainConfig(epochs=500, batch_size=10, optimizer=OptimizerConfig("adam", 0.01), **options)
    seen: list[int] = []
    result = fit(big_net(), X, Y, config, validation_data=(Xv, Yv), callback=lambda r: seen.append(r.epoch))
    assert result.stop_reason == reason
    assert seen == [r.epoch for r in result.history] == list(range(1, result.epochs_run + 1))
    assert result.best_epoch in seen


def test_a_stop_request_is_honoured_within_one_minibatch() -> None:
    X, Y = noisy_problem(1)
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked == 15  # during the third epoch (six minibatches each)

    trainer = Trainer(big_net(), TrainConfig(epochs=10, batch_size=10))
    result = trainer.fit(X, Y, should_stop=should_stop)
    assert (result.stop_reason, asked, trainer.epoch, len(result.history)) == ("stop_requested", 15, 2, 2)


def test_a_non_finite_loss_stops_training_and_leaves_finite_weights() -> None:
    X, Y = noisy_problem(1)
    net = big_net()
    trainer = Trainer(net, TrainConfig(epochs=50, batch_size=10, optimizer=OptimizerConfig("momentum", 10.0)))
    result = trainer.fit(X * 1e3, Y * 1e3)
    assert result.stop_reason == "non_finite"
    assert all(np.isfinite(p).all() for p in net.params)  # the trainer's own weights, not only the best
    assert np.isfinite(net.predict(X)).all()
    assert np.isfinite(trainer.optimizer.state["velocity"]).all()  # safe to train on
    # The optimiser went back with the weights: to the best epoch's state, from before the blow-up.
    assert trainer.optimizer.t == trainer.best.optimizer.t
    np.testing.assert_array_equal(
        trainer.optimizer.state["velocity"], trainer.best.optimizer.slots["velocity"]
    )


def test_a_blow_up_after_good_epochs_leaves_the_best_epochs_weights_and_moments_together() -> None:
    """Train well for a while, then raise the rate until it diverges: what the run leaves is the
    best epoch's weights with that epoch's optimiser state, finite, and a run continuing from the
    pair trains normally."""
    X, Y = noisy_problem(4)
    trainer = Trainer(
        big_net(), TrainConfig(epochs=5, batch_size=10, optimizer=OptimizerConfig("adam", 0.01))
    )
    trainer.fit(X, Y)
    good = final_state(trainer, restore_best=True)
    assert good[1].t == trainer.best.epoch * 6
    trainer.fit(X * 1e150, Y * 1e150)  # the loss overflows at once
    weights, moments = final_state(trainer, restore_best=True)
    assert trainer.best.epoch == 5
    assert moments.t == good[1].t
    for name, array in good[0].items():
        np.testing.assert_array_equal(weights[name], array)
    assert all(np.isfinite(a).all() for a in (*weights.values(), *moments.slots.values()))
    follower = Trainer(
        Network.from_state(big_net().spec, weights),
        TrainConfig(epochs=3, batch_size=10, optimizer=OptimizerConfig("adam", 0.01)),
    )
    assert carry_optimizer_state(follower, moments)
    result = follower.fit(X, Y)
    assert (result.stop_reason, result.epochs_run) == ("max_epochs", 3)


def test_float32_is_kept_through_training_and_inputs_are_not_written() -> None:
    X, Y = noisy_problem(2)
    X.flags.writeable = False
    Y.flags.writeable = False
    spec = NetworkSpec(
        5, (Dense(8, "relu"), BatchNorm("tanh"), Dense(1, "identity")), "squared_error", "float32"
    )
    net = Network(spec)
    config = TrainConfig(epochs=3, optimizer=OptimizerConfig("adam", 0.01, weight_decay=1e-3), clip_norm=1.0)
    result = fit(net, X, Y, config, validation_data=(X, Y))
    assert all(p.dtype == np.float32 for p in net.params)
    assert all(a.dtype == np.float32 for a in result.best_weights.values())
    assert net.predict(X).dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.loss_and_gradients(X, Y)[1].values())


def resumable_setup() -> tuple[np.ndarray, np.ndarray, NetworkSpec, TrainConfig]:
    X, labels = two_spirals(60, 0.05, np.random.default_rng(9))
    spec = NetworkSpec(
        2,
        (
            Dense(16, "identity"),
            BatchNorm("relu"),
            Residual((Dense(16, "relu"), Dense(16, "identity")), "relu"),
            Dense(2, "softmax", "xavier_uniform"),
        ),
        "softmax_crossentropy",
        seed=3,
    )
    config = TrainConfig(
        epochs=8,
        batch_size=16,
        seed=21,
        optimizer=OptimizerConfig("adam", 0.01, weight_decay=1e-4),
        schedule=ScheduleConfig("plateau", patience=1, factor=0.5),
        validation_fraction=0.25,
        patience=50,
        clip_norm=5.0,
    )
    return X, one_hot(labels, 2), spec, config


def comparable(history: list) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "elapsed"} for r in history]


def test_resume_is_bit_identical() -> None:
    """8 epochs in one go equal 3 epochs, export to bytes, import, and 5 more epochs."""
    X, Y, spec, config = resumable_setup()
    straight = Trainer(Network(spec), config)
    whole = straight.fit(X, Y)

    first = Trainer(Network(spec), config)
    first.fit(X, Y, epochs=3)
    resumed = restore_trainer(from_bytes(to_bytes(export_state(first))))
    rest = resumed.fit(X, Y, epochs=5)

    assert comparable(rest.history) == comparable(whole.history)
    for name, array in straight.network.state_arrays().items():
        np.testing.assert_array_equal(resumed.network.state_arrays()[name], array, err_msg=name)
    for name, array in whole.best_weights.items():
        np.testing.assert_array_equal(rest.best_weights[name], array, err_msg=name)
    for slot, array in straight.best.optimizer.slots.items():
        np.testing.assert_array_equal(resumed.best.optimizer.slots[slot], array, err_msg=slot)
    assert resumed.best.optimizer.t == straight.best.optimizer.t
    assert (rest.best_epoch, rest.best_loss, rest.stop_reason) == (
        whole.best_epoch,
        whole.best_loss,
        whole.stop_reason,
    )
    assert resumed.schedule.rate(0) == straight.schedule.rate(0)


def test_training_is_deterministic_given_the_seeds() -> None:
    X, Y, spec, config = resumable_setup()
    a, b = fit(Network(spec), X, Y, config), fit(Network(spec), X, Y, config)
    assert comparable(a.history) == comparable(b.history)
    other = fit(Network(spec), X, Y, TrainConfig(**{**config.__dict__, "seed": 22}))
    assert comparable(other.history) != comparable(a.history)


def test_holdout_split_is_stratified() -> None:
    labels = np.repeat([0, 1, 2], [80, 15, 5])
    X = np.random.default_rng(0).normal(size=(100, 3))
    spec = NetworkSpec(3, (Dense(3, "softmax", "xavier_uniform"),), "softmax_crossentropy")
    trainer = Trainer(Network(spec), TrainConfig(validation_fraction=0.2))
    train, (_, _, val) = trainer._split(X, one_hot(labels, 3), None)
    assert np.bincount(labels[val], minlength=3).tolist() == [16, 3, 1]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))


def deep_net(activation: str, init: str, batchnorm: bool = False) -> Network:
    layers: list = []
    for _ in range(8):
        layers.append(Dense(32, "identity" if batchnorm else activation, init))
        if batchnorm:
            layers.append(BatchNorm(activation))
    layers.append(Dense(1, "sigmoid", "xavier_normal"))
    return Network(NetworkSpec(10, layers, "binary_crossentropy", seed=5))


def first_to_last_gradient_ratio(net: Network) -> float:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 10))
    Y = (X[:, :1] > 0).astype(float)
    record = fit(
        net, X, Y, TrainConfig(epochs=1, batch_size=64, optimizer=OptimizerConfig("sgd", 1e-3))
    ).history[0]
    dense = [path for path in record.grad_norms if any(n == f"{path}.W" for n in net.param_names)]
    return record.grad_norms[dense[0]] / record.grad_norms[dense[-2]]


def test_deep_sigmoid_gradients_vanish_and_the_remedies_restore_them() -> None:
    """Per-layer gradient norms from the history: first hidden layer over last hidden layer."""
    vanishing = first_to_last_gradient_ratio(deep_net("sigmoid", "xavier_normal"))
    relu_he = first_to_last_gradient_ratio(deep_net("relu", "he_normal"))
    sigmoid_bn = first_to_last_gradient_ratio(deep_net("sigmoid", "xavier_normal", batchnorm=True))
    assert vanishing < 1e-3
    assert relu_he > 0.1
    assert sigmoid_bn > 0.1


def test_optimizer_state_carries_over_between_runs_only_when_compatible() -> None:
    X, Y = noisy_problem(3)
    first = Trainer(big_net(), TrainConfig(epochs=2, batch_size=10, optimizer=OptimizerConfig("adam")))
    first.fit(X, Y)
    assert export_state(first, with_history=False).meta["history"] == []
    weights, state = final_state(first, restore_best=False)
    same = Trainer(
        Network.from_state(big_net().spec, weights),
        TrainConfig(epochs=1, optimizer=OptimizerConfig("adam", 0.1)),
    )
    assert carry_optimizer_state(same, state)
    assert same.optimizer.t == first.optimizer.t == 12
    np.testing.assert_array_equal(same.optimizer.state["m"], first.optimizer.state["m"])
    assert same.best.optimizer.t == 12  # a blow-up in the new run falls back to the carried pair
    other = Trainer(big_net(), TrainConfig(epochs=1, optimizer=OptimizerConfig("rmsprop")))
    assert not carry_optimizer_state(other, state)
    assert other.optimizer.t == 0


def test_the_classification_losses_label_outputs_and_squared_error_does_not() -> None:
    """One rule for the service's labels and the engine's stratified splits (they were written
    apart): the most probable class of a softmax row; each sigmoid output above one half."""
    most_probable = LOSSES["softmax_crossentropy"].labels
    above_half = LOSSES["binary_crossentropy"].labels
    assert most_probable is not None
    assert above_half is not None
    np.testing.assert_array_equal(most_probable(np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])), [1, 0])
    np.testing.assert_array_equal(above_half(np.array([[0.5, 0.51], [0.9, 0.1]])), [[0, 1], [1, 0]])
    assert LOSSES["squared_error"].labels is None
    assert all(loss.classifier == (loss.metric != "r2") for loss in LOSSES.values())
