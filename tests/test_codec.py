"""gradwire.v1.codec: every conversion round-trips, and bad tensors say which part is wrong."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradwire.engine import (
    BatchNorm,
    Dense,
    Network,
    NetworkSpec,
    OptimizerConfig,
    Residual,
    ScheduleConfig,
    TrainConfig,
    Trainer,
)
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb


@settings(max_examples=50, deadline=None)
@given(
    array=st.sampled_from([np.float32, np.float64, np.int64]).flatmap(
        lambda dtype: arrays(dtype, st.tuples(st.integers(0, 5), st.integers(0, 4)))
    )
)
def test_tensors_round_trip_exactly(array: np.ndarray) -> None:
    wire = pb.Tensor.FromString(codec.array_to_tensor(array).SerializeToString())
    back = codec.tensor_to_array(wire)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_big_endian_arrays_travel_little_endian() -> None:
    array = np.arange(6, dtype=">f8").reshape(2, 3)
    back = codec.tensor_to_array(codec.array_to_tensor(array))
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.dtype("<f8")


@pytest.mark.parametrize(
    ("tensor", "part"),
    [
        (pb.Tensor(shape=[2, 2], dtype=pb.FLOAT32, data=b"\x00" * 15), "data"),
        (pb.Tensor(shape=[2, -2], dtype=pb.FLOAT32, data=b""), "shape"),
        (pb.Tensor(shape=[1], dtype=pb.DTYPE_UNSPECIFIED, data=b"\x00" * 4), "dtype"),
    ],
)
def test_bad_tensors_name_the_part(tensor: pb.Tensor, part: str) -> None:
    with pytest.raises(codec.TensorError) as info:
        codec.tensor_to_array(tensor)
    assert info.value.part == part


def test_specs_round_trip_with_every_layer_kind() -> None:
    spec = NetworkSpec(
        3,
        (
            Dense(4, "tanh", "xavier_normal"),
            BatchNorm("relu", momentum=0.8, epsilon=1e-3),
            Residual((Dense(4, "relu", "he_uniform"), BatchNorm()), "leaky_relu"),
            Dense(2, "softmax", "xavier_uniform"),
        ),
        "softmax_crossentropy",
        "float32",
        42,
    )
    wire = pb.ModelSpec.FromString(codec.spec_from_dict(spec.to_dict()).SerializeToString())
    assert NetworkSpec.from_dict(codec.spec_to_dict(wire)) == spec


def test_training_options_round_trip() -> None:
    config = TrainConfig(
        epochs=7,
        batch_size=16,
        shuffle=False,
        seed=3,
        optimizer=OptimizerConfig("adamw", 0.003, beta2=0.99, weight_decay=0.01),
        schedule=ScheduleConfig("cosine", t_max=7, min_lr=1e-5),
        clip_norm=2.0,
        loss_threshold=0.01,
        validation_fraction=0.2,
        stratify=False,
        patience=3,
        min_delta=1e-4,
        restore_best=False,
    )
    wire = pb.TrainOptions.FromString(codec.options_from_dict(config.to_dict()).SerializeToString())
    assert TrainConfig.from_dict(codec.options_to_dict(wire)) == config
    assert TrainConfig.from_dict(codec.options_to_dict(pb.TrainOptions())) == TrainConfig()


def test_epoch_records_round_trip() -> None:
    spec = NetworkSpec(2, (Dense(3, "relu"), Dense(1, "identity")), "squared_error")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    result = Trainer(Network(spec), TrainConfig(epochs=2)).fit(X, Y, validation_data=(X, Y))
    record = asdict(result.history[-1])
    back = codec.epoch_to_dict(
        pb.EpochProgress.FromString(codec.epoch_from_dict(record, 4).SerializeToString())
    )
    for key, value in record.items():
        assert back[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert back["eta"] == pytest.approx(record["elapsed"] / 2 * 2)


@pytest.mark.parametrize(
    ("convert", "value", "complaint"),
    [
        (codec.spec_from_dict, {"input_dim": 3}, "missing keys"),
        (codec.spec_from_dict, {"input_dim": 3, "layers": 3, "loss": "squared_error"}, "spec.layers"),
        (codec.spec_from_dict, {"input_dim": "3", "layers": [], "loss": "squared_error"}, "spec"),
        (codec.spec_from_dict, {"input_dim": 3, "layers": [{"kind": "conv"}], "loss": "x"}, "layer kind"),
        (codec.options_from_dict, {"seed": "abc"}, "options"),
        (codec.options_from_dict, {"schedule": 3}, "options"),
    ],
)
def test_values_the_messages_cannot_carry_are_value_errors(convert: Any, value: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        convert(value)
