"""The service's use cases: the engine and the store wired together, with no gRPC in sight.

:class:`Gradwire` is what the servicer calls. Models and inference live here; datasets
(:mod:`.datasets`) and runs (:mod:`.runs`) are its parts, and runs execute through an
:class:`~.executor.Executor` fed by this process's :class:`~.executor.Supervisor`.

Memory holds caches only. Built networks are cached by ``(model, version)``: versions never
change, so such an entry is never stale. Which version is current is read from the database on
every call, so a model trained through another process is served at its new version at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from gradwire.engine import LOSSES, InvalidArgument, Network, NetworkSpec, check_gradients
from gradwire.engine.data import as_targets, check_in_range
from gradwire.engine.errors import Problems
from gradwire.engine.memory import (
    ALLOWANCE,
    format_bytes,
    gradient_bytes,
    gradient_check_bytes,
    inference_bytes,
    network_bytes,
    parameter_bytes,
    state_values,
)
from gradwire.storage import ModelRecord, RequestReused, RunRecord, Store
from gradwire.v1.answers import Gradients, Prediction
from gradwire.v1.digest import weights_digest

from ..core.errors import CannotAnswer, LimitExceeded
from ..core.settings import MiB, Settings
from ..execution.executor import Executor, Supervisor, ThreadExecutor, owner_id
from ..execution.process_executor import ProcessExecutor
from ..execution.ray_executor import RayExecutor
from ..execution.signals import Changes
from . import onnx_export
from .cache import NetworkCache
from .datasets import Datasets, check_request_id
from .paging import paged
from .runs import Runs, check_memory
from .weights import read_npz

log = logging.getLogger(__name__)

MAX_NAME = 200

ANSWER_COPIES = 2
"""Copies of an answer's arrays on its way out, beside the arrays: the message's bytes, and the
serialised message (the peak this gives is measured in docs/benchmarks.md, "Figures behind
constants")."""


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


IMPORT_COPIES = 2
"""An import's weights held at once besides the request's bytes: the arrays read, and the
``.npz`` written for the store."""


def import_bytes(spec: NetworkSpec, request_bytes: int) -> int:
    """ImportModel at its worst: the request's bytes twice (the message and the field read from
    it), the arrays and their stored copy."""
    return ALLOWANCE + 2 * request_bytes + IMPORT_COPIES * state_values(spec) * np.dtype(spec.dtype).itemsize


def is_classifier(spec: NetworkSpec) -> bool:
    return LOSSES[spec.loss].classifier


def _labels(spec: NetworkSpec, outputs: np.ndarray) -> np.ndarray | None:
    """Class labels of a classifier's outputs, by its loss's rule; None for a regressor."""
    labels = LOSSES[spec.loss].labels
    return None if labels is None else labels(outputs)


def _label_bytes(spec: NetworkSpec, rows: int) -> int:
    """What :func:`_labels` makes: an arg-max per row and its int64 copy, or a mask and an int64
    per output; nothing for a regression."""
    per_row = {"softmax_crossentropy": 16, "binary_crossentropy": 9 * spec.output_dim}
    return rows * per_row.get(spec.loss, 0)


def _answer_bytes(spec: NetworkSpec, rows: int) -> int:
    """The arrays of a Predict answer: outputs and, for classifiers, labels."""
    return rows * spec.output_dim * np.dtype(spec.dtype).itemsize + _label_bytes(spec, rows)


def predict_bytes(spec: NetworkSpec, rows: int) -> int:
    """Predict of ``rows`` rows at its worst: the forward passes, the labels, the answer's copies."""
    labels = _label_bytes(spec, rows)
    outputs = rows * spec.output_dim * np.dtype(spec.dtype).itemsize
    return inference_bytes(spec, rows) + labels + ANSWER_COPIES * (outputs + labels)


def as_float64(spec: NetworkSpec) -> NetworkSpec:
    """The same architecture in float64, where the numerical gradient check runs."""
    return NetworkSpec.from_dict({**spec.to_dict(), "dtype": "float64"})


def gradients_bytes(spec: NetworkSpec, rows: int, numerical_check: bool) -> int:
    """GetGradients at its worst: the passes, the answer's copies and, if asked, the numerical
    check's float64 copy of the model (copied state, then built) and its own passes."""
    need = gradient_bytes(spec, rows) + ANSWER_COPIES * parameter_bytes(spec)
    if numerical_check:
        wide = as_float64(spec)
        copied = state_values(spec) * np.dtype(spec.dtype).itemsize
        need += copied + network_bytes(wide) + gradient_check_bytes(wide, rows)
    return need


EXECUTORS: dict[str, Callable[[Store, Settings, Changes, Callable[[], None]], Executor]] = {
    "process": ProcessExecutor,
    "thread": ThreadExecutor,
    "ray": RayExecutor,
}
"""Each ``executor`` setting's executor (the names: :data:`.settings.EXECUTORS`)."""


class Gradwire:
    """The application: every RPC's behaviour, callable without a server."""

    def __init__(self, store: Store, settings: Settings, executor: Executor | None = None) -> None:
        self.store, self.settings, self.limits = store, settings, settings.limits
        self.owner = owner_id()
        self.changes = Changes()
        self._networks = NetworkCache(settings.model_cache_mb * MiB)
        self.executor = executor or EXECUTORS[settings.executor](
            store, settings, self.changes, self._job_done
        )
        self.supervisor = Supervisor(store, self.executor, settings, self.owner)
        self.datasets = Datasets(store, settings.limits)
        self.runs = Runs(
            store, settings, self.datasets, self.changes, self.supervisor.nudge, self.executor.cancel
        )

    def _job_done(self) -> None:
        self.supervisor.nudge()

    def start(self) -> None:
        """Start the executor's workers, then claiming and executing runs."""
        self.executor.start()
        self.supervisor.start()

    def close(self, grace: float = 5.0) -> None:
        """Claim nothing more and end every watch; ask the runs executing here to stop at their next
        epoch end (they become interrupted, their checkpoints kept), waiting up to ``grace`` seconds."""
        self.runs.close()
        self.supervisor.stop()
        self.executor.shutdown(grace)

    # ------------------------------------------------------------------ models

    def create_model(self, tenant: str, name: str, spec: NetworkSpec, request_id: str = "") -> ModelRecord:
        self._check_creation(name, request_id)
        self._check_architecture(spec)
        network = Network(spec)
        model = self.store.models.create(
            tenant, name, spec.to_dict(), network.state_arrays(), network.flat.size, request_id
        )
        self._check_same(tenant, model, name, spec, request_id)
        log.info("model created", extra={"model": model.id, "params": model.parameter_count})
        return model

    def import_model(
        self, tenant: str, name: str, spec: NetworkSpec, weights: bytes, request_id: str = ""
    ) -> ModelRecord:
        """A model of ``spec`` at version 1 holding the arrays of the ``.npz`` bytes ``weights``
        (see :func:`.weights.read_npz`), charged to the tenant's quotas as CreateModel is. A
        request id used before returns that model if it was this very import, and is refused
        (RequestReused) if it made anything else."""
        self._check_architecture(spec)
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

    def get_model(self, tenant: str, model_id: str) -> ModelRecord:
        return self.store.models.get(tenant, model_id)

    def list_models(self, tenant: str, page_size: int, page_token: str) -> tuple[list[ModelRecord], str]:
        return paged(partial(self.store.models.page, tenant), page_size, page_token)

    def delete_model(self, tenant: str, model_id: str) -> None:
        self.store.models.delete(tenant, model_id)
        self._networks.forget(model_id)

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

    # ------------------------------------------------------------------ inference

    def predict(self, tenant: str, model_id: str, X: np.ndarray, version: int = 0) -> Prediction:
        version, spec, network = self._network(tenant, model_id, version)
        self._check_inputs(X, spec, "inputs")
        self._check_answer(_answer_bytes(spec, len(X)), f"Predict of {len(X)} rows")
        check_memory(predict_bytes(spec, len(X)), self.limits, "inputs", f"Predict of {len(X)} rows")
        outputs = network.predict(X)
        return Prediction(outputs, _labels(spec, outputs), version)

    def gradients(
        self,
        tenant: str,
        model_id: str,
        X: np.ndarray,
        Y: np.ndarray,
        version: int = 0,
        numerical_check: bool = False,
        inference_mode: bool = False,
    ) -> Gradients:
        version, spec, network = self._network(tenant, model_id, version)
        self._check_inputs(X, spec, "inputs")
        Y = as_targets(Y, len(X), spec.output_dim, field="targets.shape")
        check_in_range(Y, spec.dtype, "targets.data")
        if numerical_check:
            self._check_gradcheck_size(spec, len(X))
        need = gradients_bytes(spec, len(X), numerical_check)
        check_memory(need, self.limits, "inputs", f"GetGradients of {len(X)} rows")
        loss, grads = network.loss_and_gradients(X, Y, training=not inference_mode, field="inputs")
        errors = self._numerical_check(spec, network, X, Y, inference_mode) if numerical_check else {}
        return Gradients(loss, grads, version, errors)

    def _check_gradcheck_size(self, spec: NetworkSpec, rows: int) -> None:
        """The numerical check costs two passes per parameter: it takes small models and batches."""
        if spec.parameter_count > self.limits.max_gradcheck_parameters:
            raise LimitExceeded(
                "numerical_check",
                f"needs at most {self.limits.max_gradcheck_parameters} "
                f"parameters, the model has {spec.parameter_count}",
            )
        if rows > self.limits.max_gradcheck_rows:
            raise LimitExceeded(
                "inputs", f"numerical_check takes at most {self.limits.max_gradcheck_rows} rows"
            )

    def _numerical_check(
        self, spec: NetworkSpec, network: Network, X: np.ndarray, Y: np.ndarray, inference_mode: bool
    ) -> dict[str, float]:
        """Central differences in float64, worst relative error per layer."""
        wide = as_float64(spec)
        report = check_gradients(
            Network.from_state(wide, network.state_arrays()), X, Y, training=not inference_mode
        )
        worst: dict[str, float] = {}
        for name, error in report.errors.items():
            layer = name.rsplit(".", 1)[0]
            worst[layer] = max(worst.get(layer, 0.0), error)
        return worst

    def _network(self, tenant: str, model_id: str, version: int) -> tuple[int, NetworkSpec, Network]:
        """The built network of a version (0: the current one, as the database says now). The
        database is asked on every call, cached or not: it says whether the model (still) exists
        and is the tenant's; versions never change, so a cached one is the version itself."""
        if version < 0:
            raise InvalidArgument("version", "must be ≥ 0 (0: the current version)")
        current = self.store.models.current_version(tenant, model_id)  # it exists, and is the tenant's
        wanted = version or current
        cached = self._networks.get((model_id, wanted))
        if cached is not None:
            return wanted, *cached
        model = self.store.models.get(tenant, model_id)
        _, arrays = self.store.models.load_weights(tenant, model_id, wanted)
        try:
            spec = NetworkSpec.from_dict(model.spec)
            network = Network.from_state(spec, arrays)
        except InvalidArgument as exc:
            raise CannotAnswer(f"model {model_id} version {wanted} cannot be loaded: {exc}") from exc
        self._networks.put((model_id, wanted), spec, network)
        return wanted, spec, network

    # ------------------------------------------------------------------ checks

    def _check_architecture(self, spec: NetworkSpec) -> None:
        limits = self.limits
        if spec.layer_count > limits.max_layers:
            raise LimitExceeded("spec.layers", f"at most {limits.max_layers} layers, inner ones included")
        if spec.max_width > limits.max_units:
            raise LimitExceeded("spec.layers", f"at most {limits.max_units} units (or inputs) per layer")
        if spec.parameter_count > limits.max_parameters:
            raise LimitExceeded(
                "spec", f"{spec.parameter_count} parameters, the limit is {limits.max_parameters}"
            )

    @staticmethod
    def _check_inputs(X: np.ndarray, spec: NetworkSpec, field: str) -> None:
        if X.shape[1] != spec.input_dim:
            raise InvalidArgument(
                f"{field}.shape", f"has {X.shape[1]} columns, the model takes {spec.input_dim}"
            )
        check_in_range(X, spec.dtype, f"{field}.data")

    def _check_answer(self, size: int, what: str) -> None:
        """An answer grpc could not send is refused before it is computed."""
        if size > self.settings.max_message_bytes:
            raise LimitExceeded(
                "inputs",
                f"the answer to {what} would be {format_bytes(size)}, past this server's "
                f"max_message_mb ({self.settings.max_message_mb} MiB); ask for fewer rows at a time",
            )
