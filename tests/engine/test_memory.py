"""The memory estimates against what the passes really allocate.

NumPy reports every array it allocates to tracemalloc, so tracemalloc's peak over a pass is the
most its arrays (and Python's objects) held at once. Each estimate must be an upper bound on it,
and not a careless one: at most twice the measured peak, plus the estimate's fixed allowance.
The shapes are small (tens of MB at most) but large enough that arrays, not bookkeeping, fill
the peak; each runs in float32 and float64.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gradwire.engine import (
    ACTIVATIONS,
    LOSSES,
    OPTIMIZERS,
    BatchNorm,
    Dense,
    Network,
    NetworkSpec,
    OptimizerConfig,
    Residual,
    TrainConfig,
    Trainer,
)
from gradwire.engine.data import GATHER_BYTES
from gradwire.engine.memory import (
    ALLOWANCE,
    BACKWARD_TEMPORARIES,
    FORWARD_TEMPORARIES,
    LOSS_TEMPORARIES,
    METRIC_TEMPORARIES,
    OPTIMIZER_TEMPORARIES,
    format_bytes,
    gradient_bytes,
    gradient_check_bytes,
    inference_bytes,
    training_bytes,
)
from gradwire.engine.metrics import METRICS
from gradwire.engine.network import PREDICT_CHUNK

ARCHITECTURES: dict[str, tuple[int, list[Any], str]] = {
    "dense": (16, [Dense(256, "relu"), Dense(128, "tanh"), Dense(4, "identity")], "squared_error"),
    "wide": (1, [Dense(2048, "relu"), Dense(1, "identity")], "squared_error"),
    "classifier": (
        16,
        [Dense(256, "leaky_relu"), Dense(64, "sigmoid"), Dense(10, "softmax")],
        "softmax_crossentropy",
    ),
    "batchnorm": (
        16,
        [
            Dense(256, "identity"),
            BatchNorm("relu"),
            Dense(128, "tanh"),
            BatchNorm("leaky_relu"),
            Dense(1, "sigmoid"),
        ],
        "binary_crossentropy",
    ),
    "residual": (
        32,
        [
            Dense(128, "relu"),
            Residual([Dense(128, "relu"), BatchNorm(), Dense(128, "tanh")], "relu"),
            Dense(3, "tanh"),
        ],
        "squared_error",
    ),
}
DTYPES = ("float32", "float64")


def spec_of(name: str, dtype: str) -> NetworkSpec:
    input_dim, layers, loss = ARCHITECTURES[name]
    return NetworkSpec(input_dim, layers, loss, dtype, seed=3)


def data(spec: NetworkSpec, rows: int, dtype: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and fitting targets (one-hot rows for softmax, probabilities for sigmoid)."""
    rng = np.random.default_rng(rows)
    dtype = dtype or spec.dtype
    X = rng.normal(size=(rows, spec.input_dim)).astype(dtype)
    if spec.loss == "softmax_crossentropy":
        return X, np.eye(spec.output_dim, dtype=dtype)[rng.integers(0, spec.output_dim, rows)]
    return X, rng.uniform(size=(rows, spec.output_dim)).astype(dtype)


def peak_bytes(work: Callable[[], object]) -> int:
    """The most memory ``work`` held at once, beyond what existed before, as tracemalloc saw it."""
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_bounds(estimate: int, measured: int) -> None:
    """An upper bound, and not more than twice the truth (plus the estimate's fixed allowance)."""
    assert measured > 2 * ALLOWANCE, "the shape is too small to test anything"
    assert measured <= estimate, f"estimate {format_bytes(estimate)} < measured {format_bytes(measured)}"
    assert estimate <= 2 * measured + ALLOWANCE, (
        f"estimate {format_bytes(estimate)} is more than twice the measured {format_bytes(measured)}"
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_inference_estimate_bounds_predict(name: str, dtype: str) -> None:
    spec = spec_of(name, dtype)
    network = Network(spec)
    rows = 3000
    X, _ = data(spec, rows)
    assert_bounds(inference_bytes(spec, rows), peak_bytes(lambda: network.predict(X)))


def test_inference_estimate_holds_past_one_chunk() -> None:
    """Past ``PREDICT_CHUNK`` rows only the output grows; the chunk's work stays the same."""
    spec = spec_of("dense", "float64")
    network = Network(spec)
    rows = PREDICT_CHUNK + 800
    X, _ = data(spec, rows)
    assert_bounds(inference_bytes(spec, rows), peak_bytes(lambda: network.predict(X)))
    more = inference_bytes(spec, 2 * rows) - inference_bytes(spec, rows)
    assert more < rows * spec.input_dim * 8 + rows * spec.output_dim * 8  # output and check only


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_gradient_estimate_bounds_loss_and_gradients(name: str, dtype: str, training: bool) -> None:
    spec = spec_of(name, dtype)
    network = Network(spec)
    X, Y = data(spec, 2000)
    measured = peak_bytes(lambda: network.loss_and_gradients(X, Y, training=training))
    assert_bounds(gradient_bytes(spec, len(X)), measured)


def test_gradient_check_estimate_bounds_the_check() -> None:
    from gradwire.engine import check_gradients

    spec = NetworkSpec(4, [Dense(24, "tanh"), Dense(2, "identity")], "squared_error", "float64")
    network = Network(spec)
    X, Y = data(spec, 20_000)  # rows make the passes, not the parameters, the peak
    measured = peak_bytes(lambda: check_gradients(network, X[:256], Y[:256]))
    estimate = gradient_check_bytes(spec, 256)
    assert measured <= estimate
    assert estimate <= 2 * measured + ALLOWANCE


TRAINING_CASES = [
    ("dense", {"batch_size": 1000}),
    ("wide", {"batch_size": 512, "optimizer": OptimizerConfig("rmsprop")}),
    ("classifier", {"batch_size": 1024, "optimizer": OptimizerConfig("adam"), "validation_fraction": 0.2}),
    ("batchnorm", {"batch_size": 3000, "optimizer": OptimizerConfig("momentum", weight_decay=1e-3)}),
    ("residual", {"batch_size": 1500, "optimizer": OptimizerConfig("adamw", weight_decay=1e-3)}),
    ("dense", {"batch_size": 3000, "optimizer": OptimizerConfig("nesterov")}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), TRAINING_CASES)
def test_training_estimate_bounds_fit(name: str, options: dict[str, Any], dtype: str) -> None:
    """The trainer, built and fitted for two epochs (so that a new best replaces the first)."""
    spec = spec_of(name, dtype)
    config = TrainConfig(epochs=2, seed=1, **options)
    X, Y = data(spec, 3000)
    measured = peak_bytes(lambda: Trainer(Network(spec), config).fit(X, Y))
    assert_bounds(training_bytes(spec, config, len(X)).total, measured)


def test_training_estimate_bounds_fit_on_other_dtype_with_validation_data() -> None:
    """float32 data for a float64 network: minibatches and validation chunks are converted."""
    spec = spec_of("residual", "float64")
    config = TrainConfig(epochs=2, batch_size=400, optimizer=OptimizerConfig("adam"))
    X, Y = data(spec, 3000, "float32")
    Xv, Yv = data(spec, 2000, "float32")
    measured = peak_bytes(lambda: Trainer(Network(spec), config).fit(X, Y, validation_data=(Xv, Yv)))
    assert_bounds(training_bytes(spec, config, len(X), len(Xv)).total, measured)


def test_training_estimate_parts_grow_with_what_they_say() -> None:
    spec = spec_of("dense", "float32")
    small = training_bytes(spec, TrainConfig(batch_size=32), 10_000, data_bytes=1 << 20)
    big_batch = training_bytes(spec, TrainConfig(batch_size=4096), 10_000, data_bytes=1 << 20)
    adam = training_bytes(spec, TrainConfig(batch_size=32, optimizer=OptimizerConfig("adam")), 10_000)
    assert big_batch.minibatch > 4 * small.minibatch  # a batch of 4,096 against a group of 32s
    assert small.minibatch < 4 * GATHER_BYTES  # small batches are gathered a bounded group at a time
    assert (big_batch.data, big_batch.parameters) == (small.data, small.parameters)
    assert adam.parameters > small.parameters  # two slots more, and the step's temporaries
    assert small.data >= 1 << 20  # the data arrays as given are counted


def test_every_activation_loss_metric_and_optimizer_has_its_entry() -> None:
    """A new activation (loss, metric, optimiser) cannot go unestimated."""
    assert set(FORWARD_TEMPORARIES) == set(BACKWARD_TEMPORARIES) == set(ACTIVATIONS)
    assert set(LOSS_TEMPORARIES) == set(LOSSES)
    assert set(METRIC_TEMPORARIES) == set(METRICS)
    assert set(OPTIMIZER_TEMPORARIES) == set(OPTIMIZERS)


def test_a_wide_model_needs_gigabytes_for_its_gradients() -> None:
    """One input, 16,384 relu units, one output (49,153 parameters): GetGradients of 8,192 rows
    was seen at 2.3 GB resident in float64; the estimate must say at least that."""
    spec = NetworkSpec(1, [Dense(16_384, "relu"), Dense(1, "identity")], "squared_error", "float64")
    assert spec.parameter_count == 49_153
    assert gradient_bytes(spec, 8192) >= 2.3e9
    assert inference_bytes(spec, 65_536) >= PREDICT_CHUNK * 16_384 * 8  # one chunk's hidden layer


@pytest.mark.parametrize(
    ("n", "words"),
    [(96, "96 bytes"), (1536, "1.5 KiB"), (64 << 20, "64.0 MiB"), (int(2.1 * (1 << 30)), "2.1 GiB")],
)
def test_sizes_in_words(n: int, words: str) -> None:
    assert format_bytes(n) == words
