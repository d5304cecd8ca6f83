"""``python -m gradwire.engine``: train a small network on two spirals and show its progress.

The demonstration ``make run`` gives until the service arrives: a 2-32-32-2 ReLU network with
softmax output learns two interleaved spirals (no straight line separates them) with Adam, on a
held-out validation fifth, stopping early when validation loss stops improving.
"""

from __future__ import annotations

import numpy as np

from . import Dense, EpochRecord, Network, NetworkSpec, OptimizerConfig, TrainConfig, fit, one_hot


def spirals(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = np.sqrt(rng.uniform(0.0, 1.0, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    X = np.concatenate([arm, -arm]) + rng.normal(0.0, 0.02, (2 * n_per_class, 2))
    return X, np.repeat([0, 1], n_per_class)


def report(record: EpochRecord) -> None:
    if record.epoch % 10 == 0:
        norms = " ".join(f"{layer}:{n:.2e}" for layer, n in record.grad_norms.items())
        print(
            f"epoch {record.epoch:4d}  loss {record.train_loss:.4f}  val_loss {record.val_loss:.4f}  "
            f"val_acc {record.val_metric:.3f}  grad norms {norms}",
            flush=True,
        )


def main() -> None:
    X, labels = spirals(500, np.random.default_rng(0))
    spec = NetworkSpec(
        2,
        [
            Dense(32, "relu", "he_normal"),
            Dense(32, "relu", "he_normal"),
            Dense(2, "softmax", "xavier_uniform"),
        ],
        loss="softmax_crossentropy",
        seed=0,
    )
    config = TrainConfig(
        epochs=400,
        batch_size=32,
        optimizer=OptimizerConfig("adam", learning_rate=0.01),
        validation_fraction=0.2,
        patience=40,
    )
    network = Network(spec)
    print(f"training {spec.to_json()}")
    result = fit(network, X, one_hot(labels, 2), config, callback=report)
    accuracy = float(np.mean(network.predict(X).argmax(axis=1) == labels))
    print(
        f"stopped: {result.stop_reason} after {result.epochs_run} epochs; best epoch {result.best_epoch} "
        f"(validation loss {result.best_loss:.4f}); accuracy on all points {accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
