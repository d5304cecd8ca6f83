"""Every error class through the wire: the right status code, the field, and nothing lost."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import Running
from sqlalchemy import text

from gradwire.client import (
    Client,
    FailedPreconditionError,
    GradwireError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from gradwire.service import Limits
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 4, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 2, "activation": "softmax", "init": "xavier_uniform"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float32",
    "seed": 0,
}
X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
Y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0, 1]]


def spec_with(path: list[Any], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


def raw_tensor(shape: list[int], data: bytes, dtype: int = pb.FLOAT32) -> pb.Tensor:
    return pb.Tensor(shape=shape, dtype=dtype, data=data)


def expect(
    error_type: type[GradwireError], code: grpc.StatusCode, field: str | None, call: Callable[[], Any]
) -> GradwireError:
    with pytest.raises(error_type) as info:
        call()
    assert info.value.code == code
    if field is not None:
        assert field in info.value.fields, info.value.field_violations
    assert "Traceback" not in info.value.message
    assert isinstance(info.value.__cause__, grpc.RpcError)  # the gRPC error is kept as the cause
    return info.value


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["layers", 0, "activation"], "swish", "spec.layers[0].activation"),
        (["layers", 0, "units"], 0, "spec.layers[0].units"),
        (["layers", 1, "activation"], "relu", "spec.loss"),
        (["loss"], "hinge", "spec.loss"),
        (["input_dim"], 0, "spec.input_dim"),
        (["layers", 0, "init"], "zeros", "spec.layers[0].init"),
    ],
)
def test_bad_specs_are_invalid_arguments_naming_the_field(
    client: Client, path: list[Any], value: Any, field: str
) -> None:
    expect(
        InvalidArgumentError,
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
        lambda: client.create_model(spec_with(path, value)),
    )


def test_bad_tensors_are_invalid_arguments_naming_the_field(client: Client) -> None:
    model = client.create_model(SPEC)

    def predict(tensor: pb.Tensor) -> Any:
        return client.call("Predict", pb.PredictRequest(model_id=model.id, inputs=tensor))

    cases = [
        (raw_tensor([2, 3], b"\x00" * 23), "inputs.data"),  # one byte short
        (raw_tensor([2, 3], b"\x00" * 24, pb.DTYPE_UNSPECIFIED), "inputs.dtype"),
        (raw_tensor([2, 3], b"\x00" * 48, pb.INT64), "inputs.dtype"),
        (raw_tensor([6], b"\x00" * 24), "inputs.shape"),
        (codec.array_to_tensor(np.array([[1.0, np.nan, 0.0]], np.float32)), "inputs.data"),
        (codec.array_to_tensor(np.array([[1.0, np.inf, 0.0]])), "inputs.data"),
        (codec.array_to_tensor(np.ones((2, 4), np.float32)), "inputs.shape"),  # 4 features, model takes 3
    ]
    for tensor, field in cases:
        expect(InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, field, lambda t=tensor: predict(t))
    expect(
        InvalidArgumentError,
        grpc.StatusCode.INVALID_ARGUMENT,
        "targets.shape",
        lambda: model.gradients(X, np.ones((6, 3), np.float32)),
    )


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"optimizer": "lbfgs"}, "options.optimizer.name"),
        ({"learning_rate": -1.0}, "options.optimizer.learning_rate"),
        ({"batch_size": 0}, "options.batch_size"),
        ({"validation_split": 1.5}, "options.validation_fraction"),
        ({"schedule": {"name": "warmup"}}, "options.schedule.name"),
        ({"clip_norm": -2.0}, "options.clip_norm"),
    ],
)
def test_bad_training_options_are_invalid_arguments(
    client: Client, options: dict[str, Any], field: str
) -> None:
    model = client.create_model(SPEC)
    expect(InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, field, lambda: model.fit(X, Y, **options))
    assert model.history() == []  # nothing started, nothing recorded


def test_unknown_models_and_versions_are_not_found(client: Client) -> None:
    expect(NotFoundError, grpc.StatusCode.NOT_FOUND, None, lambda: client.model("no-such-model"))
    model = client.create_model(SPEC)
    expect(NotFoundError, grpc.StatusCode.NOT_FOUND, None, lambda: model.predict(X, version=9))
    expect(NotFoundError, grpc.StatusCode.NOT_FOUND, None, lambda: client.delete_model("no-such-model"))
    expect(
        InvalidArgumentError,
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
        lambda: client.call("ListModels", pb.ListModelsRequest(page_token="garbage")),
    )


def test_a_model_whose_weights_cannot_be_read_cannot_answer(server: Running, client: Client) -> None:
    model = client.create_model(SPEC)
    with server.app.store.engine.begin() as connection:
        connection.execute(text("UPDATE weight_versions SET checksum = :c"), {"c": "0" * 64})
    expect(FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION, None, lambda: model.predict(X))


def test_limits_are_resource_exhausted(start_server: Callable[..., Running]) -> None:
    running = start_server(
        limits=Limits(max_layers=2, max_units=8, max_epochs=10, max_batch_size=4), max_message_mb=1
    )
    with Client(running.address, max_message_mb=64) as client:
        wide = spec_with(["layers", 0, "units"], 9)
        deep = spec_with(["layers"], [SPEC["layers"][0]] * 2 + [SPEC["layers"][1]])
        expect(
            ResourceExhaustedError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            None,
            lambda: client.create_model(wide),
        )
        expect(
            ResourceExhaustedError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            None,
            lambda: client.create_model(deep),
        )
        model = client.create_model(SPEC)
        expect(
            ResourceExhaustedError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            None,
            lambda: model.fit(X, Y, epochs=11),
        )
        expect(
            ResourceExhaustedError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            None,
            lambda: model.fit(X, Y, epochs=1, batch_size=5),
        )
        big = np.zeros((120_000, 3), np.float32)  # 1.4 MB, past the server's 1 MiB
        expect(ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED, None, lambda: model.predict(big))
        assert model.refresh().version == 1  # the refusals lost nothing


def test_errors_lose_nothing_already_committed(client: Client) -> None:
    model = client.create_model(SPEC, name="kept")
    model.fit(X, Y, epochs=2, batch_size=2)
    before = model.predict(X)
    for bad in (
        lambda: model.fit(X[:, :2], Y),
        lambda: model.fit(X, Y, optimizer="nope"),
        lambda: model.predict(X[:, :2]),
    ):
        with pytest.raises(InvalidArgumentError):
            bad()
    assert model.refresh().version == 2
    np.testing.assert_array_equal(model.predict(X), before)
    assert [len(run.epochs) for run in model.history()] == [2]


def test_a_closed_client_refuses_to_be_used(server: Running) -> None:
    from gradwire.client import ClientClosedError

    client = Client(server.address)
    client.close()
    with pytest.raises(ClientClosedError, match="closed"):
        client.list_models().__next__()
