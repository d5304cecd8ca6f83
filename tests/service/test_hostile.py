"""What a buggy or hostile caller sends, case by case: each gets the status it can act on (never
INTERNAL), with every offending field named once, and nothing stored changes.

The fuzz test (``test_fuzz.py``) throws thousands of such requests; these are the cases that
were seen to fail, kept as named regressions, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from helpers import Running
from sqlalchemy import create_engine, text

from gradwire.client import Client, RunFailedError
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 4, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 0,
}
X = np.random.default_rng(0).normal(size=(5, 3))


class Raw:
    """Calls by method name with raw bytes, so that anything at all can be sent."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)

    def __call__(self, method: str, request: bytes | Any) -> grpc.RpcError:
        """The error the call ends with (the test fails if it succeeds)."""
        data = request if isinstance(request, bytes) else request.SerializeToString()
        call = self.channel.unary_unary(f"/gradwire.v1.Trainer/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(data, timeout=30)
        return info.value

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def raw(server: Running) -> Iterator[Raw]:
    caller = Raw(server.address)
    yield caller
    caller.close()


def violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest's field violations, field → description."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out |= {v.field: v.description for v in bad.field_violations}
    return out


def invalid(error: grpc.RpcError, *fields: str) -> dict[str, str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    found = violations(error)
    for field in fields:
        assert field in found, found
        assert not found[field].startswith(field), found  # the field is not repeated in its text
    return found


def spec_message(**changes: Any) -> pb.ModelSpec:
    spec = codec.spec_from_dict(SPEC)
    for name, value in changes.items():
        setattr(spec, name, value)
    return spec


def nested_residuals(depth: int) -> bytes:
    """A CreateModelRequest whose spec nests ``depth`` residual blocks, encoded by hand (the
    protobuf library refuses to build what its own recursion limit forbids)."""

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2]) + _varint(len(payload)) + payload

    layer = field(1, field(1, b"\x08\x03"))  # Layer{dense{units: 3}}
    for _ in range(depth):
        layer = field(3, field(1, layer))  # Layer{residual{layers: [layer]}}
    spec = b"\x08\x03" + field(2, layer)  # ModelSpec{input_dim: 3, layers: [layer]}
    return field(2, spec)  # CreateModelRequest{spec}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


# ------------------------------------------------------------------------------ not a message


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xff\xff\xff\xff", id="garbage"),
        pytest.param(b"\x12\x05ab", id="truncated"),
        pytest.param(b"\x0a\x02\xff\xfe", id="bad-utf8-name"),
        pytest.param(nested_residuals(120), id="nested-past-recursion-limit"),
    ],
)
def test_bytes_that_are_no_message_are_invalid_arguments(raw: Raw, client: Client, data: bytes) -> None:
    error = raw("CreateModel", data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "CreateModelRequest" in (error.details() or "")
    assert list(client.list_models()) == []  # nothing was created


def test_unknown_fields_and_nul_characters_are_refused_with_every_field(raw: Raw, client: Client) -> None:
    request = pb.CreateModelRequest(name="a\x00b", spec=spec_message())
    request.spec.layers[0].dense.activation = "tanh\x00"
    found = invalid(
        raw("CreateModel", request.SerializeToString() + b"\xa8\x06\x01"),  # field 101: unknown
        "name",
        "spec.layers[0].dense.activation",
        "request",
    )
    assert len(found) == 3
    error = raw("GetModel", pb.GetModelRequest(model_id="m\x00"))
    invalid(error, "model_id")
    assert list(client.list_models()) == []


# ------------------------------------------------------------------------------ specs


def test_every_problem_of_a_spec_is_reported_at_once(raw: Raw) -> None:
    spec = spec_message(input_dim=0, loss="hinge")
    spec.layers[0].dense.units = -1
    spec.layers[0].dense.init = "nope"
    found = invalid(
        raw("CreateModel", pb.CreateModelRequest(spec=spec)),
        "spec.input_dim",
        "spec.layers[0].units",
        "spec.layers[0].init",
        "spec.loss",
    )
    assert len(found) == 4


@pytest.mark.parametrize(
    ("layer", "field"),
    [
        ({"kind": "batchnorm", "epsilon": float("inf")}, "spec.layers[1].epsilon"),
        ({"kind": "batchnorm", "epsilon": float("nan")}, "spec.layers[1].epsilon"),
        ({"kind": "batchnorm", "momentum": float("nan")}, "spec.layers[1].momentum"),
        ({"kind": "batchnorm", "momentum": float("-inf")}, "spec.layers[1].momentum"),
    ],
)
def test_non_finite_constants_are_refused_on_every_database(
    raw: Raw, client: Client, layer: dict[str, Any], field: str
) -> None:
    spec = copy.deepcopy(SPEC)
    spec["layers"].insert(1, layer)
    invalid(raw("CreateModel", pb.CreateModelRequest(spec=codec.spec_from_dict(spec))), field)
    assert list(client.list_models()) == []


@pytest.mark.parametrize("dtype", [pb.INT64, 77])
def test_a_spec_dtype_outside_float32_and_float64_is_refused(raw: Raw, dtype: int) -> None:
    found = invalid(raw("CreateModel", pb.CreateModelRequest(spec=spec_message(dtype=dtype))), "spec.dtype")
    assert "float32" in found["spec.dtype"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"dtype": "float16"}, "spec.dtype"),
        ({"dtype": "f32"}, "spec.dtype"),
        ({"activation": 1}, "unknown keys"),
    ],
)
def test_the_sdk_refuses_a_spec_it_cannot_send_as_written(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        codec.spec_from_dict({**SPEC, **change})


def test_limits_reach_inside_residual_blocks(raw: Raw) -> None:
    spec = copy.deepcopy(SPEC)
    inner = [{"kind": "dense", "units": 1_000_000}, {"kind": "dense", "units": 4}]
    spec["layers"].insert(1, {"kind": "residual", "layers": inner})
    error = raw("CreateModel", pb.CreateModelRequest(spec=codec.spec_from_dict(spec)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()


# ------------------------------------------------------------------------------ tensors and ids


def test_impossible_tensors_are_invalid_arguments(raw: Raw, client: Client) -> None:
    model = client.create_model(SPEC)
    cases = {
        "inputs.dtype": pb.Tensor(dtype=77, shape=[1, 3], data=b"\x00" * 24),
        "inputs.shape": pb.Tensor(dtype=pb.FLOAT64, shape=[0, 2**62]),
    }
    for field, tensor in cases.items():
        found = invalid(raw("Predict", pb.PredictRequest(model_id=model.id, inputs=tensor)), field)
        assert len(found[field]) < 200, found


@pytest.mark.parametrize("version", [2**31, 2**31 - 1, 2**62])
def test_versions_past_32_bits_are_not_found(raw: Raw, client: Client, version: int) -> None:
    model = client.create_model(SPEC)
    request = pb.PredictRequest(model_id=model.id, inputs=codec.array_to_tensor(X), version=version)
    assert raw("Predict", request).code() == grpc.StatusCode.NOT_FOUND


def test_an_echoed_id_is_cut_short(raw: Raw) -> None:
    error = raw("GetModel", pb.GetModelRequest(model_id="m" * 10_000))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # not RESOURCE_EXHAUSTED about metadata
    assert len(error.details() or "") < 200


def test_validation_inputs_without_targets_are_refused(raw: Raw, client: Client) -> None:
    model = client.create_model(SPEC)
    tensor = codec.array_to_tensor(X)
    targets = codec.array_to_tensor(X[:, :1])
    request = pb.StartRunRequest(model_id=model.id)
    request.inputs.tensor.CopyFrom(tensor)
    request.targets.tensor.CopyFrom(targets)
    request.validation_inputs.tensor.CopyFrom(tensor)
    invalid(raw("StartRun", request), "validation_targets")
    assert client.call("ListRuns", pb.ListRunsRequest(model_id=model.id)).runs == []


def test_a_statement_waiting_on_a_lock_ends_unavailable(start_server: Any, database_url: str) -> None:
    """Nothing waits on the database without a bound: a call stuck behind another session's lock
    is cancelled after ``db_statement_seconds`` and answered UNAVAILABLE (worth retrying)."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's waits are bounded by its busy timeout, tested with the store")
    running = start_server(db_statement_seconds=0.5)
    with Client(running.address) as client:
        model = client.create_model(SPEC)
        engine = create_engine(database_url)
        try:
            with engine.connect() as holder, holder.begin():
                holder.execute(text("LOCK TABLE models IN ACCESS EXCLUSIVE MODE"))
                with pytest.raises(grpc.RpcError) as info:
                    client.stub.GetModel(pb.GetModelRequest(model_id=model.id), timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
                assert "statement timeout" in (info.value.details() or "")
            assert client.stub.GetModel(pb.GetModelRequest(model_id=model.id), timeout=30).version == 1
        finally:
            engine.dispose()


BATCHNORM_SPEC: dict[str, Any] = {
    **SPEC,
    "layers": [{"kind": "batchnorm"}, *SPEC["layers"]],
    "dtype": "float32",
}


def test_float64_values_past_a_float32_models_range_are_refused(raw: Raw, client: Client) -> None:
    model = client.create_model(BATCHNORM_SPEC)
    huge = X.copy()
    huge[2, 1] = -1e300  # finite in float64, infinite once the float32 model takes it
    request = pb.PredictRequest(model_id=model.id, inputs=codec.array_to_tensor(huge))
    found = invalid(raw("Predict", request), "inputs.data")
    assert "float32" in found["inputs.data"]
    model.predict(X)  # in range: answered


def test_an_answer_past_the_message_limit_is_refused_before_it_is_computed(start_server: Any) -> None:
    running = start_server(max_message_mb=1)
    wide = {**SPEC, "input_dim": 1, "layers": [{"kind": "dense", "units": 1000, "activation": "identity"}]}
    with Client(running.address) as client:
        model = client.create_model(wide)
        rows = np.zeros((200, 1))  # 1.6 KB in, 1.6 MB out
        raw = Raw(running.address)
        try:
            error = raw("Predict", pb.PredictRequest(model_id=model.id, inputs=codec.array_to_tensor(rows)))
        finally:
            raw.close()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_mb" in (error.details() or "")
        assert model.predict(rows[:100]).shape == (100, 1000)  # 0.8 MB: sent


def test_batch_norm_never_trains_on_one_row(raw: Raw, client: Client) -> None:
    model = client.create_model(BATCHNORM_SPEC)
    one = X[:1].astype(np.float32)
    request = pb.GetGradientsRequest(
        model_id=model.id, inputs=codec.array_to_tensor(one), targets=codec.array_to_tensor(one[:, :1])
    )
    invalid(raw("GetGradients", request), "inputs")
    for rows, batch_size, field in ((X, 1, "options.batch_size"), (X[:1], 8, "inputs")):
        start = pb.StartRunRequest(
            model_id=model.id, options=codec.options_from_dict({"batch_size": batch_size})
        )
        start.inputs.tensor.CopyFrom(codec.array_to_tensor(rows.astype(np.float32)))
        start.targets.tensor.CopyFrom(codec.array_to_tensor(rows[:, :1].astype(np.float32)))
        invalid(raw("StartRun", start), field)
    assert client.call("ListRuns", pb.ListRunsRequest(model_id=model.id)).runs == []


def test_a_request_with_hundreds_of_problems_gets_a_status_the_client_can_read(raw: Raw) -> None:
    spec = codec.spec_from_dict(SPEC)
    bad = pb.Layer(dense=pb.DenseLayer(units=4, activation="bogus" + "x" * 30, init="nope" + "y" * 30))
    last = pb.Layer()
    last.CopyFrom(spec.layers[-1])
    del spec.layers[:]
    spec.layers.extend([bad] * 60 + [last])  # within max_layers: every layer is checked
    error = raw("CreateModel", pb.CreateModelRequest(spec=spec))
    found = invalid(error, "spec.layers[0].activation", "spec.layers[0].init", "request")
    assert 10 < len(found) < 600
    assert "more problems not listed" in found["request"]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert status.ByteSize() <= 4096


def test_a_page_token_nested_past_the_recursion_limit_is_refused(raw: Raw) -> None:
    for token in (base64.urlsafe_b64encode(b"[" * 100_000).decode(), "x" * 10_000):
        invalid(raw("ListModels", pb.ListModelsRequest(page_token=token)), "page_token")


def test_training_data_past_a_float32_models_range_is_refused(raw: Raw, client: Client) -> None:
    """Inline data is refused when the run is started; stored data, which a float64 dataset may
    hold for any model, fails the run as ``invalid`` when it is loaded, before any epoch."""
    model = client.create_model(BATCHNORM_SPEC)
    huge = X.copy()
    huge[3, 0] = 1e300
    start = pb.StartRunRequest(model_id=model.id)
    start.inputs.tensor.CopyFrom(codec.array_to_tensor(huge))
    start.targets.tensor.CopyFrom(codec.array_to_tensor(X[:, :1]))
    invalid(raw("StartRun", start), "inputs.data")
    inputs, targets = client.upload_dataset(huge), client.upload_dataset(X[:, :1])
    run = model.start_run(inputs, targets, epochs=2, batch_size=2)
    with pytest.raises(RunFailedError):
        run.wait()
    info = run.refresh()
    assert (info.status, info.stop_reason, info.epochs_done) == ("failed", "invalid", 0)
    assert "beyond" in info.error
    assert model.refresh().version == 1
