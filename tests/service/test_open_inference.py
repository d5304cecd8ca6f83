"""The open inference protocol over gRPC, through a real server: every method, models by id and
by name, versions, dtypes and shapes, the answers equal to Predict's bit for bit, errors with
the protocol's statuses naming what is wrong, keys and tenants. (tests/interop calls the same
server with tritonclient, a client of the protocol that is not ours.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import Running

from gradwire.client import Client
from gradwire.inference import open_inference_pb2 as ip
from gradwire.inference import open_inference_pb2_grpc as ip_grpc
from gradwire.service.transport.auth import OPEN_METHODS, new_key
from gradwire.service.transport.inference_servicer import SERVICE

REGRESSOR: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh"},
        {"kind": "dense", "units": 2, "activation": "identity"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 3,
}
CLASSIFIER: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "relu"},
        {"kind": "dense", "units": 4, "activation": "softmax"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float32",
    "seed": 4,
}
X = np.random.default_rng(5).normal(size=(6, 3))


@pytest.fixture
def stub(server: Running) -> Iterator[ip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield ip_grpc.GRPCInferenceServiceStub(channel)


def infer_request(name: str, x: np.ndarray, version: str = "", **fields: Any) -> ip.ModelInferRequest:
    datatype = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64"}[x.dtype]
    tensor = ip.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=x.shape)
    return ip.ModelInferRequest(
        model_name=name, model_version=version, inputs=[tensor], raw_input_contents=[x.tobytes()], **fields
    )


def outputs(response: ip.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's tensors by name, from their raw bytes, with their datatype and shape."""
    dtypes = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}
    return {
        t.name: np.frombuffer(raw, dtypes[t.datatype]).reshape(tuple(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def code_and_details(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def test_the_server_says_it_is_live_and_ready_and_names_itself(stub: Any) -> None:
    assert stub.ServerLive(ip.ServerLiveRequest()).live
    assert stub.ServerReady(ip.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(ip.ServerMetadataRequest())
    assert meta.name == "gradwire"
    assert meta.version


def test_a_model_is_described_by_id_or_by_its_unique_name(client: Client, stub: Any) -> None:
    model = client.create_model(CLASSIFIER, name="irises")
    for name in (model.id, "irises"):
        meta = stub.ModelMetadata(ip.ModelMetadataRequest(name=name))
        assert (meta.name, list(meta.versions), meta.platform) == (name, ["1"], "gradwire")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 3])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("output", "FP32", [-1, 4]),
            ("label", "INT64", [-1]),
        ]
        assert stub.ModelReady(ip.ModelReadyRequest(name=name)).ready
        assert stub.ModelReady(ip.ModelReadyRequest(name=name, version="1")).ready
    assert not stub.ModelReady(ip.ModelReadyRequest(name=model.id, version="2")).ready
    assert not stub.ModelReady(ip.ModelReadyRequest(name="no such model")).ready
    regressor = stub.ModelMetadata(ip.ModelMetadataRequest(name=client.create_model(REGRESSOR).id))
    assert [(t.name, t.datatype, list(t.shape)) for t in regressor.outputs] == [("output", "FP64", [-1, 2])]


def test_infer_answers_what_predict_answers_bit_for_bit_at_every_version(client: Client, stub: Any) -> None:
    model = client.create_model(CLASSIFIER, name="c")
    y = np.eye(4)[np.arange(len(X)) % 4]
    model.fit(X, y, epochs=2, batch_size=2, learning_rate=0.5)  # version 2
    for version in ("", "1", "2"):
        response = stub.ModelInfer(infer_request("c", X.astype(np.float32), version, id="r-7"))
        predicted = model.predict_full(X.astype(np.float32), int(version or 0))
        got = outputs(response)
        assert (response.model_name, response.model_version, response.id) == (
            "c",
            str(predicted.version),
            "r-7",
        )
        assert got["output"].dtype == np.float32
        assert got["output"].tobytes() == predicted.outputs.tobytes()
        np.testing.assert_array_equal(got["label"], predicted.labels)
    first = outputs(stub.ModelInfer(infer_request("c", X.astype(np.float32), "1")))["output"]
    assert (
        first.tobytes()
        != outputs(stub.ModelInfer(infer_request("c", X.astype(np.float32))))["output"].tobytes()
    )


def test_inputs_may_come_as_contents_and_outputs_may_be_chosen(client: Client, stub: Any) -> None:
    model = client.create_model(REGRESSOR)
    tensor = ip.ModelInferRequest.InferInputTensor(
        name="input",
        datatype="FP64",
        shape=X.shape,
        contents=ip.InferTensorContents(fp64_contents=X.reshape(-1).tolist()),
    )
    request = ip.ModelInferRequest(
        model_name=model.id,
        inputs=[tensor],
        outputs=[ip.ModelInferRequest.InferRequestedOutputTensor(name="output")],
    )
    got = outputs(stub.ModelInfer(request))
    assert list(got) == ["output"]
    assert got["output"].tobytes() == model.predict(X).tobytes()
    single = outputs(stub.ModelInfer(infer_request(model.id, X[:1])))["output"]
    assert single.shape == (1, 2)


def test_a_request_the_model_cannot_take_is_invalid_and_says_which_field(
    client: Client, stub: Any, server: Running
) -> None:
    model = client.create_model(REGRESSOR)
    good = infer_request(model.id, X)
    cases: list[tuple[ip.ModelInferRequest, str]] = []

    def case(field: str, change: Callable[[ip.ModelInferRequest], object]) -> None:
        request = ip.ModelInferRequest()
        request.CopyFrom(good)
        change(request)
        cases.append((request, field))

    case("inputs[0].name", lambda r: setattr(r.inputs[0], "name", "x"))
    case("inputs[0].datatype", lambda r: setattr(r.inputs[0], "datatype", "INT8"))
    case("inputs[0].shape", lambda r: r.inputs[0].shape.append(1))
    case("inputs[0].contents", lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 8))
    case(
        "inputs[0].contents",
        lambda r: r.raw_input_contents.__setitem__(0, np.full(X.shape, np.nan).tobytes()),
    )
    case(
        "inputs.shape",
        lambda r: (
            r.inputs[0].shape.__setitem__(1, 2),
            r.raw_input_contents.__setitem__(0, X[:, :2].tobytes()),
        ),
    )
    case("raw_input_contents", lambda r: r.raw_input_contents.append(b""))
    case("inputs", lambda r: r.inputs.add(name="input", datatype="FP64", shape=[1, 3]))
    case("model_version", lambda r: setattr(r, "model_version", "latest"))
    case(
        "model_version", lambda r: setattr(r, "model_version", "\u00b2")
    )  # a digit to isdigit(), not to int()
    case("inputs[0].shape", lambda r: r.inputs[0].shape.__setitem__(0, 2**40))
    case("outputs", lambda r: r.outputs.add(name="label"))  # a regressor has none
    case("outputs", lambda r: r.outputs.add(name="probabilities"))
    for request, field in cases:
        code, details = code_and_details(lambda request=request: stub.ModelInfer(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, details)
        assert field in details, (field, details)
    code, details = code_and_details(lambda: stub.ModelInfer(infer_request(model.id, X, "9")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "version" in details
    code, _ = code_and_details(lambda: stub.ModelInfer(infer_request("nothing by this name", X)))
    assert code == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(f"/{SERVICE.full_name}/ModelInfer")
        code, _ = code_and_details(lambda: raw(b"\xff\xff\xff", timeout=10))  # no message at all
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_name_two_models_share_is_refused_and_ids_still_work(client: Client, stub: Any) -> None:
    first, second = client.create_model(REGRESSOR, name="twin"), client.create_model(REGRESSOR, name="twin")
    code, details = code_and_details(lambda: stub.ModelMetadata(ip.ModelMetadataRequest(name="twin")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "by its id" in details
    assert stub.ModelMetadata(ip.ModelMetadataRequest(name=second.id)).name == second.id
    first.delete()
    assert stub.ModelMetadata(ip.ModelMetadataRequest(name="twin")).name == "twin"  # unique again


def test_the_probes_are_open_and_every_other_method_needs_a_key_of_the_models_tenant(
    start_server: Callable[..., Running],
) -> None:
    server = start_server(auth=True)
    assert {f"/{SERVICE.full_name}/{m}" for m in ("ServerLive", "ServerReady")} == OPEN_METHODS
    keys = {}
    for tenant in ("alice", "bob"):
        keys[tenant] = new_key()
        server.app.store.tenants.add_key(tenant, keys[tenant].id, keys[tenant].hash, name=tenant)
    with (
        Client(server.address, timeout=60, token=keys["alice"].token) as alice,
        grpc.insecure_channel(server.address) as channel,
    ):
        model = alice.create_model(REGRESSOR, name="mine")
        stub = ip_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(ip.ServerLiveRequest()).live  # no key
        assert stub.ServerReady(ip.ServerReadyRequest()).ready
        code, _ = code_and_details(lambda: stub.ModelInfer(infer_request(model.id, X)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = code_and_details(lambda: stub.ServerMetadata(ip.ServerMetadataRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED

        def as_(tenant: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {keys[tenant].token}"),)

        answer = stub.ModelInfer(infer_request("mine", X), metadata=as_("alice"))
        assert outputs(answer)["output"].tobytes() == model.predict(X).tobytes()
        for name in (model.id, "mine"):  # bob sees neither, as if there were no such model
            code, _ = code_and_details(
                lambda name=name: stub.ModelInfer(infer_request(name, X), metadata=as_("bob"))
            )
            assert code == grpc.StatusCode.NOT_FOUND
            assert not stub.ModelReady(ip.ModelReadyRequest(name=name), metadata=as_("bob")).ready
