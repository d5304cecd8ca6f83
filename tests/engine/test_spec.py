"""The architecture spec and the training config: validation that names fields, JSON round-trips."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from gradwire.engine import (
    BatchNorm,
    Dense,
    InvalidArgument,
    Network,
    NetworkSpec,
    OptimizerConfig,
    Residual,
    ScheduleConfig,
    TrainConfig,
)

GOOD: dict[str, Any] = {
    "input_dim": 4,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "relu", "init": "he_normal"},
        {"kind": "batchnorm", "activation": "tanh"},
        {"kind": "residual", "layers": [{"kind": "dense", "units": 8}], "activation": "relu"},
        {"kind": "dense", "units": 3, "activation": "softmax", "init": "xavier_uniform"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float32",
    "seed": 9,
}


def with_change(path: list[Any], value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def test_json_round_trip_is_exact() -> None:
    spec = NetworkSpec.from_dict(GOOD)
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert spec.to_dict() == NetworkSpec.from_dict(spec.to_dict()).to_dict()
    assert spec.output_dim == 3
    assert isinstance(spec.layers[2], Residual)


@pytest.mark.parametrize(
    ("path", "value", "field", "allowed"),
    [
        (["input_dim"], 0, "input_dim", ()),
        (["layers", 0, "units"], -3, "layers[0].units", ()),
        (["layers", 0, "activation"], "swish", "layers[0].activation", ("identity", "relu")),
        (["layers", 0, "activation"], "softmax", "layers[0].activation", ("sigmoid",)),
        (["layers", 0, "init"], "zeros", "layers[0].init", ("he_normal",)),
        (["layers", 0, "init"], "orthogonal", "layers[0].init", ("xavier_uniform",)),
        (["layers", 0, "kind"], "conv2d", "layers[0].kind", ("batchnorm", "dense", "residual")),
        (["layers", 0, "size"], 3, "layers[0].size", ("units",)),
        (["layers", 1, "momentum"], 1.5, "layers[1].momentum", ()),
        (["layers", 2, "layers", 0, "units"], 5, "layers[2].layers", ()),
        (["layers", 2, "layers", 0, "activation"], "gelu", "layers[2].layers[0].activation", ("tanh",)),
        (["layers", 3, "activation"], "relu", "loss", ("softmax",)),
        (["loss"], "hinge", "loss", ("squared_error",)),
        (["dtype"], "float16", "dtype", ("float32", "float64")),
        (["seed"], -1, "seed", ()),
        (["layers"], [], "layers", ()),
    ],
)
def test_bad_specs_name_the_field_and_the_allowed_values(
    path: list[Any], value: Any, field: str, allowed: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidArgument) as info:
        NetworkSpec.from_dict(with_change(path, value))
    assert info.value.field == field
    assert set(allowed) <= set(info.value.allowed)
    assert field in str(info.value)


def test_last_layer_must_be_dense() -> None:
    with pytest.raises(InvalidArgument, match=r"layers\[1\]: the last layer must be dense"):
        NetworkSpec(2, (Dense(2, "relu"), BatchNorm()), "squared_error")


def test_missing_field_and_bad_json_are_reported() -> None:
    data = with_change(["loss"], "x")
    del data["loss"]
    with pytest.raises(InvalidArgument, match="loss: is required"):
        NetworkSpec.from_dict(data)
    with pytest.raises(InvalidArgument, match="spec: not valid JSON"):
        NetworkSpec.from_json("{")


def test_the_dtype_is_kept_by_the_network() -> None:
    net = Network(NetworkSpec.from_dict(GOOD))
    assert all(p.dtype == np.float32 for p in net.params)
    assert net.predict(np.ones((2, 4))).dtype == np.float32


def test_initialisers_are_seeded_and_biases_start_at_zero() -> None:
    spec = NetworkSpec.from_dict(GOOD)
    first, second = Network(spec).state_arrays(), Network(spec).state_arrays()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    other = Network(NetworkSpec.from_dict(with_change(["seed"], 10))).state_arrays()
    assert not np.array_equal(first["0.W"], other["0.W"])
    assert not first["0.b"].any()


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [
        ("small_uniform", 0.01 / np.sqrt(3)),
        ("xavier_uniform", np.sqrt(2 / (400 + 300))),
        ("xavier_normal", np.sqrt(2 / (400 + 300))),
        ("he_uniform", np.sqrt(2 / 400)),
        ("he_normal", np.sqrt(2 / 400)),
    ],
)
def test_initialiser_scales(init: str, expected_std: float) -> None:
    spec = NetworkSpec(400, (Dense(300, "relu", init), Dense(1, "identity")), "squared_error")
    W = Network(spec).params[0]
    assert W.std() == pytest.approx(expected_std, rel=0.02)
    assert abs(W.mean()) < expected_std / 50


def test_train_config_round_trips_and_names_bad_fields() -> None:
    config = TrainConfig(
        epochs=5,
        optimizer=OptimizerConfig("adamw", 0.003, weight_decay=0.01),
        schedule=ScheduleConfig("cosine", t_max=5),
        clip_norm=1.0,
        validation_fraction=0.2,
        patience=3,
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    cases = [
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": {"name": "lbfgs"}}, "optimizer.name"),
        ({"optimizer": {"learning_rate": -1}}, "optimizer.learning_rate"),
        ({"schedule": {"name": "warmup"}}, "schedule.name"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"clip_norm": 0}, "clip_norm"),
        ({"epoch": 3}, "epoch"),
        ({"optimizer": {"lr": 3}}, "optimizer.lr"),
    ]
    for data, field in cases:
        with pytest.raises(InvalidArgument) as info:
            TrainConfig.from_dict(data)
        assert info.value.field == field, data
