"""Minibatch training: epochs, stopping rules, history, and the best weights.

:class:`Trainer` owns everything a run changes besides the weights (optimiser, schedule, shuffle
generator, epoch counter, best-so-far, history) and can export and import all of it
(:mod:`.state`), so training resumes exactly. :func:`fit` is the one-call form: it trains and
leaves the best weights in the network.

Per minibatch: forward in training mode, loss, backward, batch-norm averages, gradient norms
(per layer and global), clipping, optimiser step, ``w ← w − u``. Per epoch: validation, history
record, schedule, best-so-far, stopping rules, callback.

A network with batch norm never trains on a one-row batch (its own mean: ``x̂ = 0``, and a variance
of 0 pulled into the running average): a one-row remainder joins the epoch's previous batch
(:func:`~.data.batch_bounds`), and a single training row or ``batch_size = 1`` is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import TrainConfig
from .data import (
    as_features,
    as_targets,
    batch_bounds,
    batch_groups,
    batches_per_group,
    check_in_range,
    class_labels,
    holdout_split,
)
from .errors import InvalidArgument, require
from .metrics import METRICS
from .network import Network
from .optimizers import OptimizerState, make_optimizer
from .schedules import make_schedule

Array = np.ndarray

SPLIT_STREAM = 1
"""Second word of the seed of the hold-out split's generator, apart from the shuffle's."""

FOLD_STEPS = 256
"""Steps whose squared gradient and update norms are kept before they are summed."""

STOP_REASONS = (
    "max_epochs",  # ran the epochs asked for
    "loss_threshold",  # the training loss reached loss_threshold
    "early_stopping",  # the monitored loss did not improve for `patience` epochs
    "callback",  # the per-epoch callback asked to stop
    "stop_requested",  # should_stop() was true before a minibatch
    "non_finite",  # a loss, gradient or weight was NaN or infinite; that step was undone
)


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did. Norms and ratios are per parameterised layer.

    ``grad_norms[layer]`` is the mean over the epoch's minibatches of ``‖∂L/∂θ_layer‖₂`` (before
    clipping); ``update_ratios[layer]`` is the mean step ``‖u_layer‖₂`` over ``‖θ_layer‖₂`` at the
    end of the epoch, the relative size of a step. Both shrink towards zero in the early layers
    of a network whose gradients vanish.
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    metric_name: str
    train_metric: float
    val_metric: float | None
    learning_rate: float
    grad_norms: dict[str, float]
    update_ratios: dict[str, float]
    elapsed: float
    samples: int


@dataclass
class Best:
    """The best epoch so far by the monitored loss, with copies of its weights and of the
    optimiser's state at that moment: the two belong together (moments and step count match
    those exact weights), so a later run may continue from both."""

    loss: float
    epoch: int
    arrays: dict[str, Array]
    optimizer: OptimizerState
    bad_epochs: int = 0


@dataclass(frozen=True)
class FitResult:
    """The outcome of a training call; ``best_weights`` is a state of :meth:`Network.state_arrays`."""

    stop_reason: str
    best_epoch: int
    best_loss: float
    best_weights: dict[str, Array]
    history: list[EpochRecord] = field(repr=False)
    epochs_run: int = 0


Callback = Callable[[EpochRecord], bool | None]
"""Called after every epoch, the one that triggers a stop included; returning ``True`` stops
training."""


class _EpochStats:
    """Running sums over an epoch's minibatches; norms are per parameterised layer.

    A step's squared norms are kept as they come and folded into the sums of their square roots
    :data:`FOLD_STEPS` steps at a time, by one NumPy call rather than Python per step.
    """

    def __init__(self, n_layers: int, metric_name: str, learning_rate: float) -> None:
        self.learning_rate = learning_rate
        self.n_layers = n_layers
        self.loss_sum = 0.0
        self.samples = 0
        self.steps = 0
        self.norm_sums = np.zeros(2 * n_layers)  # Σ ‖∂θ‖ per layer, then Σ ‖u‖ per layer
        self.pending: list[list[float]] = []  # squared norms not yet in norm_sums
        self.metric = METRICS[metric_name]()

    def add(self, loss: float, rows: int, grad_sq: list[float], update_sq: list[float]) -> None:
        self.loss_sum += loss * rows
        self.samples += rows
        self.steps += 1
        self.pending.append(grad_sq + update_sq)
        if len(self.pending) == FOLD_STEPS:
            self.fold()

    def fold(self) -> None:
        if self.pending:
            self.norm_sums += np.sqrt(self.pending).sum(axis=0)
            self.pending.clear()

    def mean_norms(self) -> tuple[list[float], list[float]]:
        """The epoch's mean gradient norm and mean update norm, per layer."""
        self.fold()
        means = (self.norm_sums / max(self.steps, 1)).tolist()
        return means[: self.n_layers], means[self.n_layers :]


class Trainer:
    """Trains ``network`` in place under ``config``; call :meth:`fit` once or many times."""

    def __init__(self, network: Network, config: TrainConfig) -> None:
        self.network = network
        self.config = config
        self.optimizer = make_optimizer(config.optimizer, network.flat, self._decay_mask())
        self.schedule = make_schedule(config.schedule, config.optimizer.learning_rate)
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0
        self.best = self._snapshot(math.inf)
        self.history: list[EpochRecord] = []
        self.grad_flat = np.empty_like(network.flat)
        self.grad_views = network.gradient_views(self.grad_flat)
        self.layer_paths = [path for path, _ in network.layer_segments]
        self.segments = [segment for _, segment in network.layer_segments]
        self.grad_segments = [self.grad_flat[segment] for segment in self.segments]
        spec = network.spec
        self.batches_per_group = batches_per_group(
            spec.input_dim, spec.output_dim, network.dtype.itemsize, config.batch_size
        )

    def _decay_mask(self) -> Array | None:
        """1 on the entries of dense weight matrices, 0 on biases and batch-norm parameters."""
        if not self.config.optimizer.weight_decay:
            return None
        mask = np.zeros_like(self.network.flat)
        for name, view in zip(self.network.param_names, self.network.unflatten(mask), strict=True):
            view[...] = name.endswith(".W")
        return mask

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        X: Array,
        Y: Array,
        *,
        epochs: int | None = None,
        validation_data: tuple[Array, Array] | None = None,
        callback: Callback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitResult:
        """Train for up to ``epochs`` more epochs (default ``config.epochs``); see :class:`TrainConfig`.

        ``X`` is ``(n, input_dim)`` and ``Y`` ``(n, output_dim)`` (or ``(n,)`` for one output), in
        any real dtype: minibatches are converted to the network's dtype as they are gathered.
        """
        spec = self.network.spec
        X = as_features(X, spec.input_dim)
        Y = as_targets(Y, len(X), spec.output_dim)
        if len(X) == 0:
            raise InvalidArgument("X", "has no rows")
        self._check_ranges(X, Y, validation_data)
        train_rows, validation = self._split(X, Y, validation_data)
        self._check_batch_rows(len(X) if train_rows is None else len(train_rows))
        start, started = self.epoch, time.perf_counter()
        budget = self.config.epochs if epochs is None else epochs
        reason = "max_epochs"
        while self.epoch < start + budget:
            # An overflow is caught where it matters (a non-finite loss, gradient or weight
            # ends training with "non_finite"); NumPy's warning about it would only be noise.
            with np.errstate(over="ignore", invalid="ignore"):
                stats = self._run_epoch(X, Y, train_rows, should_stop)
            if isinstance(stats, str):
                reason = stats
                break
            record = self._close_epoch(stats, validation, time.perf_counter() - started)
            reason = self._stop_reason(record, callback) or reason
            if reason != "max_epochs":
                break
        return FitResult(
            reason,
            self.best.epoch,
            self.best.loss,
            {k: v.copy() for k, v in self.best.arrays.items()},
            list(self.history),
            self.epoch - start,
        )

    def _split(
        self, X: Array, Y: Array, validation_data: tuple[Array, Array] | None
    ) -> tuple[Array | None, tuple[Array, Array, Array | None] | None]:
        """Training rows (``None``: all) and the validation set as ``(X, Y, rows)``."""
        spec = self.network.spec
        if validation_data is not None:
            Xv = as_features(validation_data[0], spec.input_dim, "validation_data.X")
            Yv = as_targets(validation_data[1], len(Xv), spec.output_dim, "validation_data.Y")
            return None, (Xv, Yv, None)
        if not self.config.validation_fraction:
            return None, None
        rng = np.random.default_rng((self.config.seed, SPLIT_STREAM))
        strata = class_labels(Y) if self.config.stratify and self.network.loss.classifier else None
        train, val = holdout_split(len(X), self.config.validation_fraction, rng, strata)
        return train, (X, Y, val)

    def _check_ranges(self, X: Array, Y: Array, validation_data: tuple[Array, Array] | None) -> None:
        """Data the network's dtype can hold (minibatches are cast to it as they are gathered)."""
        arrays = {"X": X, "Y": Y}
        if validation_data is not None:
            arrays |= {"validation_data[0]": validation_data[0], "validation_data[1]": validation_data[1]}
        for name, array in arrays.items():
            check_in_range(np.asarray(array), self.network.dtype, name)

    def _check_batch_rows(self, train_rows: int) -> None:
        """Refuse what would force a batch smaller than the network's ``min_training_rows`` (2 with
        batch norm, else 1, which every call meets)."""
        need = self.network.min_training_rows
        why = "a network with batch normalisation needs"
        require(self.config.batch_size >= need, "batch_size", f"{why} batches of {need} rows or more")
        require(train_rows >= need, "X", f"{why} {need} training rows or more, not {train_rows}")

    def _run_epoch(
        self, X: Array, Y: Array, rows: Array | None, should_stop: Callable[[], bool] | None
    ) -> _EpochStats | str:
        """One pass over the training rows; a stop reason instead if it had to end early.

        Rows are gathered a group of consecutive minibatches at a time (about
        :data:`~.data.GATHER_BYTES`), in the shuffled order and cast to the network's dtype, and each
        step's outputs are kept beside them: one gather and one metric update serve the group.
        """
        net, cfg = self.network, self.config
        n = len(X) if rows is None else len(rows)
        order = (
            (self.rng.permutation(n) if rows is None else self.rng.permutation(rows)) if cfg.shuffle else rows
        )
        lr = self.schedule.rate(self.epoch)
        stats = _EpochStats(len(self.layer_paths), net.loss.metric, lr)
        bounds = batch_bounds(n, cfg.batch_size, net.min_training_rows)
        for group in batch_groups(bounds, self.batches_per_group):
            first, last = group[0][0], group[-1][1]
            take = slice(first, last) if order is None else order[first:last]
            stopped = self._run_group(X[take], Y[take], group, lr, stats, should_stop)
            if stopped:
                return stopped
        if not np.isfinite(net.flat).all():  # finite steps can still overflow the weights
            self._undo_to_best()
            return "non_finite"
        return stats

    def _run_group(
        self,
        X: Array,
        Y: Array,
        group: list[tuple[int, int]],
        lr: float,
        stats: _EpochStats,
        should_stop: Callable[[], bool] | None,
    ) -> str | None:
        """The minibatches of one group, whose rows are ``X``, ``Y``; a stop reason if one ended it.

        The rows are made C-contiguous in the network's dtype (a copy only where they are not):
        a product of a strided array may round differently from the same product of a packed one,
        and the weights must not depend on how the caller's array lies in memory.
        """
        dtype, first = self.network.dtype, group[0][0]
        xs, ys = np.ascontiguousarray(X, dtype), np.ascontiguousarray(Y, dtype)
        outputs = np.empty_like(ys)
        for begin, end in group:
            if should_stop is not None and should_stop():
                return "stop_requested"
            batch = slice(begin - first, end - first)
            if not self._step(xs[batch], ys[batch], lr, stats, outputs[batch]):
                self._undo_to_best()
                return "non_finite"
        stats.metric.update(outputs, ys)
        return None

    def _step(self, xb: Array, yb: Array, lr: float, stats: _EpochStats, outputs: Array) -> bool:
        """One minibatch update, its outputs copied to ``outputs``; ``False`` if the loss or a
        gradient was not finite."""
        net, g = self.network, self.grad_flat
        a, caches = net.forward(xb, training=True)
        loss, delta = net.output_error(a, caches, yb)
        if not math.isfinite(loss):
            return False
        net.backward(caches, delta, self.grad_views)
        grad_sq = [float(share.dot(share)) for share in self.grad_segments]
        total = sum(grad_sq)
        if not math.isfinite(total):
            return False
        net.commit(caches)
        clip, scale = self.config.clip_norm, 1.0
        if clip is not None and total > clip * clip:
            scale = clip / math.sqrt(total)
            g *= scale
        u = self.optimizer.step(net.flat, g, lr)
        net.flat -= u
        if self.optimizer.scales_gradient:  # u = ηg: ‖u‖² = η²‖g‖², without another pass
            step = lr * scale
            factor = step * step  # a product overflows to inf (a non-finite stop), where ** raises
            update_sq = [factor * sq for sq in grad_sq]
        else:
            update_sq = [float(share.dot(share)) for share in (u[s] for s in self.segments)]
        stats.add(loss, len(xb), grad_sq, update_sq)
        outputs[...] = a
        return True

    def _snapshot(self, loss: float) -> Best:
        """The current weights and optimiser state as the best so far, at loss ``loss``."""
        return Best(loss, self.epoch, self.network.state_arrays(), self.optimizer.snapshot())

    def rebase_best(self) -> None:
        """Start the best-so-far afresh from the current weights and optimiser state (after
        loading state from elsewhere, so that the epoch-0 fallback matches what was loaded)."""
        self.best = self._snapshot(math.inf)

    def _undo_to_best(self) -> None:
        """After a non-finite step: weights and optimiser state back to the best epoch's, which
        were finite together; the moments of the blow-up are dropped with it."""
        self.network.load_state_arrays(self.best.arrays)
        self.optimizer.restore(self.best.optimizer)

    def _close_epoch(
        self,
        stats: _EpochStats,
        validation: tuple[Array, Array, Array | None] | None,
        elapsed: float,
    ) -> EpochRecord:
        net = self.network
        val_loss = val_metric = None
        if validation is not None:
            val_loss, val_metric = net.evaluate(*validation)
        grad_norms, update_norms = stats.mean_norms()
        flat = net.flat
        weight_norms = [math.sqrt(float(np.vdot(flat[s], flat[s]))) for s in self.segments]
        ratios = [u / w if w else 0.0 for u, w in zip(update_norms, weight_norms, strict=True)]
        self.epoch += 1
        record = EpochRecord(
            epoch=self.epoch,
            train_loss=stats.loss_sum / max(stats.samples, 1),
            val_loss=val_loss,
            metric_name=net.loss.metric,
            train_metric=stats.metric.value(),
            val_metric=val_metric,
            learning_rate=stats.learning_rate,
            grad_norms=dict(zip(self.layer_paths, grad_norms, strict=True)),
            update_ratios=dict(zip(self.layer_paths, ratios, strict=True)),
            elapsed=elapsed,
            samples=stats.samples,
        )
        self.history.append(record)
        monitored = record.train_loss if val_loss is None else val_loss
        self.schedule.observe(monitored)
        self._track_best(monitored)
        return record

    def _track_best(self, monitored: float) -> None:
        best = self.best
        if monitored < best.loss - self.config.min_delta:
            self.best = self._snapshot(monitored)
        else:
            best.bad_epochs += 1

    def _stop_reason(self, record: EpochRecord, callback: Callback | None) -> str | None:
        """Why training stops after ``record``'s epoch, if it does. The callback hears every
        epoch, the one that triggers a stop too, so whoever records epochs misses none."""
        asked = callback is not None and bool(callback(record))
        return self.rule_stop(record.train_loss) or ("callback" if asked else None)

    def rule_stop(self, train_loss: float) -> str | None:
        """The stopping rule the last epoch (whose training loss was ``train_loss``) met, if any:
        ``loss_threshold`` or ``early_stopping``. Asked after each epoch; asked again by whoever
        restores a trainer whose state was saved in that epoch's callback, before going on."""
        cfg = self.config
        if cfg.loss_threshold is not None and train_loss <= cfg.loss_threshold:
            return "loss_threshold"
        if cfg.patience is not None and self.best.bad_epochs >= cfg.patience:
            return "early_stopping"
        return None


def fit(
    network: Network,
    X: Array,
    Y: Array,
    config: TrainConfig | None = None,
    *,
    validation_data: tuple[Array, Array] | None = None,
    callback: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``network`` on ``(X, Y)`` and leave in it the best weights (unless ``restore_best``
    is off); returns the stop reason, best epoch and per-epoch history."""
    config = config or TrainConfig()
    result = Trainer(network, config).fit(
        X, Y, validation_data=validation_data, callback=callback, should_stop=should_stop
    )
    if config.restore_best:
        network.load_state_arrays(result.best_weights)
    return result
