"""The inference use cases: Predict and GetGradients on a version's built network, kept in a
bounded cache. Which version is current is read from the database on every call; versions never
change, so a cached network is never stale."""

from __future__ import annotations

import numpy as np

from gradwire.engine import LOSSES, InvalidArgument, Network, NetworkSpec, check_gradients
from gradwire.engine.data import as_targets, check_in_range
from gradwire.engine.memory import format_bytes
from gradwire.storage import Store
from gradwire.v1.answers import Gradients, Prediction

from ..core.errors import CannotAnswer, LimitExceeded
from ..core.settings import Settings
from .cache import NetworkCache
from .memory import answer_bytes, as_float64, gradients_bytes, predict_bytes
from .runs import check_memory


def is_classifier(spec: NetworkSpec) -> bool:
    return LOSSES[spec.loss].classifier


def labels(spec: NetworkSpec, outputs: np.ndarray) -> np.ndarray | None:
    """Class labels of a classifier's outputs, by its loss's rule; None for a regressor."""
    labels = LOSSES[spec.loss].labels
    return None if labels is None else labels(outputs)


class Inference:
    """Answers computed from a model's weights: outputs, labels, gradients."""

    def __init__(self, store: Store, settings: Settings, networks: NetworkCache) -> None:
        self.store, self.settings, self.limits = store, settings, settings.limits
        self._networks = networks

    def predict(self, tenant: str, model_id: str, X: np.ndarray, version: int = 0) -> Prediction:
        version, spec, network = self._network(tenant, model_id, version)
        self._check_inputs(X, spec, "inputs")
        self._check_answer(answer_bytes(spec, len(X)), f"Predict of {len(X)} rows")
        check_memory(predict_bytes(spec, len(X)), self.limits, "inputs", f"Predict of {len(X)} rows")
        outputs = network.predict(X)
        return Prediction(outputs, labels(spec, outputs), version)

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
