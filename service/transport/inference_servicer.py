"""The open inference protocol over gRPC: ``inference.GRPCInferenceService`` beside gradwire's own
service on the same port, with the same keys and tenants (ServerLive and ServerReady, like the
health service, answer without a key: probes ask them). The protocol itself is
:mod:`.open_inference`; this module turns its messages into tensors and back.

Requests arrive as bytes and are decoded here, as the gradwire service does, so that bytes that
are no such message are the caller's INVALID_ARGUMENT and never grpc's INTERNAL. Fields this
server does not know are ignored: the protocol grows, and its clients send what they know.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from gradwire.engine import InvalidArgument
from gradwire.inference import open_inference_pb2 as pb

from ..core.errors import LimitExceeded
from .auth import caller_of
from .open_inference import DATATYPES, Answer, OpenInference, Tensor, input_array
from .status import abort

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
TENSOR_META = pb.ModelMetadataResponse.TensorMetadata

CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}
"""Where InferTensorContents keeps the elements of each datatype gradwire's tensors have."""


class InferenceServicer:
    """Each method takes its decoded request and the call's context, and returns its response."""

    def __init__(self, protocol: OpenInference) -> None:
        self.protocol = protocol

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.protocol.server_ready())

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        name, version, extensions = self.protocol.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        ready = self.protocol.model_ready(caller_of(context).tenant, request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.protocol.model_metadata(caller_of(context).tenant, request.name, request.version)
        inputs, outputs = (
            [TENSOR_META(name=t.name, datatype=t.datatype, shape=t.shape) for t in side]
            for side in (meta.inputs, meta.outputs)
        )
        return pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform, inputs=inputs, outputs=outputs
        )

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        inputs = request_tensors(request)
        wanted = [output.name for output in request.outputs]
        answer = self.protocol.infer(
            caller_of(context).tenant, request.model_name, request.model_version, inputs, wanted
        )
        return infer_response(answer, request.id)


def request_tensors(request: pb.ModelInferRequest) -> list[Tensor]:
    """The request's inputs, their elements from ``raw_input_contents`` (one entry per input)
    where it is given, else from each input's contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            "raw_input_contents", f"has {len(raw)} entries for {len(request.inputs)} inputs: one per input"
        )
    tensors = []
    for i, given in enumerate(request.inputs):
        field = f"inputs[{i}]"
        data: bytes | np.ndarray = raw[i] if raw else _contents(given, field)
        tensors.append(Tensor(given.name, input_array(given.datatype, given.shape, data, field)))
    return tensors


def _contents(tensor: pb.ModelInferRequest.InferInputTensor, field: str) -> np.ndarray:
    where = CONTENTS.get(tensor.datatype)
    if where is None:
        return np.empty(0)  # the datatype is refused with its name by input_array
    return np.asarray(getattr(tensor.contents, where), DATATYPES[tensor.datatype])


def infer_response(answer: Answer, request_id: str) -> pb.ModelInferResponse:
    """Every output's elements as raw little-endian bytes, in order."""
    return pb.ModelInferResponse(
        model_name=answer.model_name,
        model_version=answer.model_version,
        id=request_id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.array.shape)
            for t in answer.outputs
        ],
        raw_output_contents=[_little_endian(t.array).tobytes() for t in answer.outputs],
    )


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<"))


def add_to_server(servicer: InferenceServicer, server: grpc.Server, max_message_bytes: int) -> None:
    """Serve every method of the service as bytes in, bytes out (see the module's docstring)."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _answered(getattr(servicer, method.name), GetMessageClass(method.input_type), max_message_bytes)
        )
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _answered(
    method: Callable[[Any, Any], Message], cls: type[Message], max_message_bytes: int
) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """``method`` on the decoded request; its response's bytes; every error a status."""

    def answer(data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            encoded = method(_decoded(cls, data), context).SerializeToString()
            _check_size(encoded, max_message_bytes)
            return encoded
        except Exception as exc:
            abort(context, exc)

    return answer


def _decoded(cls: type[Message], data: bytes) -> Message:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument("", f"not a valid {cls.DESCRIPTOR.full_name} message: {exc}") from None


def _check_size(encoded: bytes, limit: int) -> None:
    if len(encoded) > limit:
        raise LimitExceeded(
            "", f"the answer is {len(encoded)} bytes, past this server's max_message_mb ({limit >> 20} MiB)"
        )
