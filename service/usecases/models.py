"""The model use cases: create, import, read, list, delete and export models (the arrays, or an
ONNX graph), each checked against the limits and the tenant's quotas before the store is asked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from gradwire.engine import InvalidArgument, Network, NetworkSpec
from gradwire.engine.errors import Problems
from gradwire.engine.memory import ALLOWANCE, format_bytes, state_values
from gradwire.storage import ModelRecord, NotFound, RequestReused, RunRecord, Store
from gradwire.v1.digest import weights_digest

from ..core.errors import LimitExceeded
from ..core.settings import Limits
from . import onnx_export
from .datasets import check_request_id
from .memory import import_bytes
from .paging import paged
from .runs import check_memory
from .weights import read_npz

log = logging.getLogger(__name__)

MAX_NAME = 200


@dataclass(frozen=True)
class Export:
    """A version's arrays in the model's order, and their digest (as a run's receipt names it)."""

    version: int
    arrays: dict[str, np.ndarray]
    digest: str


@dataclass(frozen=True)
class OnnxExport:
    """A version as a serialized ONNX model, and the digest of the arrays it was built from."""

    version: int
    data: bytes
    digest: str


class Models:
    """Models of a tenant's: their specs, versions and weights, in the store."""

    def __init__(self, store: Store, limits: Limits, forget: Callable[[str], None]) -> None:
        """``forget`` drops whatever is kept in memory of a model deleted."""
        self.store, self.limits, self._forget = store, limits, forget

    def create(self, tenant: str, name: str, spec: NetworkSpec, request_id: str = "") -> ModelRecord:
        self._check_creation(name, request_id)
        self.check_architecture(spec)
        network = Network(spec)
        model = self.store.models.create(
            tenant, name, spec.to_dict(), network.state_arrays(), network.flat.size, request_id
        )
        self._check_same(tenant, model, name, spec, request_id)
        log.info("model created", extra={"model": model.id, "params": model.parameter_count})
        return model

    def import_(
        self, tenant: str, name: str, spec: NetworkSpec, weights: bytes, request_id: str = ""
    ) -> ModelRecord:
        """A model of ``spec`` at version 1 holding the arrays of the ``.npz`` bytes ``weights``
        (see :func:`.weights.read_npz`), charged to the tenant's quotas as CreateModel is. A
        request id used before returns that model if it was this very import, and is refused
        (RequestReused) if it made anything else."""
        self.check_architecture(spec)
        what = f"ImportModel of {spec.parameter_count} parameters"
        check_memory(import_bytes(spec, len(weights)), self.limits, "weights", what)
        problems, arrays = Problems(), {}
        with problems.check():
            self._check_creation(name, request_id)
        with problems.check():
            arrays = read_npz(spec, weights)
        problems.raise_any()  # the name's, the request id's and every array's problems at once
        model = self.store.models.create(
            tenant, name, spec.to_dict(), arrays, spec.parameter_count, request_id
        )
        self._check_same(tenant, model, name, spec, request_id, weights_digest(arrays))
        log.info("model imported", extra={"model": model.id, "params": model.parameter_count})
        return model

    @staticmethod
    def _check_creation(name: str, request_id: str) -> None:
        problems = Problems()
        with problems.check():
            if len(name) > MAX_NAME:
                raise InvalidArgument("name", f"must be at most {MAX_NAME} characters")
        with problems.check():
            check_request_id(request_id)
        problems.raise_any()

    def _check_same(
        self, tenant: str, model: ModelRecord, name: str, spec: NetworkSpec, request_id: str, digest: str = ""
    ) -> None:
        """A model returned for a request id must be what this request would have made: its name
        and spec and, for an import (``digest`` given), its first version's weights (one more read,
        for an import with a request id only)."""
        same = (model.name, model.spec) == (name, spec.to_dict())
        if same and digest and request_id:
            _, first = self.store.models.load_weights(tenant, model.id, 1)
            same = weights_digest(first) == digest
        if not same:
            raise RequestReused(
                f"request_id {request_id!r} was first used to create another model ({model.id})"
            )

    def get(self, tenant: str, model_id: str) -> ModelRecord:
        return self.store.models.get(tenant, model_id)

    def address(self, tenant: str, name: str, field: str) -> ModelRecord:
        """The tenant's model ``name`` addresses: its id, or its name where no other of the
        tenant's models has it (``field`` is where the caller gave it)."""
        found = self.store.models.addressed(tenant, name)
        if not found:
            raise NotFound("model", name, field)
        if found[0].id != name and len(found) > 1:
            raise InvalidArgument(field, f"several of your models are named {name!r}: address one by its id")
        return found[0]

    def versions(self, tenant: str, model_id: str) -> list[int]:
        return self.store.models.versions(tenant, model_id)

    def page(self, tenant: str, page_size: int, page_token: str) -> tuple[list[ModelRecord], str]:
        return paged(partial(self.store.models.page, tenant), page_size, page_token)

    def delete(self, tenant: str, model_id: str) -> None:
        self.store.models.delete(tenant, model_id)
        self._forget(model_id)

    def history(self, tenant: str, model_id: str) -> list[RunRecord]:
        return self.store.runs.history(tenant, model_id)

    def export(self, tenant: str, model_id: str, version: int = 0) -> Export:
        """A version's weights and buffers (0: the current version)."""
        if version < 0:
            raise InvalidArgument("version", "must be ≥ 0 (0: the current version)")
        number, arrays = self.store.models.load_weights(tenant, model_id, version or None)
        return Export(number, arrays, weights_digest(arrays))

    def export_onnx(self, tenant: str, model_id: str, version: int = 0) -> OnnxExport:
        """A version as an ONNX model computing what Predict answers (see :mod:`.onnx_export`)."""
        spec = NetworkSpec.from_dict(self.store.models.get(tenant, model_id).spec)
        size = state_values(spec) * np.dtype(spec.dtype).itemsize
        if size > onnx_export.MAX_BYTES:
            raise LimitExceeded(
                "format",
                f"an ONNX file holds at most {format_bytes(onnx_export.MAX_BYTES)} of weights (one "
                f"protobuf message), this model has {format_bytes(size)}; export format ARRAYS",
            )
        what = f"an ONNX export of {format_bytes(size)} of weights"
        check_memory(ALLOWANCE + onnx_export.COPIES * size, self.limits, "format", what)
        export = self.export(tenant, model_id, version)
        metadata = {
            "gradwire.model_id": model_id,
            "gradwire.version": str(export.version),
            "gradwire.weights_sha256": export.digest,
        }
        return OnnxExport(
            export.version, onnx_export.to_onnx(spec.to_dict(), export.arrays, metadata), export.digest
        )

    def check_architecture(self, spec: NetworkSpec) -> None:
        limits = self.limits
        if spec.layer_count > limits.max_layers:
            raise LimitExceeded("spec.layers", f"at most {limits.max_layers} layers, inner ones included")
        if spec.max_width > limits.max_units:
            raise LimitExceeded("spec.layers", f"at most {limits.max_units} units (or inputs) per layer")
        if spec.parameter_count > limits.max_parameters:
            raise LimitExceeded(
                "spec", f"{spec.parameter_count} parameters, the limit is {limits.max_parameters}"
            )
