"""The open inference protocol (KServe's V2, also Triton's) over gradwire's models, written once
for both of its transports: gRPC (:mod:`.inference_servicer`) and HTTP/REST (:mod:`.http`).

Both carry the same things, tensors with a name, a datatype and a shape; this module takes and
gives them as NumPy arrays and leaves the bytes on the wire to its callers. A model is named by
its id, or by its name where no other model of the tenant has it; a version by its number
("" or none: the current one). Every model has one input, ``input`` ([rows, input_dim], FP32
or FP64, as Predict takes), and the outputs ``output`` (the model's dtype, [rows, output_dim])
and, for a classifier, ``label`` (INT64, [rows]): the arrays Predict answers with, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from gradwire.engine import InvalidArgument, NetworkSpec
from gradwire.engine.data import check_finite
from gradwire.storage import NotFound
from gradwire.v1.answers import Prediction

from ..usecases.app import Gradwire
from ..usecases.inference import is_classifier

SERVER_NAME = "gradwire"
INPUT = "input"
OUTPUT = "output"
LABEL = "label"
PLATFORM = "gradwire"

DATATYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
}
"""The protocol's datatypes that gradwire's tensors have, and their arrays' dtypes."""
NAMES = {dtype: name for name, dtype in DATATYPES.items()}
INPUT_DATATYPES = ("FP32", "FP64")
"""What an input may be: Predict computes in the model's dtype from either."""


@dataclass(frozen=True)
class TensorMeta:
    """A tensor as metadata describes it: -1 for a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMeta:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


@dataclass(frozen=True)
class Tensor:
    """A tensor of a request or a response."""

    name: str
    array: np.ndarray

    @property
    def datatype(self) -> str:
        return NAMES[self.array.dtype.newbyteorder("<")]


@dataclass(frozen=True)
class Answer:
    """An inference's outputs, and the model and version that gave them."""

    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]


MAX_DIMENSION = 1 << 31
"""A tensor dimension at most: more is no tensor any bound of this server lets through."""


def natural(text: str) -> int | None:
    """``text`` as a number written in ASCII digits (at most 18 of them), else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def version_number(version: str, field: str) -> int:
    """A request's version: its number, 0 (the current one) where none is given."""
    if not version:
        return 0
    number = natural(version)
    if number is None or number < 1:
        raise InvalidArgument(field, f"must be a version number (1, 2, ...), got {version[:40]!r}")
    return number


def input_array(datatype: str, shape: Sequence[int], data: bytes | np.ndarray, field: str) -> np.ndarray:
    """An input's array from its datatype, shape and elements (raw little-endian bytes, or an
    array of them), refused naming ``field`` where these do not agree."""
    if datatype not in INPUT_DATATYPES:
        raise InvalidArgument(
            f"{field}.datatype", f"must be one of {list(INPUT_DATATYPES)}, got {datatype[:20]!r}"
        )
    if len(shape) != 2 or not all(0 <= size <= MAX_DIMENSION for size in shape):
        got = list(shape)[:8]
        raise InvalidArgument(f"{field}.shape", f"must be [rows, columns] of sizes up to 2^31, got {got}")
    dtype, count = DATATYPES[datatype], int(shape[0]) * int(shape[1])
    if isinstance(data, np.ndarray):
        flat = data.astype(dtype, copy=False).reshape(-1)
    elif len(data) != count * dtype.itemsize:
        raise InvalidArgument(
            f"{field}.contents",
            f"holds {len(data)} bytes, shape {list(shape)} of {datatype} takes {count * dtype.itemsize}",
        )
    else:
        flat = np.frombuffer(data, dtype)
    if flat.size != count:
        raise InvalidArgument(
            f"{field}.contents", f"holds {flat.size} elements, shape {list(shape)} takes {count}"
        )
    array = flat.reshape(shape)
    check_finite(array, f"{field}.contents")
    return array


class OpenInference:
    """The protocol's questions, answered from ``app`` for a tenant."""

    def __init__(self, app: Gradwire, ready: Callable[[], bool]) -> None:
        self.app, self._ready = app, ready

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, metadata.version("gradwire"), ()

    def server_ready(self) -> bool:
        return self._ready()

    def model_ready(self, tenant: str, name: str, version: str) -> bool:
        """Whether the model answers at that version: False for a model or version that does not
        exist (or is another tenant's)."""
        try:
            self.model_metadata(tenant, name, version)
        except (NotFound, InvalidArgument):
            return False
        return True

    def model_metadata(self, tenant: str, name: str, version: str) -> ModelMeta:
        model = self.app.models.address(tenant, name, "model_name")
        versions = self.app.models.versions(tenant, model.id)
        asked = version_number(version, "model_version")
        if asked and asked not in versions:
            raise NotFound("version", asked, "model_version")
        spec = NetworkSpec.from_dict(model.spec)
        dtype = NAMES[np.dtype(spec.dtype)]
        outputs = [TensorMeta(OUTPUT, dtype, (-1, spec.output_dim))]
        if is_classifier(spec):
            outputs.append(TensorMeta(LABEL, "INT64", (-1,)))
        return ModelMeta(
            name,
            tuple(str(v) for v in versions),
            PLATFORM,
            (TensorMeta(INPUT, dtype, (-1, spec.input_dim)),),
            tuple(outputs),
        )

    def infer(
        self, tenant: str, name: str, version: str, inputs: Sequence[Tensor], wanted: Sequence[str]
    ) -> Answer:
        """The model's outputs for ``inputs`` (those named in ``wanted``; every one if empty)."""
        asked = version_number(version, "model_version")
        X = self._input(inputs)
        unknown = sorted(set(wanted) - {OUTPUT, LABEL})
        if unknown:
            there = f"there are {OUTPUT!r} and {LABEL!r}"
            raise InvalidArgument("outputs", f"no output {unknown[0][:40]!r}: {there}")
        prediction = self._predict(tenant, name, X, asked)
        answers = {OUTPUT: prediction.outputs}
        if prediction.labels is not None:
            answers[LABEL] = prediction.labels.astype(np.int64, copy=False)
        elif LABEL in wanted:
            why = f"model {name[:40]!r} is not a classifier: it has no {LABEL!r}"
            raise InvalidArgument("outputs", why)
        chosen = wanted or list(answers)
        return Answer(name, str(prediction.version), tuple(Tensor(n, answers[n]) for n in chosen))

    def _predict(self, tenant: str, name: str, X: np.ndarray, version: int) -> Prediction:
        """Predict's answer from the model ``name`` addresses: tried as an id first, which costs
        Predict's one read; as a name only where no model of the tenant has that id."""
        try:
            return self.app.inference.predict(tenant, name, X, version)
        except NotFound as exc:
            if exc.what != "model":
                raise
        model = self.app.models.address(tenant, name, "model_name")
        return self.app.inference.predict(tenant, model.id, X, version)

    @staticmethod
    def _input(inputs: Sequence[Tensor]) -> np.ndarray:
        if len(inputs) != 1:
            given = f"{len(inputs)} were given"
            raise InvalidArgument("inputs", f"the model takes one input, {INPUT!r}; {given}")
        (tensor,) = inputs
        if tensor.name != INPUT:
            why = f"the model's input is {INPUT!r}, not {tensor.name[:40]!r}"
            raise InvalidArgument("inputs[0].name", why)
        return tensor.array
