"""Fuzzed requests for any gRPC method of gradwire.v1, as the bytes that go on the wire.

Three generators, each a function of a ``np.random.Generator`` (so a case is replayed from its
seed and index alone), of the method's descriptor and of the ids that exist on the server:

- ``random``: a message built from the request type's descriptor, every field by its type, with
  the values that break code (0, -1, 2**31, 2**63 - 1, NaN, ±inf, NUL bytes, 10,000 characters,
  enum numbers outside the enum, a thousand repeated items), nested to a bounded depth;
- ``mutation``: a valid request (a model spec, a Predict of a model that exists, a run with its
  tensors inline, an upload) with its bytes flipped, inserted or cut, one field set to an
  extreme, a tensor whose shape, dtype and data disagree, or a stream with messages lost,
  repeated or out of order;
- ``raw``: bytes the Python API cannot produce: random, truncated, invalid UTF-8 in a string
  field, declared lengths past the end, wrong wire types, over-long varints, messages nested
  past protobuf's recursion limit (residual blocks, unknown groups), a message past the server's
  size limit.

Messages are built from the descriptors, so a new RPC or field is fuzzed without a change here.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

T = TypeVar("T")
Messages = list[Message]
Generated = tuple[str, list[bytes]]
"""A generator's answer: a label for the report (``flip``, ``deep``) and the messages' bytes."""


@dataclass(frozen=True)
class Case:
    """One fuzzed call: the method, how its input was made, and the messages sent."""

    seed: int
    index: int
    method: str
    kind: str
    messages: tuple[bytes, ...]

    def hex(self, limit: int = 256) -> str:
        """The messages in hex (`` | `` between stream messages), each cut at ``limit`` bytes."""
        return " | ".join(
            m[:limit].hex() + (f"...({len(m)} bytes)" if len(m) > limit else "") for m in self.messages
        )


@dataclass
class Known:
    """Ids that exist on the server, and the width of the models behind ``models``: the
    generators use them part of the time, so requests get past the lookups to the code behind."""

    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    input_dim: int = 3
    outputs: int = 2

    def __add__(self, other: Known) -> Known:
        return Known(
            self.models + other.models,
            self.datasets + other.datasets,
            self.runs + other.runs,
            self.input_dim,
            self.outputs,
        )


# ------------------------------------------------------------------------------------ dice


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def message_class(descriptor: Descriptor) -> type[Message]:
    return GetMessageClass(descriptor)


# ------------------------------------------------------------------------------------ values

INT32 = (0, 1, -1, 3, 2**31 - 1, -(2**31), 2**30)
INT64 = (*INT32, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, -(2**63))
UINT32 = (0, 1, 2**31, 2**32 - 1)
UINT64 = (0, 1, 2**31, 2**32, 2**63, 2**64 - 1)
DOUBLES = (0.0, -0.0, 1.0, -1.0, 0.5, 1 - 1e-16, 1e-300, 5e-324, 1e308, -1e308, math.nan, math.inf, -math.inf)
ENUMS = (-1, 3, 4, 100, 1000, 2**31 - 1, -(2**31))
"""Enum numbers outside gradwire's enums (INT64 = 3 exists, but no request may use it)."""

STRINGS = (
    "",
    "\x00",
    "a\x00b",
    "x" * 10_000,
    "x" * 128,
    "x" * 129,
    "x" * 200,
    "é" * 200,  # 200 characters, 400 bytes
    "x" * 201,
    "\U0001f4a5",
    " ",
    "-1",
    "NaN",
    "%s%n",
    "'; DROP TABLE models; --",
    "../../etc/passwd",
    "\u202e",
)
NAMES = (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax",
    "small_uniform", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
    "squared_error", "binary_crossentropy", "softmax_crossentropy",
    "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
    "constant", "step", "exponential", "cosine", "plateau",
    "queued", "running", "completed", "cancelled", "failed", "interrupted",
)  # fmt: skip
"""The words the service knows, so that some random strings are valid ones."""


def page_token(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


TOKENS = (
    "x",
    "====",
    page_token("2020-01-01T00:00:00", "a"),
    page_token("9999-12-31T23:59:59.999999+14:00", "\x00"),
    page_token("0001-01-01T00:00:00-23:59", "z" * 1000),
    page_token("2020-01-01", 1),
    page_token([], {}),
    page_token("2020-01-01", None, 3),
    page_token(1),
    base64.urlsafe_b64encode(b'["\xff\xfe", "a"]').decode(),
)
"""Page tokens: not ones the service gave out, some in the shape of its own."""


def random_int(rng: np.random.Generator, extremes: Sequence[int], lowest: int) -> int:
    if chance(rng, 0.5):
        return pick(rng, extremes)
    return int(rng.integers(lowest, 100))


def random_double(rng: np.random.Generator) -> float:
    return pick(rng, DOUBLES) if chance(rng, 0.5) else float(rng.normal(0.0, 10.0))


def random_bytes(rng: np.random.Generator) -> bytes:
    return pick(rng, (b"", b"\x00" * 8, struct.pack("<d", math.nan) * 6, rng.bytes(int(rng.integers(1, 97)))))


def ids(kind: str) -> Callable[[np.random.Generator, Known], str]:
    """Real ids of ``kind`` (models, datasets, runs), sometimes one character wrong or with a NUL."""

    def draw(rng: np.random.Generator, known: Known) -> str:
        real = getattr(known, kind)
        if not real:
            return pick(rng, STRINGS)
        chosen = pick(rng, real)
        return chosen if chance(rng, 0.8) else pick(rng, (chosen + "\x00", chosen[:-1], chosen.upper()))

    return draw


HINTS: dict[str, Callable[[np.random.Generator, Known], str]] = {
    "model_id": ids("models"),
    "dataset_id": ids("datasets"),
    "run_id": ids("runs"),
    "page_token": lambda rng, known: pick(rng, TOKENS),
    **{
        name: lambda rng, known: pick(rng, NAMES)
        for name in ("activation", "init", "loss", "name", "statuses")
    },
}
"""String fields by name: where a random string would only ever be refused at the door."""


def random_string(rng: np.random.Generator, known: Known, name: str) -> str:
    hint = HINTS.get(name)
    if hint is not None and chance(rng, 0.6):
        return hint(rng, known)
    if chance(rng, 0.2):
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(1, 40))))
    return pick(rng, STRINGS)


SCALARS: dict[int, Callable[[np.random.Generator, Known, FieldDescriptor], Any]] = {
    FieldDescriptor.CPPTYPE_INT32: lambda rng, known, f: random_int(rng, INT32, -3),
    FieldDescriptor.CPPTYPE_INT64: lambda rng, known, f: random_int(rng, INT64, -3),
    FieldDescriptor.CPPTYPE_UINT32: lambda rng, known, f: random_int(rng, UINT32, 0),
    FieldDescriptor.CPPTYPE_UINT64: lambda rng, known, f: random_int(rng, UINT64, 0),
    FieldDescriptor.CPPTYPE_DOUBLE: lambda rng, known, f: random_double(rng),
    FieldDescriptor.CPPTYPE_FLOAT: lambda rng, known, f: random_double(rng),
    FieldDescriptor.CPPTYPE_BOOL: lambda rng, known, f: chance(rng, 0.5),
    FieldDescriptor.CPPTYPE_ENUM: lambda rng, known, f: (
        pick(rng, ENUMS) if chance(rng, 0.3) else pick(rng, f.enum_type.values).number
    ),
    FieldDescriptor.CPPTYPE_STRING: lambda rng, known, f: (
        random_bytes(rng) if f.type == FieldDescriptor.TYPE_BYTES else random_string(rng, known, f.name)
    ),
}
"""A random value for a scalar field, by its C++ type (which groups int32, sint32, sfixed32...)."""


def scalar(rng: np.random.Generator, known: Known, f: FieldDescriptor) -> Any:
    return SCALARS[f.cpp_type](rng, known, f)


# ------------------------------------------------------------------------------------ tensors


def array(rng: np.random.Generator, rows: int, columns: int, dtype: str) -> np.ndarray:
    """Mostly normal values; sometimes one NaN, infinity or float64 giant among them."""
    values = rng.normal(size=(rows, columns))
    if values.size and chance(rng, 0.1):
        values.flat[int(rng.integers(values.size))] = pick(rng, (math.nan, math.inf, -math.inf, 1e300))
    with np.errstate(over="ignore"):  # 1e300 as float32 is infinite, on purpose
        return values.astype(dtype)


def tensor(rng: np.random.Generator, rows: int, columns: int) -> pb.Tensor:
    return codec.array_to_tensor(array(rng, rows, columns, pick(rng, ("float32", "float64"))))


def fitting_tensor(rng: np.random.Generator, known: Known) -> pb.Tensor:
    """A tensor whose shape and bytes agree, most often as wide as the known models' in- or outputs."""
    columns = pick(rng, (known.input_dim, known.outputs, int(rng.integers(0, 6))))
    return tensor(rng, pick(rng, (0, 1, 2, 5, 17, 64)), columns)


SPECIAL: dict[str, Callable[[np.random.Generator, Known], Message]] = {
    pb.Tensor.DESCRIPTOR.full_name: fitting_tensor,
}
"""Message types that random bytes would never make valid: half the time, one made to fit."""


# ------------------------------------------------------------------------------------ messages

MAX_DEPTH = 5


def random_message(descriptor: Descriptor, rng: np.random.Generator, known: Known, depth: int = 0) -> Message:
    """A message of ``descriptor``'s type with a random subset of its fields set (recursively)."""
    special = SPECIAL.get(descriptor.full_name)
    if special is not None and chance(rng, 0.5):
        return special(rng, known)
    message = message_class(descriptor)()
    for f in descriptor.fields:
        if chance(rng, 0.55):
            fill(message, f, rng, known, depth)
    return message


def fill(message: Message, f: FieldDescriptor, rng: np.random.Generator, known: Known, depth: int) -> None:
    if f.message_type is not None and depth >= MAX_DEPTH:
        return
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        fill_map(getattr(message, f.name), f.message_type, rng, known, depth)
    elif f.is_repeated:
        fill_repeated(getattr(message, f.name), f, rng, known, depth)
    elif f.message_type is not None:
        getattr(message, f.name).CopyFrom(random_message(f.message_type, rng, known, depth + 1))
    else:
        setattr(message, f.name, scalar(rng, known, f))


def fill_repeated(items: Any, f: FieldDescriptor, rng: np.random.Generator, known: Known, depth: int) -> None:
    many = 30 if f.message_type is not None else 1000
    count = pick(rng, (0, 1, 2, 3, many if depth == 0 else 3))
    if f.message_type is None:
        items.extend(scalar(rng, known, f) for _ in range(count))
        return
    for _ in range(count):
        items.add().CopyFrom(random_message(f.message_type, rng, known, depth + 1))


def fill_map(entries: Any, entry: Descriptor, rng: np.random.Generator, known: Known, depth: int) -> None:
    key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for _ in range(pick(rng, (0, 1, 3))):
        k = scalar(rng, known, key)
        if value.message_type is None:
            entries[k] = scalar(rng, known, value)
        else:
            entries[k].CopyFrom(random_message(value.message_type, rng, known, depth + 1))


# ------------------------------------------------------------------------------------ valid requests


def dense(units: int, activation: str = "relu") -> pb.Layer:
    return pb.Layer(dense=pb.DenseLayer(units=units, activation=activation))


OUTPUTS = {"squared_error": "identity", "binary_crossentropy": "sigmoid", "softmax_crossentropy": "softmax"}
"""The output activation each loss is paired with."""


def valid_spec(rng: np.random.Generator, known: Known) -> pb.ModelSpec:
    """A small architecture of every kind of layer that the service accepts."""
    width = int(rng.integers(1, 9))
    hidden = [
        dense(width, pick(rng, ("relu", "tanh", "sigmoid", "leaky_relu"))),
        pb.Layer(batchnorm=pb.BatchNormLayer(activation="relu", momentum=0.9, epsilon=1e-5)),
        pb.Layer(residual=pb.ResidualBlock(layers=[dense(width, "tanh"), dense(width, "identity")])),
    ]
    loss = pick(rng, tuple(OUTPUTS))
    layers = [*hidden[: int(rng.integers(1, 4))], dense(known.outputs, OUTPUTS[loss])]
    return pb.ModelSpec(
        input_dim=known.input_dim,
        layers=layers,
        loss=loss,
        dtype=pick(rng, (pb.FLOAT32, pb.FLOAT64)),
        seed=int(rng.integers(1000)),
    )


def small_options(rng: np.random.Generator) -> pb.TrainOptions:
    """Options of a run that ends within a second: a few epochs of a few rows."""
    return pb.TrainOptions(
        epochs=int(rng.integers(1, 4)),
        batch_size=int(rng.integers(1, 9)),
        seed=int(rng.integers(1000)),
        optimizer=pb.OptimizerOptions(name=pick(rng, NAMES[14:20]), learning_rate=0.01),
    )


def source(rng: np.random.Generator, known: Known, rows: int, columns: int) -> pb.DataSource:
    if known.datasets and chance(rng, 0.3):
        return pb.DataSource(dataset_id=pick(rng, known.datasets))
    return pb.DataSource(tensor=tensor(rng, rows, columns))


def model_id(rng: np.random.Generator, known: Known) -> str:
    return pick(rng, known.models) if known.models else ""


def valid_create(rng: np.random.Generator, known: Known) -> Messages:
    return [pb.CreateModelRequest(name=f"fuzz {rng.integers(1000)}", spec=valid_spec(rng, known))]


def valid_predict(rng: np.random.Generator, known: Known) -> Messages:
    rows = int(rng.integers(1, 9))
    return [pb.PredictRequest(model_id=model_id(rng, known), inputs=tensor(rng, rows, known.input_dim))]


def valid_gradients(rng: np.random.Generator, known: Known) -> Messages:
    rows = int(rng.integers(1, 9))
    request = pb.GetGradientsRequest(
        model_id=model_id(rng, known),
        inputs=tensor(rng, rows, known.input_dim),
        targets=tensor(rng, rows, known.outputs),
        numerical_check=chance(rng, 0.3),
        inference_mode=chance(rng, 0.5),
    )
    return [request]


def valid_start(rng: np.random.Generator, known: Known) -> Messages:
    rows = int(rng.integers(2, 17))
    request = pb.StartRunRequest(
        model_id=model_id(rng, known),
        inputs=source(rng, known, rows, known.input_dim),
        targets=source(rng, known, rows, known.outputs),
        options=small_options(rng),
    )
    return [request]


def valid_train(rng: np.random.Generator, known: Known) -> Messages:
    rows = int(rng.integers(2, 17))
    request = pb.TrainRequest(
        model_id=model_id(rng, known),
        inputs=tensor(rng, rows, known.input_dim),
        targets=tensor(rng, rows, known.outputs),
        options=small_options(rng),
    )
    return [request]


def valid_upload(rng: np.random.Generator, known: Known) -> Messages:
    """A header, then the array's bytes in chunks of random sizes."""
    values = array(rng, int(rng.integers(1, 33)), int(rng.integers(1, 5)), pick(rng, ("float32", "float64")))
    header = pb.DatasetHeader(
        name="fuzz", dtype=codec.PROTO_DTYPES[values.dtype], shape=values.shape, request_id=""
    )
    data = values.tobytes()
    cuts = sorted(int(c) for c in rng.integers(0, len(data) + 1, int(rng.integers(0, 4))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [pb.UploadDatasetRequest(header=header), *(pb.UploadDatasetRequest(chunk=c) for c in chunks)]


def plain_request(descriptor: Descriptor, rng: np.random.Generator, known: Known) -> Message:
    """A request with only its id fields set, to real ids: a valid GetModel, WatchRun, ..."""
    message = message_class(descriptor)()
    for f in descriptor.fields:
        hint = HINTS.get(f.name)
        if hint is not None and f.name.endswith("_id") and not f.is_repeated:
            setattr(message, f.name, hint(rng, known))
    return message


VALID: dict[str, Callable[[np.random.Generator, Known], Messages]] = {
    "CreateModel": valid_create,
    "Predict": valid_predict,
    "GetGradients": valid_gradients,
    "StartRun": valid_start,
    "Train": valid_train,
    "UploadDataset": valid_upload,
}
"""Valid requests of the methods whose requests carry more than ids; the others get
:func:`plain_request`."""


def valid_request(method: MethodDescriptor, rng: np.random.Generator, known: Known) -> Messages:
    build = VALID.get(method.name)
    return build(rng, known) if build else [plain_request(method.input_type, rng, known)]


# ------------------------------------------------------------------------------------ generator 1: random


def random_case(method: MethodDescriptor, rng: np.random.Generator, known: Known) -> Generated:
    count = pick(rng, (0, 1, 2, 3, 5)) if method.client_streaming else 1
    messages = [random_message(method.input_type, rng, known).SerializeToString() for _ in range(count)]
    return "message", messages


# ------------------------------------------------------------------------------------ generator 2: mutation


def flip(data: bytearray, rng: np.random.Generator) -> None:
    if data:
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))


def overwrite(data: bytearray, rng: np.random.Generator) -> None:
    if data:
        data[int(rng.integers(len(data)))] = int(rng.integers(256))


def insert(data: bytearray, rng: np.random.Generator) -> None:
    at = int(rng.integers(len(data) + 1))
    data[at:at] = rng.bytes(int(rng.integers(1, 9)))


def delete(data: bytearray, rng: np.random.Generator) -> None:
    at = int(rng.integers(len(data) + 1))
    del data[at : at + int(rng.integers(1, 9))]


def duplicate(data: bytearray, rng: np.random.Generator) -> None:
    a, b = sorted(int(x) for x in rng.integers(0, len(data) + 1, 2))
    data[b:b] = data[a:b]


def cut(data: bytearray, rng: np.random.Generator) -> None:
    del data[int(rng.integers(len(data) + 1)) :]


BYTE_EDITS: dict[str, Callable[[bytearray, np.random.Generator], None]] = {
    "flip": flip,
    "overwrite": overwrite,
    "insert": insert,
    "delete": delete,
    "duplicate": duplicate,
    "cut": cut,
}


def scalar_fields(message: Message) -> Iterator[tuple[Message, FieldDescriptor]]:
    """Every scalar field of ``message`` and of the sub-messages it has, set or not."""
    for f in message.DESCRIPTOR.fields:
        if f.message_type is None:
            yield message, f
        elif f.message_type.GetOptions().map_entry:
            continue
        elif f.is_repeated:
            for item in getattr(message, f.name):
                yield from scalar_fields(item)
        elif message.HasField(f.name):
            yield from scalar_fields(getattr(message, f.name))


def shaped(message: Message) -> Iterator[Message]:
    """The sub-messages (``message`` included) that describe an array: a shape and a dtype."""
    if {"shape", "dtype"} <= set(message.DESCRIPTOR.fields_by_name):
        yield message
    for f, value in message.ListFields():
        if f.message_type is None or f.message_type.GetOptions().map_entry:
            continue
        for item in value if f.is_repeated else [value]:
            yield from shaped(item)


def extreme(rng: np.random.Generator, f: FieldDescriptor) -> Any:
    """An extreme value for a scalar field: the edges of its type, NaN, NUL, 10,000 characters."""
    extremes: dict[int, Sequence[Any]] = {
        FieldDescriptor.CPPTYPE_INT32: INT32,
        FieldDescriptor.CPPTYPE_INT64: INT64,
        FieldDescriptor.CPPTYPE_UINT32: UINT32,
        FieldDescriptor.CPPTYPE_UINT64: UINT64,
        FieldDescriptor.CPPTYPE_DOUBLE: DOUBLES,
        FieldDescriptor.CPPTYPE_FLOAT: DOUBLES,
        FieldDescriptor.CPPTYPE_BOOL: (True, False),
        FieldDescriptor.CPPTYPE_ENUM: ENUMS,
        FieldDescriptor.CPPTYPE_STRING: (b"", b"\x00" * 9, b"\xff" * 10_000)
        if f.type == FieldDescriptor.TYPE_BYTES
        else STRINGS,
    }
    return pick(rng, extremes[f.cpp_type])


def set_extreme(message: Message, f: FieldDescriptor, rng: np.random.Generator) -> None:
    if not f.is_repeated:
        setattr(message, f.name, extreme(rng, f))
        return
    items = getattr(message, f.name)
    del items[:]
    items.extend(extreme(rng, f) for _ in range(pick(rng, (1, 2, 1000))))


SHAPES = (
    [0, 2**62],
    [2**62, 0],
    [2**63 - 1, 2**63 - 1, 0],
    [2**32, 2**32],
    [2**31, 3],
    [-1, 3],
    [-(2**63), 0],
    [],
    [3],
    [1, 1, 1],
    [1] * 33,
    [1] * 64,
    [1] * 65,
    [0] * 100,
)
"""Shapes that no array of a request's size has, or that NumPy cannot make."""


def set_shape(t: Message, shape: Sequence[int], fit: bool) -> None:
    """``shape`` for an array message; with ``fit``, data of the size the shape claims (where that
    is small), so that the check of sizes cannot catch it and the shape itself must be refused."""
    del t.shape[:]
    t.shape.extend(shape)
    itemsize = 4 if t.dtype == pb.FLOAT32 else 8
    size = math.prod(shape) * itemsize
    if fit and "data" in t.DESCRIPTOR.fields_by_name and 0 <= size <= 1024:
        t.data = bytes(size)


def reshape(t: Message, rng: np.random.Generator) -> None:
    set_shape(t, pick(rng, SHAPES), chance(rng, 0.7))


def redtype(t: Message, rng: np.random.Generator) -> None:
    t.dtype = pick(rng, (*ENUMS, int(rng.integers(3, 1001)), pb.INT64, pb.DTYPE_UNSPECIFIED))


def resize(t: Message, rng: np.random.Generator) -> None:
    if "data" in t.DESCRIPTOR.fields_by_name:
        t.data = pick(rng, (t.data[:-1], t.data + b"\x00", t.data * 2, b""))
    else:
        reshape(t, rng)


def poison(t: Message, rng: np.random.Generator) -> None:
    """Same size, every value NaN or infinite."""
    if "data" not in t.DESCRIPTOR.fields_by_name:
        reshape(t, rng)
        return
    itemsize = 4 if t.dtype == pb.FLOAT32 else 8
    value = struct.pack("<f" if itemsize == 4 else "<d", pick(rng, (math.nan, math.inf, -math.inf)))
    t.data = value * (len(t.data) // itemsize)


TENSOR_EDITS: dict[str, Callable[[Message, np.random.Generator], None]] = {
    "shape": reshape,
    "dtype": redtype,
    "data": resize,
    "nonfinite": poison,
}


def edit_bytes(messages: Messages, rng: np.random.Generator) -> Generated:
    """One to three edits (flip, insert, cut, ...) of the bytes of one message or several."""
    encoded = [bytearray(m.SerializeToString()) for m in messages]
    for _ in range(int(rng.integers(1, 4))):
        BYTE_EDITS[pick(rng, tuple(BYTE_EDITS))](pick(rng, encoded) if encoded else bytearray(), rng)
    return "bytes", [bytes(e) for e in encoded]


def edit_field(messages: Messages, rng: np.random.Generator) -> Generated:
    fields = [slot for message in messages for slot in scalar_fields(message)]
    if not fields:
        return edit_bytes(messages, rng)
    owner, f = pick(rng, fields)
    set_extreme(owner, f, rng)
    return f"field {f.name}", [m.SerializeToString() for m in messages]


def edit_tensor(messages: Messages, rng: np.random.Generator) -> Generated:
    arrays = [t for m in messages for t in shaped(m)]
    if not arrays:
        return edit_field(messages, rng)
    name = pick(rng, tuple(TENSOR_EDITS))
    TENSOR_EDITS[name](pick(rng, arrays), rng)
    return f"tensor {name}", [m.SerializeToString() for m in messages]


STREAM_EDITS: dict[str, Callable[[list[bytes], np.random.Generator], list[bytes]]] = {
    "drop": lambda ms, rng: [m for i, m in enumerate(ms) if i != int(rng.integers(len(ms)))],
    "repeat": lambda ms, rng: [*ms, pick(rng, ms)],
    "reverse": lambda ms, rng: ms[::-1],
    "first only": lambda ms, rng: ms[:1],
    "none": lambda ms, rng: [],
    "header twice": lambda ms, rng: ms[:1] + ms,
}


def edit_stream(messages: Messages, rng: np.random.Generator) -> Generated:
    name = pick(rng, tuple(STREAM_EDITS))
    return f"stream {name}", STREAM_EDITS[name]([m.SerializeToString() for m in messages], rng)


MUTATIONS: dict[str, Callable[[Messages, np.random.Generator], Generated]] = {
    "bytes": edit_bytes,
    "field": edit_field,
    "tensor": edit_tensor,
    "stream": edit_stream,
}


def mutated_case(method: MethodDescriptor, rng: np.random.Generator, known: Known) -> Generated:
    names = tuple(MUTATIONS) if method.client_streaming else tuple(n for n in MUTATIONS if n != "stream")
    return MUTATIONS[pick(rng, names)](valid_request(method, rng, known), rng)


# ------------------------------------------------------------------------------------ generator 3: raw

WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH, WIRE_START_GROUP, WIRE_END_GROUP, WIRE_FIXED32 = range(6)


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers travel as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def delimited(number: int, payload: bytes) -> bytes:
    return tag(number, WIRE_LENGTH) + varint(len(payload)) + payload


def number(message: type[Message], name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


def paths_to(
    descriptor: Descriptor, wanted: Callable[[FieldDescriptor], bool], depth: int = 4
) -> list[list[FieldDescriptor]]:
    """The chains of fields from ``descriptor`` to every field ``wanted`` accepts, ``depth`` deep."""
    found = []
    for f in descriptor.fields:
        if wanted(f):
            found.append([f])
        if f.message_type is not None and depth > 1:
            found += [[f, *rest] for rest in paths_to(f.message_type, wanted, depth - 1)]
    return found


def wrap(path: Sequence[FieldDescriptor], payload: bytes) -> bytes:
    """``payload`` as the value of the last field of ``path``, inside the messages before it."""
    for f in reversed(path):
        payload = delimited(f.number, payload)
    return payload


BAD_UTF8 = (b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"abc\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")


def invalid_utf8(descriptor: Descriptor, rng: np.random.Generator) -> bytes:
    paths = paths_to(descriptor, lambda f: f.type == FieldDescriptor.TYPE_STRING)
    if not paths:
        return rng.bytes(16)
    return wrap(pick(rng, paths), pick(rng, BAD_UTF8))


def huge_length(descriptor: Descriptor, rng: np.random.Generator) -> bytes:
    numbers = [f.number for f in descriptor.fields] or [1]
    declared = pick(rng, (2**31, 2**32 + 5, 2**62, 2**64 - 1, 1000))
    return tag(pick(rng, numbers), WIRE_LENGTH) + varint(declared) + rng.bytes(int(rng.integers(0, 9)))


def wrong_wire_type(descriptor: Descriptor, rng: np.random.Generator) -> bytes:
    numbers = [f.number for f in descriptor.fields] or [1]
    payload = {
        WIRE_VARINT: varint(2**64 - 1),
        WIRE_FIXED64: rng.bytes(8),
        WIRE_LENGTH: varint(3) + b"abc",
        WIRE_FIXED32: rng.bytes(4),
        WIRE_END_GROUP: b"",
        7: b"",  # no such wire type
    }
    wire = pick(rng, tuple(payload))
    return tag(pick(rng, numbers), wire) + payload[wire]


def bad_varint(descriptor: Descriptor, rng: np.random.Generator) -> bytes:
    return pick(
        rng,
        (
            tag(1, WIRE_VARINT) + b"\xff" * 10 + b"\x01",  # 11 bytes: longer than any varint
            tag(1, WIRE_VARINT) + b"\xff\xff",  # never ends
            tag(0, WIRE_VARINT) + b"\x00",  # field number 0
            varint((2**29) << 3) + b"\x00",  # field number past 2**29 - 1
            tag(2**29 - 1, WIRE_VARINT) + b"\x01",
            tag(19_000, WIRE_VARINT) + b"\x01",  # the range protobuf reserves
        ),
    )


DEPTHS = (10, 45, 48, 49, 50, 51, 60, 99, 100, 101, 200, 2000)
"""Nesting depths around protobuf's default recursion limit (100 messages) and far past it."""


def deep_groups(descriptor: Descriptor, rng: np.random.Generator) -> bytes:
    """Unknown groups nested ``depth`` deep (a parser recurses into them), sometimes unclosed."""
    depth = pick(rng, DEPTHS)
    closing = pick(rng, (depth, depth, depth - 1, depth + 1, 0))
    return tag(1000, WIRE_START_GROUP) * depth + tag(1000, WIRE_END_GROUP) * closing


def deep_residual(depth: int, known: Known) -> bytes:
    """A ModelSpec whose first layer is ``depth`` residual blocks, one inside the other."""
    layer = pb.Layer(dense=pb.DenseLayer(units=known.input_dim)).SerializeToString()
    for _ in range(depth):
        block = (
            delimited(number(pb.ResidualBlock, "layers"), layer)
            + pb.ResidualBlock(activation="relu").SerializeToString()
        )
        layer = delimited(number(pb.Layer, "residual"), block)
    last = dense(known.outputs, "identity").SerializeToString()
    head = pb.ModelSpec(input_dim=known.input_dim, loss="squared_error").SerializeToString()
    layers = number(pb.ModelSpec, "layers")
    return head + delimited(layers, layer) + delimited(layers, last)


def deep(descriptor: Descriptor, rng: np.random.Generator, known: Known) -> bytes:
    """Residual blocks nested past the recursion limit where the request holds a spec; else groups."""
    paths = paths_to(descriptor, lambda f: f.message_type is pb.ModelSpec.DESCRIPTOR, depth=2)
    if not paths:
        return deep_groups(descriptor, rng)
    return wrap(pick(rng, paths), deep_residual(pick(rng, DEPTHS), known))


def truncated(method: MethodDescriptor, rng: np.random.Generator, known: Known) -> bytes:
    whole = pick(rng, valid_request(method, rng, known)).SerializeToString()
    return whole[: int(rng.integers(len(whole)))] if whole else b"\x0a"


def oversize(descriptor: Descriptor, rng: np.random.Generator) -> bytes:
    """A message past the server's size limit (the fuzz server allows 4 MiB)."""
    return delimited(pick(rng, [f.number for f in descriptor.fields] or [1]), bytes(4 * 2**20 + 16))


RAW: dict[str, tuple[float, Callable[[MethodDescriptor, np.random.Generator, Known], bytes]]] = {
    "random": (4, lambda m, rng, k: rng.bytes(pick(rng, (0, 1, 2, 5, 16, 64, 512)))),
    "truncated": (3, truncated),
    "utf8": (3, lambda m, rng, k: invalid_utf8(m.input_type, rng)),
    "length": (2, lambda m, rng, k: huge_length(m.input_type, rng)),
    "wiretype": (2, lambda m, rng, k: wrong_wire_type(m.input_type, rng)),
    "varint": (1, lambda m, rng, k: bad_varint(m.input_type, rng)),
    "deep": (3, lambda m, rng, k: deep(m.input_type, rng, k)),
    "groups": (1, lambda m, rng, k: deep_groups(m.input_type, rng)),
    "oversize": (0.1, lambda m, rng, k: oversize(m.input_type, rng)),
}
"""Raw inputs by name: (relative weight, maker). Over-size messages are rare: 4 MiB each."""


def raw_case(method: MethodDescriptor, rng: np.random.Generator, known: Known) -> Generated:
    names = tuple(RAW)
    weights = np.array([RAW[n][0] for n in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    raw = RAW[name][1](method, rng, known)
    if not method.client_streaming:
        return name, [raw]
    stream = [m.SerializeToString() for m in valid_request(method, rng, known)]
    stream.insert(int(rng.integers(len(stream) + 1)), raw)  # e.g. a valid header, then garbage
    return name, stream


# ------------------------------------------------------------------------------------ cases

GENERATORS: dict[str, Callable[[MethodDescriptor, np.random.Generator, Known], Generated]] = {
    "random": random_case,
    "mutation": mutated_case,
    "raw": raw_case,
}


def make_case(seed: int, index: int, method: MethodDescriptor, known: Known) -> Case:
    """Case ``index`` of the run seeded ``seed``: the same bytes for the same ids, every time."""
    rng = np.random.default_rng([seed, index])
    generator = pick(rng, tuple(GENERATORS))
    label, messages = GENERATORS[generator](method, rng, known)
    return Case(seed, index, method.name, f"{generator}:{label}", tuple(messages))


# ------------------------------------------------------------------------------------ the sweep

SWEEP: dict[int, tuple[Any, ...]] = {
    FieldDescriptor.CPPTYPE_INT32: (0, -1, 2**31 - 1, -(2**31)),
    FieldDescriptor.CPPTYPE_INT64: (0, -1, 2**31, 2**63 - 1, -(2**63)),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**63, 2**64 - 1),
    FieldDescriptor.CPPTYPE_DOUBLE: (math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, 5e-324),
    FieldDescriptor.CPPTYPE_FLOAT: (math.nan, math.inf, -math.inf, 0.0, -1.0),
    FieldDescriptor.CPPTYPE_BOOL: (True,),
    FieldDescriptor.CPPTYPE_ENUM: (-1, 3, 1000),
    FieldDescriptor.CPPTYPE_STRING: ("", "\x00", "a\x00b", "x" * 10_000, "\U0001f4a5"),
}
"""The values every scalar field of a valid request takes in turn, by C++ type."""
SWEEP_BYTES = (b"", b"\x00" * 9)


def sweep_values(f: FieldDescriptor) -> tuple[Any, ...]:
    if f.type == FieldDescriptor.TYPE_BYTES:
        return SWEEP_BYTES
    if f.name == "page_token":
        return TOKENS
    return SWEEP[f.cpp_type]


def set_value(message: Message, f: FieldDescriptor, value: Any) -> None:
    if f.is_repeated:
        getattr(message, f.name).append(value)
    else:
        setattr(message, f.name, value)


def sweep_edits(messages: Messages) -> Iterator[tuple[str, Callable[[Messages], None]]]:
    """Every single edit the sweep makes to ``messages``, as (label, edit of a copy of them):
    each scalar field at each of its values, each array at each impossible shape and dtype."""
    slots = [
        (m, i, f) for m, message in enumerate(messages) for i, (_, f) in enumerate(scalar_fields(message))
    ]
    for m, i, f in slots:
        for value in sweep_values(f):

            def edit(
                copies: Messages, m: int = m, i: int = i, f: FieldDescriptor = f, value: Any = value
            ) -> None:
                owner, _ = list(scalar_fields(copies[m]))[i]
                set_value(owner, f, value)

            yield f"field {f.name}={value!r:.20}", edit
    arrays = [(m, i) for m, message in enumerate(messages) for i, _ in enumerate(shaped(message))]
    for m, i in arrays:
        for shape in SHAPES:
            yield (
                f"shape {shape[:4]}",
                lambda c, m=m, i=i, shape=shape: set_shape(list(shaped(c[m]))[i], shape, True),
            )
        for dtype in ENUMS:
            yield (
                f"dtype {dtype}",
                lambda c, m=m, i=i, dtype=dtype: setattr(list(shaped(c[m]))[i], "dtype", dtype),
            )


def sweep(seed: int, method: MethodDescriptor, known: Known) -> Iterator[Case]:
    """A valid request of ``method`` changed in one place at a time, every place in turn: the
    values that the random cases would reach only once in thousands of requests."""
    base = valid_request(method, np.random.default_rng([seed, method.index, 1 << 32]), known)
    for index, (label, edit) in enumerate(sweep_edits(base)):
        copies = [type(m).FromString(m.SerializeToString()) for m in base]
        edit(copies)
        yield Case(seed, index, method.name, f"sweep:{label}", tuple(m.SerializeToString() for m in copies))
