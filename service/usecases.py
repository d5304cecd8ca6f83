"""The service's use cases: the engine and the store wired together, with no gRPC in sight.

:class:`Gradwire` is what the servicer calls. It keeps three pieces of memory:

* the current version of each model it has seen (this process is the only writer of versions
  while it runs), so Predict needs no database round trip;
* a bounded LRU of built networks keyed by ``(model, version)``: a new version is a new key,
  so stale weights are never served;
* the set of models training now (one Train per model at a time) and their stop events.

Training runs in a bounded pool of worker threads, off the RPC threads; NumPy releases the GIL
in its kernels, so Predict and GetGradients keep answering while models train.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from gradwire.engine import (
    EpochRecord,
    InvalidArgument,
    Network,
    NetworkSpec,
    TrainConfig,
    Trainer,
    TrainingState,
    carry_optimizer_state,
    check_gradients,
    export_state,
)
from gradwire.engine.data import as_targets
from gradwire.engine.spec import Residual
from gradwire.storage import Checkpoint, ModelRecord, RunRecord, Store
from gradwire.v1.codec import Gradients, Prediction

from .convert import record_to_dict
from .errors import CannotAnswer, LimitExceeded, ModelBusy
from .settings import Settings

log = logging.getLogger(__name__)

CLASSIFIER_LOSSES = ("softmax_crossentropy", "binary_crossentropy")


@dataclass(frozen=True)
class TrainData:
    X: np.ndarray
    Y: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None = None
    transfer_seconds: float = 0.0


@dataclass(frozen=True)
class Progress:
    record: dict[str, Any]
    epochs_planned: int


@dataclass(frozen=True)
class Outcome:
    run_id: str
    stop_reason: str
    best_epoch: int
    best_loss: float
    version: int
    epochs_run: int
    transfer_seconds: float
    train_seconds: float


def is_classifier(spec: NetworkSpec) -> bool:
    return spec.loss in CLASSIFIER_LOSSES


def _labels(spec: NetworkSpec, outputs: np.ndarray) -> np.ndarray | None:
    if spec.loss == "softmax_crossentropy":
        return outputs.argmax(axis=1).astype(np.int64)
    if spec.loss == "binary_crossentropy":
        return (outputs > 0.5).astype(np.int64)
    return None


def _count_layers(layers: Any) -> int:
    return sum(1 + (_count_layers(layer.layers) if isinstance(layer, Residual) else 0) for layer in layers)


class EpochWriter:
    """Commits each epoch's history and checkpoint, then sends its progress, on its own thread.

    The next epoch computes while the last one is written (the state is a copy), yet every
    progress event still follows its commit, and the epochs commit in order. Leaving the ``with``
    block waits for the writes; a failed write stops training at the next epoch and is raised.
    """

    def __init__(self, store: Store, run: RunRecord, events: queue.Queue[Any], epochs_planned: int) -> None:
        self.store, self.run, self.events, self.epochs_planned = store, run, events, epochs_planned
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gradwire-commit")
        self.pending: list[Future[None]] = []

    def submit(self, record: EpochRecord, state: TrainingState) -> bool:
        for done in self.pending:
            if done.done() and done.exception() is not None:
                raise done.exception()  # type: ignore[misc]
        self.pending.append(self.pool.submit(self._write, record_to_dict(record), state))
        return False

    def _write(self, record: dict[str, Any], state: TrainingState) -> None:
        checkpoint = Checkpoint(self.run.id, int(record["epoch"]), state.arrays, state.meta)
        self.store.record_epoch(self.run.id, self.run.model_id, record, checkpoint)
        self.events.put(Progress(record, self.epochs_planned))

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        for done in self.pending:
            done.result()


class Gradwire:
    """The application: every RPC's behaviour, callable without a server."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings, self.limits = store, settings, settings.limits
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._current: dict[str, int] = {}
        self._networks: OrderedDict[tuple[str, int], tuple[NetworkSpec, Network]] = OrderedDict()
        self._training: dict[str, threading.Event] = {}
        self._pool = ThreadPoolExecutor(settings.train_workers, thread_name_prefix="gradwire-train")

    def close(self) -> None:
        """Stop every training within a minibatch and wait for them to commit."""
        with self._lock:
            for stop in self._training.values():
                stop.set()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ models

    def create_model(self, name: str, spec: NetworkSpec) -> ModelRecord:
        if len(name) > 200:
            raise InvalidArgument("name", "must be at most 200 characters")
        self._check_architecture(spec)
        network = Network(spec)
        model = self.store.create_model(name, spec.to_dict(), network.state_arrays(), network.flat.size)
        with self._lock:
            self._current[model.id] = model.version
        log.info("model created id=%s params=%d", model.id, model.parameter_count)
        return model

    def get_model(self, model_id: str) -> ModelRecord:
        return self.store.get_model(model_id)

    def is_training(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._training

    def list_models(self, page_size: int, page_token: str) -> tuple[list[ModelRecord], str]:
        if not 0 <= page_size <= 500:
            raise InvalidArgument("page_size", "must lie in [0, 500] (0: the default, 50)")
        size = page_size or 50
        models = self.store.list_models(size, _decode_token(page_token) if page_token else None)
        last = models[-1] if len(models) == size else None
        return models, _encode_token(last.created_at, last.id) if last else ""

    def delete_model(self, model_id: str) -> None:
        with self._lock:
            if model_id in self._training:
                raise ModelBusy(f"model {model_id} is training; cancel the Train call first")
            self._training[model_id] = threading.Event()  # no Train may start while it goes
        try:
            self.store.delete_model(model_id)
        finally:
            self._release(model_id)
        with self._lock:
            self._current.pop(model_id, None)
            for key in [k for k in self._networks if k[0] == model_id]:
                del self._networks[key]

    def history(self, model_id: str) -> list[RunRecord]:
        return self.store.history(model_id)

    # ------------------------------------------------------------------ inference

    def predict(self, model_id: str, X: np.ndarray, version: int = 0) -> Prediction:
        version, spec, network = self._network(model_id, version)
        self._check_width(X, spec.input_dim, "inputs")
        outputs = network.predict(X)
        return Prediction(outputs, _labels(spec, outputs), version)

    def gradients(
        self,
        model_id: str,
        X: np.ndarray,
        Y: np.ndarray,
        version: int = 0,
        numerical_check: bool = False,
        inference_mode: bool = False,
    ) -> Gradients:
        version, spec, network = self._network(model_id, version)
        self._check_width(X, spec.input_dim, "inputs")
        Y = _targets(Y, len(X), spec.output_dim, "targets")
        loss, grads = network.loss_and_gradients(X, Y, training=not inference_mode)
        errors = self._numerical_check(spec, network, X, Y, inference_mode) if numerical_check else {}
        return Gradients(loss, grads, version, errors)

    def _numerical_check(
        self, spec: NetworkSpec, network: Network, X: np.ndarray, Y: np.ndarray, inference_mode: bool
    ) -> dict[str, float]:
        """Central differences in float64, worst relative error per layer."""
        if network.flat.size > self.limits.max_gradcheck_parameters:
            raise LimitExceeded(
                "numerical_check",
                f"needs at most {self.limits.max_gradcheck_parameters} "
                f"parameters, the model has {network.flat.size}",
            )
        if len(X) > self.limits.max_gradcheck_rows:
            raise LimitExceeded(
                "inputs", f"numerical_check takes at most {self.limits.max_gradcheck_rows} rows"
            )
        wide = NetworkSpec.from_dict({**spec.to_dict(), "dtype": "float64"})
        report = check_gradients(
            Network.from_state(wide, network.state_arrays()), X, Y, training=not inference_mode
        )
        worst: dict[str, float] = {}
        for name, error in report.errors.items():
            layer = name.rsplit(".", 1)[0]
            worst[layer] = max(worst.get(layer, 0.0), error)
        return worst

    def _network(self, model_id: str, version: int) -> tuple[int, NetworkSpec, Network]:
        """The built network of a version (0: current), from the cache or the store."""
        if version < 0:
            raise InvalidArgument("version", "must be ≥ 0 (0: the current version)")
        wanted = version or self._current_version(model_id)
        with self._lock:
            cached = self._networks.get((model_id, wanted))
            if cached is not None:
                self._networks.move_to_end((model_id, wanted))
                return wanted, *cached
        model = self.store.get_model(model_id)
        _, arrays = self.store.load_weights(model_id, wanted)
        try:
            spec = NetworkSpec.from_dict(model.spec)
            network = Network.from_state(spec, arrays)
        except InvalidArgument as exc:
            raise CannotAnswer(f"model {model_id} version {wanted} cannot be loaded: {exc}") from exc
        with self._lock:
            self._networks[(model_id, wanted)] = (spec, network)
            while len(self._networks) > self.settings.model_cache_size:
                self._networks.popitem(last=False)
        return wanted, spec, network

    def _current_version(self, model_id: str) -> int:
        with self._lock:
            known = self._current.get(model_id)
        if known is not None:
            return known
        version = self.store.get_model(model_id).version
        with self._lock:
            return self._current.setdefault(model_id, version)

    # ------------------------------------------------------------------ training

    def train(
        self, model_id: str, config: TrainConfig, data: TrainData, stop: threading.Event
    ) -> Iterator[Progress | Outcome]:
        """Progress per epoch, then the outcome. Setting ``stop`` ends training within a minibatch."""
        model = self.store.get_model(model_id)
        spec = NetworkSpec.from_dict(model.spec)
        self._check_training(config, spec, data)
        events: queue.Queue[Progress | Outcome | BaseException] = queue.Queue()
        self._claim(model_id, stop)
        try:
            self._pool.submit(self._run, model, spec, config, data, stop, events)
        except BaseException:
            self._release(model_id)
            raise
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Outcome):
                return

    def _claim(self, model_id: str, stop: threading.Event) -> None:
        with self._lock:
            if model_id in self._training:
                raise ModelBusy(f"model {model_id} is already training")
            if len(self._training) >= self.settings.train_workers + self.settings.max_queued_trainings:
                raise LimitExceeded("model_id", "too many trainings running and queued; try again later")
            self._training[model_id] = stop

    def _release(self, model_id: str) -> None:
        with self._lock:
            self._training.pop(model_id, None)
            self._idle.notify_all()

    def wait_idle(self, model_id: str, timeout: float | None = None) -> bool:
        """Block until ``model_id`` is not training (its last run committed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: model_id not in self._training, timeout)

    def _run(
        self,
        model: ModelRecord,
        spec: NetworkSpec,
        config: TrainConfig,
        data: TrainData,
        stop: threading.Event,
        events: queue.Queue[Any],
    ) -> None:
        """The training job, on a pool thread: every epoch commits before its progress is sent.

        The model is released before the outcome is sent, so a client that reads the result can
        train the model again at once.
        """
        run: RunRecord | None = None
        outcome: Outcome | Exception
        try:
            _, weights = self.store.load_weights(model.id)
            trainer = Trainer(Network.from_state(spec, weights), config)
            checkpoint = self.store.load_checkpoint(model.id)
            if checkpoint is not None:
                carry_optimizer_state(trainer, TrainingState(checkpoint.arrays, checkpoint.meta))
            run = self.store.start_run(model.id, config.to_dict(), rows=len(data.X))
            outcome = self._fit(trainer, run, data, stop, events)
        except Exception as exc:
            log.exception("training failed model=%s", model.id)
            if run is not None:
                self.store.finish_run(run.id, "failed", "error", 0, None)
            outcome = exc
        finally:
            self._release(model.id)
        events.put(outcome)

    def _fit(
        self,
        trainer: Trainer,
        run: RunRecord,
        data: TrainData,
        stop: threading.Event,
        events: queue.Queue[Any],
    ) -> Outcome:
        config = trainer.config
        started = time.perf_counter()
        with EpochWriter(self.store, run, events, config.epochs) as writer:
            result = trainer.fit(
                data.X,
                data.Y,
                validation_data=data.validation,
                callback=lambda record: writer.submit(record, export_state(trainer, with_history=False)),
                should_stop=stop.is_set,
            )
        cancelled = result.stop_reason == "stop_requested"
        weights = None
        if result.epochs_run:
            weights = result.best_weights if config.restore_best else trainer.network.state_arrays()
        done = self.store.finish_run(
            run.id,
            "cancelled" if cancelled else "completed",
            "cancelled" if cancelled else result.stop_reason,
            result.best_epoch,
            weights,
        )
        if done.version is not None:
            with self._lock:
                self._current[run.model_id] = done.version
        log.info(
            "training finished model=%s run=%s reason=%s epochs=%d version=%s",
            run.model_id,
            run.id,
            done.stop_reason,
            result.epochs_run,
            done.version,
        )
        return Outcome(
            run.id,
            done.stop_reason,
            result.best_epoch,
            result.best_loss,
            done.version or run.base_version,
            result.epochs_run,
            data.transfer_seconds,
            time.perf_counter() - started,
        )

    # ------------------------------------------------------------------ checks

    def _check_architecture(self, spec: NetworkSpec) -> None:
        limits = self.limits
        if _count_layers(spec.layers) > limits.max_layers:
            raise LimitExceeded("spec.layers", f"at most {limits.max_layers} layers")
        widths = [spec.input_dim, *(getattr(layer, "units", 0) for layer in spec.layers)]
        if max(widths) > limits.max_units:
            raise LimitExceeded("spec.layers", f"at most {limits.max_units} units (or inputs) per layer")
        params = _parameter_count(spec)
        if params > limits.max_parameters:
            raise LimitExceeded("spec", f"{params} parameters, the limit is {limits.max_parameters}")

    def _check_training(self, config: TrainConfig, spec: NetworkSpec, data: TrainData) -> None:
        if config.epochs > self.limits.max_epochs:
            raise LimitExceeded("options.epochs", f"at most {self.limits.max_epochs}")
        if config.batch_size > self.limits.max_batch_size:
            raise LimitExceeded("options.batch_size", f"at most {self.limits.max_batch_size}")
        self._check_width(data.X, spec.input_dim, "inputs")
        _targets(data.Y, len(data.X), spec.output_dim, "targets")
        if len(data.X) == 0:
            raise InvalidArgument("inputs.shape", "has no rows")
        if data.validation is not None:
            self._check_width(data.validation[0], spec.input_dim, "validation_inputs")
            _targets(data.validation[1], len(data.validation[0]), spec.output_dim, "validation_targets")

    @staticmethod
    def _check_width(X: np.ndarray, width: int, field: str) -> None:
        if X.shape[1] != width:
            raise InvalidArgument(f"{field}.shape", f"has {X.shape[1]} columns, the model takes {width}")


def _targets(Y: np.ndarray, rows: int, width: int, field: str) -> np.ndarray:
    return as_targets(Y, rows, width, field=f"{field}.shape")


def _parameter_count(spec: NetworkSpec) -> int:
    """Weights, biases and batch-norm scales and shifts, counted from the spec alone."""

    def walk(layers: Any, width: int) -> tuple[int, int]:
        count = 0
        for layer in layers:
            if isinstance(layer, Residual):
                inner, _ = walk(layer.layers, width)
                count += inner
            elif hasattr(layer, "units"):
                count += width * layer.units + layer.units
                width = layer.units
            else:
                count += 2 * width
        return count, width

    return walk(spec.layers, spec.input_dim)[0]


def _encode_token(created_at: datetime, model_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at.isoformat(), model_id]).encode()).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        created, model_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(created), str(model_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument("page_token", "not a token this service gave out") from None
