"""Run by tests/interop/test_tritonclient.py with the Python of .venv-triton (tritonclient, whose
protobuf cannot be gradwire's): calls a gradwire server as the plan on stdin says, through
tritonclient's gRPC and HTTP clients, and prints what each call answered as one JSON object.

Arrays travel back as base64 of their bytes with their dtype and shape, so that the test can
compare them with Predict's bit for bit. This file imports nothing of gradwire's.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

MESSAGES = (
    "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse",
    "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse",
    "ModelMetadataRequest", "ModelMetadataResponse", "InferParameter", "InferTensorContents",
    "ModelInferRequest", "ModelInferResponse",
)  # fmt: skip


def array(value: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(value)
    return {
        "dtype": data.dtype.str,
        "shape": list(data.shape),
        "bytes": base64.b64encode(data.tobytes()).decode(),
    }


def fields(descriptor: Any) -> dict[str, Any]:
    """A message's fields (name -> number, type, repeated) and its nested messages', recursively."""
    own = {f.name: [f.number, f.type, f.is_repeated] for f in descriptor.fields}
    nested = {n.name: fields(n) for n in descriptor.nested_types if not n.GetOptions().map_entry}
    return {"fields": own, "nested": nested}


def failure(call: Any) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return {"status": "no error"}


def outputs(result: Any, names: list[str]) -> dict[str, Any]:
    return {name: array(result.as_numpy(name)) for name in names if result.as_numpy(name) is not None}


def grpc_calls(plan: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(plan["grpc"])
    headers = {"authorization": f"Bearer {plan['token']}"}
    model, answers = plan["model"], {}
    answers["live"] = client.is_server_live()  # no key: a probe
    answers["ready"] = client.is_server_ready()
    answers["server"] = client.get_server_metadata(headers=headers, as_json=True)
    answers["model_ready"] = client.is_model_ready(model, headers=headers)
    answers["metadata"] = client.get_model_metadata(model, headers=headers, as_json=True)
    for version in plan["versions"]:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor], model_version=version, headers=headers, request_id="r-1")
        answers[f"infer@{version}"] = outputs(result, ["output", "label"])
        answers[f"infer@{version}"]["version"] = result.get_response().model_version
    answers["no key"] = failure(lambda: client.get_model_metadata(model))
    answers["unknown model"] = failure(lambda: client.get_model_metadata("no such model", headers=headers))
    wrong = grpcclient.InferInput("input", [len(x), 7], "FP32")
    wrong.set_data_from_numpy(np.zeros((len(x), 7), np.float32))
    answers["wrong width"] = failure(lambda: client.infer(model, [wrong], headers=headers))
    client.close()
    return answers


def http_calls(plan: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(plan["http"])
    headers = {"Authorization": f"Bearer {plan['token']}"}
    model, answers = plan["model"], {}
    answers["live"] = client.is_server_live()
    answers["ready"] = client.is_server_ready()
    answers["server"] = client.get_server_metadata(headers=headers)
    answers["model_ready"] = client.is_model_ready(model, headers=headers)
    answers["metadata"] = client.get_model_metadata(model, headers=headers)
    for binary in (True, False):
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("output", "label")]
        # A copy: tritonclient writes its Inference-Header-Content-Length into the dict it is given.
        result = client.infer(model, [tensor], outputs=wanted, headers=dict(headers))
        answers[f"infer binary={binary}"] = outputs(result, ["output", "label"])
    answers["no key"] = failure(lambda: client.get_model_metadata(model))
    answers["unknown model"] = failure(lambda: client.get_model_metadata("no such model", headers=headers))
    client.close()
    return answers


def main() -> None:
    plan = json.load(sys.stdin)
    x = np.frombuffer(base64.b64decode(plan["x"]), np.float32).reshape(plan["shape"])
    answers = {
        "descriptors": {name: fields(getattr(service_pb2, name).DESCRIPTOR) for name in MESSAGES},
        "grpc": grpc_calls(plan, x),
        "http": http_calls(plan, x),
    }
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
