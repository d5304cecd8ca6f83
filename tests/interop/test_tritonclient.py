"""tritonclient, NVIDIA's client of the open inference protocol (not gradwire's), against a real
``gradwire serve``: over gRPC and over HTTP (JSON and binary tensors), with keys, its answers
equal to Predict's bit for bit, its errors the protocol's; and gradwire's copy of the protocol's
messages equal to tritonclient's, field by field (names, numbers, types).

tritonclient pins protobuf below 7, gradwire's generated code needs 7: it runs in .venv-triton
(``make test`` makes it from requirements/triton.txt), in a child process, triton_peer.py."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ServerProcess

from gradwire.client import Client
from gradwire.inference import open_inference_pb2 as ip
from gradwire.service.transport.auth import new_key
from gradwire.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
PEER = Path(__file__).with_name("triton_peer.py")
SPEC: dict[str, Any] = {
    "input_dim": 4,
    "layers": [
        {"kind": "dense", "units": 16, "activation": "relu"},
        {"kind": "dense", "units": 3, "activation": "softmax"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float32",
    "seed": 9,
}
X = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32)
Y = np.eye(3)[np.arange(32) % 3]

pytestmark = pytest.mark.skipif(
    not PEER_PYTHON.exists(),
    reason="tritonclient's environment .venv-triton is missing: 'make test' makes it",
)


def array(encoded: dict[str, Any]) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(encoded["bytes"]), np.dtype(encoded["dtype"]))
    return data.reshape(encoded["shape"])


def ours(descriptor: Any) -> dict[str, Any]:
    """Our message's fields as the peer describes tritonclient's (see triton_peer.fields)."""
    own = {f.name: [f.number, f.type, f.is_repeated] for f in descriptor.fields}
    nested = {n.name: ours(n) for n in descriptor.nested_types if not n.GetOptions().map_entry}
    return {"fields": own, "nested": nested}


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One server, one model trained to version 2, and everything the peer asked it."""
    database = f"sqlite:///{tmp_path_factory.mktemp('triton')}/gradwire.db"
    key = new_key()
    with ServerProcess(database, auth="on") as server:
        store = open_store(database)  # a key the test knows, as 'gradwire keys create' stores one
        store.tenants.add_key("acme", key.id, key.hash, name="interop")
        store.close()
        with Client(server.address, timeout=60, token=key.token) as client:
            model = client.create_model(SPEC, name="irises")
            model.fit(X, Y, epochs=3, batch_size=8, learning_rate=0.1)
            expected = {version: model.predict_full(X, version) for version in (1, 2)}
        plan = {
            "grpc": server.address,
            "http": server.http_url.removeprefix("http://"),
            "token": key.token,
            "model": "irises",
            "versions": ["", "1", "2"],
            "x": base64.b64encode(X.tobytes()).decode(),
            "shape": list(X.shape),
        }
        done = subprocess.run(
            [str(PEER_PYTHON), str(PEER)], input=json.dumps(plan), capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"peer": json.loads(done.stdout), "expected": expected}


def test_our_messages_are_the_protocols_field_for_field(answers: dict[str, Any]) -> None:
    theirs = answers["peer"]["descriptors"]
    for name, described in theirs.items():
        assert ours(ip.DESCRIPTOR.message_types_by_name[name]) == described, name


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_tritonclient_sees_a_live_ready_server_and_the_models_metadata(
    answers: dict[str, Any], transport: str
) -> None:
    got = answers["peer"][transport]
    assert (got["live"], got["ready"], got["model_ready"]) == (True, True, True)
    assert got["server"]["name"] == "gradwire"
    meta = got["metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == ("irises", ["1", "2"], "gradwire")
    shapes = [
        (t["name"], t["datatype"], [int(n) for n in t["shape"]]) for t in meta["inputs"] + meta["outputs"]
    ]
    assert shapes == [("input", "FP32", [-1, 4]), ("output", "FP32", [-1, 3]), ("label", "INT64", [-1])]


def test_tritonclient_infers_what_predict_answers_bit_for_bit(answers: dict[str, Any]) -> None:
    expected, grpc_answers, http_answers = (
        answers["expected"],
        answers["peer"]["grpc"],
        answers["peer"]["http"],
    )
    cases = {
        "grpc, current": (grpc_answers["infer@"], 2),
        "grpc, version 1": (grpc_answers["infer@1"], 1),
        "grpc, version 2": (grpc_answers["infer@2"], 2),
        "http, binary": (http_answers["infer binary=True"], 2),
        "http, JSON": (http_answers["infer binary=False"], 2),
    }
    for case, (got, version) in cases.items():
        output, label = array(got["output"]), array(got["label"])
        assert output.dtype == np.float32, case
        assert output.tobytes() == expected[version].outputs.tobytes(), case
        np.testing.assert_array_equal(label, expected[version].labels, err_msg=case)
    assert grpc_answers["infer@1"]["version"] == "1"
    assert (
        array(grpc_answers["infer@1"]["output"]).tobytes()
        != array(grpc_answers["infer@2"]["output"]).tobytes()
    )


def test_tritonclient_hears_the_protocols_errors(answers: dict[str, Any]) -> None:
    grpc_answers, http_answers = answers["peer"]["grpc"], answers["peer"]["http"]
    assert grpc_answers["no key"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert grpc_answers["unknown model"]["status"] == "StatusCode.NOT_FOUND"
    assert grpc_answers["wrong width"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "columns" in grpc_answers["wrong width"]["message"]
    assert http_answers["no key"]["status"] == "401"
    assert http_answers["unknown model"]["status"] == "404"
    assert "not found" in http_answers["unknown model"]["message"]
