"""ExportModel's ONNX format through a live server: the graph onnxruntime runs answers what
Predict answers.

Random networks hold every layer kind (dense with each activation, batch norm, residual blocks,
nested ones) in float32 and float64, with random weights and running averages (imported, so that
biases, scales and running means are not their initial zeros and ones), and every output
activation paired with its loss. onnxruntime is the independent computation; Predict the
reference. The tolerance is relative, with a floor: ``|onnx − predict| ≤ rtol·|predict| +
rtol·max|predict|``, because outputs near 0 (a saturated sigmoid, a sum that cancels) carry the
absolute rounding of the values they came from, not a relative one.

Every operator the graph uses has a float64 kernel in onnxruntime but ``LeakyRelu``: float64
graphs compute leaky relu as ``Max(z, 0.01·z)`` (see :mod:`gradwire.service.usecases.onnx_export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gradwire.client import Client, InvalidArgumentError
from gradwire.engine import ACTIVATIONS
from gradwire.engine.activations import HIDDEN_ACTIVATIONS
from gradwire.engine.spec import NetworkSpec
from gradwire.service.ops.cli import main
from gradwire.service.usecases import onnx_export
from gradwire.service.usecases.weights import spec_arrays
from gradwire.v1 import gradwire_pb2 as pb

RTOL = {"float32": 1e-5, "float64": 1e-10}
OUTPUTS = [  # every output activation, with a loss it is accepted with
    ("identity", "squared_error"),
    ("sigmoid", "binary_crossentropy"),
    ("softmax", "softmax_crossentropy"),
    ("tanh", "squared_error"),
    ("relu", "squared_error"),
    ("leaky_relu", "squared_error"),
]
INPUTS = 5
WIDTH = 8


def dense(units: int, activation: str) -> dict[str, Any]:
    return {"kind": "dense", "units": units, "activation": activation}


def batchnorm(activation: str, epsilon: float = 1e-5) -> dict[str, Any]:
    return {"kind": "batchnorm", "activation": activation, "epsilon": epsilon}


def residual(layers: list[dict[str, Any]], activation: str) -> dict[str, Any]:
    return {"kind": "residual", "layers": layers, "activation": activation}


def every_kind(hidden: str, output: str, loss: str, dtype: str) -> dict[str, Any]:
    """A network with the hidden activation in a dense layer, a batch norm and two residual
    blocks (one nested in the other, one holding a batch norm), then the output layer."""
    layers = [
        dense(WIDTH, hidden),
        batchnorm(hidden, epsilon=1e-3),
        residual([dense(WIDTH, "tanh"), batchnorm("identity"), dense(WIDTH, hidden)], hidden),
        residual([residual([dense(WIDTH, hidden)], "relu"), dense(WIDTH, "identity")], "identity"),
        dense(3, output),
    ]
    return {"input_dim": INPUTS, "layers": layers, "loss": loss, "dtype": dtype, "seed": 1}


def random_weights(
    spec: dict[str, Any], rng: np.random.Generator, mean: float = 0.0
) -> dict[str, np.ndarray]:
    """Arrays of every name the spec has: weights of a scale that keeps activations away from
    saturation, running means around ``mean`` and variances in [0.05, 3]."""
    out = {}
    for name, expected in spec_arrays(NetworkSpec.from_dict(spec)).items():
        kind = name.rsplit(".", 1)[1]
        shape = expected.shape
        if kind == "W":
            value = rng.normal(0.0, 1.2 / np.sqrt(shape[0]), shape)
        elif kind == "gamma":
            value = rng.uniform(0.5, 2.0, shape)
        elif kind == "running_var":
            value = rng.uniform(0.05, 3.0, shape)
        elif kind == "running_mean":
            value = mean + rng.normal(0.0, 1.0, shape)
        else:  # b, beta
            value = rng.normal(0.0, 0.5, shape)
        out[name] = value.astype(spec["dtype"])
    return out


def onnx_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([onnx_export.OUTPUT], {onnx_export.INPUT: x})[0])


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    assert got.dtype == want.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    rtol = RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


def test_every_activation_of_the_engine_has_its_onnx_nodes() -> None:
    assert set(onnx_export.ACTIVATIONS) == set(ACTIVATIONS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_networks_of_every_layer_kind_answer_in_onnxruntime_as_predict(
    client: Client, dtype: str
) -> None:
    rng = np.random.default_rng(20260601)
    hidden = [*HIDDEN_ACTIVATIONS, HIDDEN_ACTIVATIONS[0]]  # one per output pair
    for activation, (output, loss) in zip(hidden, OUTPUTS, strict=True):
        spec = every_kind(activation, output, loss, dtype)
        model = client.import_model(spec, random_weights(spec, rng), name=f"{activation} {output}")
        x = rng.normal(0.0, 1.5, (64, INPUTS)).astype(dtype)
        want = model.predict(x)
        assert np.std(want) > 1e-3, (activation, output)  # a network that says something
        assert_close(onnx_outputs(model.export_onnx(), x), want, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_of_inputs_far_from_zero_keeps_its_digits(client: Client, dtype: str) -> None:
    """Inputs around 1000 with a spread of 0.03, normalised first: ONNX's BatchNormalization (as
    onnxruntime folds it) lost 4e-4 (float32) and 5e-10 (float64) of the scale here."""
    rng = np.random.default_rng(7)
    spec = {
        "input_dim": INPUTS,
        "layers": [batchnorm("tanh"), dense(4, "leaky_relu"), dense(2, "identity")],
        "loss": "squared_error",
        "dtype": dtype,
    }
    weights = random_weights(spec, rng, mean=1000.0)
    weights["0.running_var"] = rng.uniform(5e-4, 2e-3, INPUTS).astype(dtype)
    model = client.import_model(spec, weights)
    x = (weights["0.running_mean"] + rng.normal(0.0, 0.03, (64, INPUTS))).astype(dtype)
    assert_close(onnx_outputs(model.export_onnx(), x), model.predict(x), dtype)


def test_a_trained_classifier_exported_by_the_command_answers_as_predict(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    spec = {
        "input_dim": 2,
        "layers": [
            dense(16, "relu"),
            batchnorm("tanh"),
            residual([dense(16, "tanh")], "identity"),
            dense(3, "softmax"),
        ],
        "loss": "softmax_crossentropy",
        "dtype": "float32",
        "seed": 5,
    }
    x = rng.normal(size=(300, 2)).astype(np.float32)
    y = np.eye(3)[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)]
    model = client.create_model(spec, name="three classes")
    model.fit(x, y, epochs=15, batch_size=32, optimizer="adam", learning_rate=0.01)

    at = ["--server", client.address]
    assert main(["export", model.id, "--format", "onnx", "-o", str(tmp_path / "m.bin"), *at]) == 0
    assert main(["export", model.id, "--output", str(tmp_path / "m.onnx"), *at]) == 0  # onnx by its name
    assert "ONNX model of" in capsys.readouterr().out
    data = (tmp_path / "m.onnx").read_bytes()
    assert data == (tmp_path / "m.bin").read_bytes()

    want = model.predict(x)
    np.testing.assert_allclose(want.sum(axis=1), 1.0, rtol=1e-5)  # probabilities, as Predict answers
    assert_close(onnx_outputs(data, x), want, "float32")

    graph = onnx.load_from_string(data)
    exported = model.exported()
    assert (graph.ir_version, [(o.domain, o.version) for o in graph.opset_import]) == (
        onnx_export.IR_VERSION,
        [("", onnx_export.OPSET)],
    )
    assert {t.name for t in graph.graph.initializer} >= set(exported.arrays)
    for tensor in graph.graph.initializer:
        if tensor.name in exported.arrays:
            assert np.array_equal(onnx.numpy_helper.to_array(tensor), exported.arrays[tensor.name])
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["gradwire.version"] == str(exported.version) == "2"
    assert props["gradwire.weights_sha256"] == exported.sha256
    assert NetworkSpec.from_json(props["gradwire.spec"]).to_dict() == model.info.spec


def test_the_onnx_stream_is_one_array_of_bytes_and_an_unknown_format_is_refused(client: Client) -> None:
    spec = every_kind("relu", "identity", "squared_error", "float64")
    model = client.create_model(spec)
    pieces = list(
        client.stub.ExportModel(pb.ExportModelRequest(model_id=model.id, format=pb.ONNX), timeout=30)
    )
    assert {(p.name, p.dtype, tuple(p.shape), p.version) for p in pieces} == {
        ("model.onnx", pb.DTYPE_UNSPECIFIED, (), 1)
    }
    assert pieces[0].weights_sha256 == model.exported().sha256
    assert b"".join(p.data for p in pieces) == model.export_onnx()

    request = pb.ExportModelRequest(model_id=model.id)
    request.format = 7  # type: ignore[assignment]  # proto3 enums are open: a number off the list
    with pytest.raises(grpc.RpcError) as caught:
        list(client.stub.ExportModel(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format" in (caught.value.details() or "")
    assert "ARRAYS, ONNX" in (caught.value.details() or "")

    with pytest.raises(InvalidArgumentError) as refused:
        model.export_onnx(version=-1)
    assert refused.value.fields == ("version",)
