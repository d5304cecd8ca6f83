"""How much memory a pass of the engine needs at its worst moment, from the spec and the row
counts alone, so that a caller can refuse work that will not fit before any of it is done.

Every figure is an upper bound read off the code it describes, not a fit to measurements
(``tests/engine/test_memory.py`` checks them against tracemalloc's peak, which NumPy's
allocations report to). Widths count *values per row*, each an element of the network's dtype.
The figures round up: a boolean mask counts as a whole array, inputs and targets count as
converted copies even when they came in the network's dtype, and every figure adds
:data:`ALLOWANCE` for what is not an array.

What the passes keep alive
--------------------------
* :meth:`Network.forward` gathers every layer's cache until the pass ends, so a forward pass
  holds the outputs of all layers at once (batch norm's ``x̂`` too; a cross-entropy's output
  layer also its logits), plus the temporaries of the layer it is in, its own and its
  activation's (:data:`FORWARD_TEMPORARIES`). :meth:`Network.predict` makes its whole output
  first, then fills it ``PREDICT_CHUNK`` rows at a time.
* :meth:`Network.backward` runs with every cache still alive: on top of them, the gradient
  arriving at a layer, its activation's temporaries (:data:`BACKWARD_TEMPORARIES`) and the
  gradient it passes on; a residual block also keeps its skip gradient while its inner layers
  run. The gradients themselves are one parameter-sized buffer.
* :class:`Trainer` adds, besides the data it is given: index arrays over the rows (split,
  shuffle), the gathered group of minibatches and their outputs, the gradient buffer, the
  optimiser's slots and a step's temporaries, and the best epoch's weights and slots, twice for
  the moment a new best replaces the old; at each epoch's end, one validation chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import TrainConfig
from .data import CHECK_CHUNK, batches_per_group
from .losses import FUSED_DELTAS, LOGIT_LOSSES, LOSSES
from .network import PREDICT_CHUNK
from .optimizers import OPTIMIZERS
from .spec import BatchNorm, Dense, LayerSpec, NetworkSpec, Residual

FORWARD_TEMPORARIES: dict[str, int] = {
    "identity": 0,
    "sigmoid": 0,  # in place
    "tanh": 0,
    "relu": 0,
    "leaky_relu": 3,  # np.where's mask and z·slope, then its result, beside z
    "softmax": 1,  # z − max, beside z
}
"""Arrays of a layer's width an activation's forward makes beside its input."""

BACKWARD_TEMPORARIES: dict[str, int] = {
    "identity": 0,
    "sigmoid": 2,  # 1 − a, then a(1 − a)
    "tanh": 2,  # a², then 1 − a²
    "relu": 1,  # the mask a > 0
    "leaky_relu": 3,  # the mask, the slopes (float64), their cast to the dtype
    "softmax": 0,  # one sum per row
}
"""Arrays of a layer's width an activation's backward makes beside the gradient it scales."""

LOSS_TEMPORARIES: dict[str, int] = {
    "squared_error": 1,  # y − a (a − y for the gradient)
    "binary_crossentropy": 4,  # softplus of the logits, and three terms of its sum
    "softmax_crossentropy": 2,  # the gaps to the row maximum, and their exponentials
}
"""Arrays of the output's width the loss's value (or its gradient) makes."""

METRIC_TEMPORARIES: dict[str, int] = {
    "r2": 2,  # y − a and y − mean
    "binary_accuracy": 3,  # two masks and their agreement
    "accuracy": 0,  # one arg-max per row
}
"""Arrays of the output's width a training metric's update makes."""

BATCHNORM_FORWARD = 3
"""``x − μ`` and ``x̂``, then ``γx̂`` and ``+ β`` beside the cached ``x̂``."""
BATCHNORM_BACKWARD = 4
"""``∂x̂ = dy·γ``, its centring, ``x̂·(…)`` and their difference, beside the gradient ``dy``."""

OPTIMIZER_TEMPORARIES: dict[str, int] = {
    "sgd": 0,  # in place
    "momentum": 0,
    "nesterov": 1,  # μv
    "adam": 2,  # (1 − β₁)g, then the update m·step it returns
    "adamw": 2,
    "rmsprop": 2,  # g², then (1 − ρ)g²; √s
}
"""Parameter-sized arrays one optimiser step makes."""
WEIGHT_DECAY_TEMPORARIES = 4
"""With weight decay: the decay mask, and ``w·mask``, ``λ(w·mask)`` and (AdamW) their sum with ``u``."""

INDEX_BYTES_PER_ROW = 32
"""Training's index arrays: the hold-out split's (train and validation rows, the class of each
row for stratifying) and the epoch's shuffled order, int64 each."""
GATHERED_VALUE_BYTES = 8
"""A value gathered from the data for a minibatch, before its conversion to the network's dtype
(8: float64 data; float32 data takes 4)."""
ALLOWANCE = 1 << 20
"""Bytes added to every figure for what is not an array of the pass: NumPy's ufunc buffers
(8,192 elements an operand), the Python objects of the pass, index scalars."""


@dataclass
class _Tally:
    """The values per row alive during a pass: ``kept`` until it ends, ``peak`` at the worst moment."""

    kept: int = 0
    peak: int = 0

    def need(self, temporary: int) -> None:
        """``temporary`` values live beside what is kept, for a moment."""
        self.peak = max(self.peak, self.kept + temporary)

    def keep(self, values: int) -> None:
        self.kept += values
        self.peak = max(self.peak, self.kept)


# ----------------------------------------------------------------------------- forward


def _dense_forward(layer: Dense, width: int, tally: _Tally) -> int:
    # z = xW + b, activated in place or beside z; the output is cached
    tally.need(layer.units * (1 + FORWARD_TEMPORARIES[layer.activation]))
    tally.keep(layer.units)
    return layer.units


def _batchnorm_forward(layer: BatchNorm, width: int, tally: _Tally) -> int:
    tally.need(width * (BATCHNORM_FORWARD + FORWARD_TEMPORARIES[layer.activation]))
    tally.keep(2 * width)  # x̂ and the output
    return width


def _residual_forward(layer: Residual, width: int, tally: _Tally) -> int:
    _forward(layer.layers, width, tally)
    tally.need(width * (1 + FORWARD_TEMPORARIES[layer.activation]))  # x + f(x)
    tally.keep(width)
    return width


FORWARD: dict[type, Callable[[Any, int, _Tally], int]] = {
    Dense: _dense_forward,
    BatchNorm: _batchnorm_forward,
    Residual: _residual_forward,
}


def _forward(layers: Sequence[LayerSpec], width: int, tally: _Tally) -> int:
    for layer in layers:
        width = FORWARD[type(layer)](layer, width, tally)
    return width


def _forward_pass(spec: NetworkSpec, tally: _Tally) -> None:
    """Inputs (converted to the network's dtype) through every layer, caches kept."""
    tally.keep(spec.input_dim)
    if (spec.output_activation, spec.loss) in LOGIT_LOSSES:
        tally.keep(spec.output_dim)  # the output layer's logits: kept, and activated on a copy
    _forward(spec.layers, spec.input_dim, tally)


# ----------------------------------------------------------------------------- backward


def _dense_backward(layer: Dense, width: int, tally: _Tally, fused: bool) -> None:
    # Δ = g′ ⊙ grad in place (unless the loss gave Δ), then ΔWᵀ beside it
    scaling = 0 if fused else BACKWARD_TEMPORARIES[layer.activation] * layer.units
    tally.need(layer.units + max(scaling, width))


def _batchnorm_backward(layer: BatchNorm, width: int, tally: _Tally, fused: bool) -> None:
    scaling = BACKWARD_TEMPORARIES[layer.activation]
    tally.need(width * (1 + max(scaling, BATCHNORM_BACKWARD)))


def _residual_backward(layer: Residual, width: int, tally: _Tally, fused: bool) -> None:
    tally.need(width * (1 + BACKWARD_TEMPORARIES[layer.activation]))
    tally.kept += width  # the skip gradient, kept while the block runs on a copy
    _backward(layer.layers, width, tally)
    tally.kept -= width


BACKWARD: dict[type, Callable[[Any, int, _Tally, bool], None]] = {
    Dense: _dense_backward,
    BatchNorm: _batchnorm_backward,
    Residual: _residual_backward,
}


def _input_widths(layers: Sequence[LayerSpec], width: int) -> list[int]:
    widths = []
    for layer in layers:
        widths.append(width)
        width = layer.units if isinstance(layer, Dense) else width
    return widths


def _backward(layers: Sequence[LayerSpec], width: int, tally: _Tally, fused_last: bool = False) -> None:
    widths = _input_widths(layers, width)
    for i in reversed(range(len(layers))):
        layer = layers[i]
        BACKWARD[type(layer)](layer, widths[i], tally, fused_last and i == len(layers) - 1)


# ----------------------------------------------------------------------------- per row


def _forward_values(spec: NetworkSpec) -> int:
    """Values per row at the worst moment of an inference-mode forward pass."""
    tally = _Tally()
    _forward_pass(spec, tally)
    return tally.peak


def _gradient_values(spec: NetworkSpec) -> int:
    """Values per row at the worst moment of forward, loss and backward."""
    tally = _Tally()
    tally.keep(spec.output_dim)  # the targets, converted to the network's dtype
    _forward_pass(spec, tally)
    out = spec.output_dim
    tally.need(out * LOSS_TEMPORARIES[spec.loss])
    fused = (spec.output_activation, spec.loss) in FUSED_DELTAS
    tally.need(out * (1 + (0 if fused else LOSS_TEMPORARIES[spec.loss])))  # ∂L/∂a, or Δ itself
    _backward(spec.layers, spec.input_dim, tally, fused)
    return tally.peak


def _evaluate_values(spec: NetworkSpec) -> int:
    """Values per row at the worst moment of :meth:`Network.evaluate`: forward, loss, metric."""
    tally = _Tally()
    tally.keep(spec.output_dim)
    _forward_pass(spec, tally)
    scoring = max(LOSS_TEMPORARIES[spec.loss], METRIC_TEMPORARIES[LOSSES[spec.loss].metric])
    tally.need(spec.output_dim * scoring)
    return tally.peak


def _check_bytes(rows: int, width: int) -> int:
    """The mask of :func:`~.data.check_finite`, which checks ``CHECK_CHUNK`` rows at a time."""
    return min(rows, CHECK_CHUNK) * width


# ----------------------------------------------------------------------------- in bytes


def _itemsize(spec: NetworkSpec) -> int:
    return np.dtype(spec.dtype).itemsize


def parameter_bytes(spec: NetworkSpec) -> int:
    """One parameter-sized array: the weights, or their gradient."""
    return spec.parameter_count * _itemsize(spec)


def state_values(spec: NetworkSpec) -> int:
    """Parameters and buffers (batch norm's running mean and variance): what a snapshot copies."""
    batchnorm = sum(width for layer, width, _ in spec.walk() if isinstance(layer, BatchNorm))
    return spec.parameter_count + 2 * batchnorm


def inference_bytes(spec: NetworkSpec, rows: int) -> int:
    """:meth:`Network.predict` of ``rows`` rows: the whole output, and one chunk's forward pass."""
    chunk = min(rows, PREDICT_CHUNK)
    work = _itemsize(spec) * (rows * spec.output_dim + chunk * _forward_values(spec))
    return ALLOWANCE + work + _check_bytes(rows, spec.input_dim)


def gradient_bytes(spec: NetworkSpec, rows: int) -> int:
    """:meth:`Network.loss_and_gradients` on ``rows`` rows, in either mode: the whole batch's
    forward and backward passes, and the gradients."""
    work = _itemsize(spec) * rows * _gradient_values(spec) + parameter_bytes(spec)
    return ALLOWANCE + work + _check_bytes(rows, max(spec.input_dim, spec.output_dim))


def gradient_check_bytes(spec: NetworkSpec, rows: int) -> int:
    """:func:`~.gradcheck.check_gradients` on a network of ``spec``: the analytic and the
    numerical gradients, kept together, and one :meth:`Network.loss_and_gradients` at a time."""
    return 2 * parameter_bytes(spec) + gradient_bytes(spec, rows)


def network_bytes(spec: NetworkSpec) -> int:
    """Building a :class:`Network`: its initial weights, then the flat buffer they move into."""
    return 2 * state_values(spec) * _itemsize(spec)


def state_bytes(spec: NetworkSpec, optimizer: str) -> int:
    """One :func:`~.state.export_state` (what a checkpoint holds): weights and optimiser slots,
    now and at the best epoch, copied."""
    slots = len(OPTIMIZERS[optimizer].slots)
    return 2 * (state_values(spec) + slots * spec.parameter_count) * _itemsize(spec)


@dataclass(frozen=True)
class TrainingMemory:
    """The peak of :meth:`Trainer.fit` in bytes, by what each part grows with."""

    data: int
    """The data arrays (as the caller holds them), the index arrays over their rows, the check."""
    parameters: int
    """Weights, gradient, optimiser slots and a step's temporaries, best-epoch snapshots."""
    minibatch: int
    """A group of minibatches gathered with their outputs kept (:data:`~.data.GATHER_BYTES`), and
    one minibatch's forward, loss, backward and metric; grows with the batch size."""
    validation: int
    """One validation chunk at an epoch's end."""

    @property
    def total(self) -> int:
        return ALLOWANCE + self.data + self.parameters + max(self.minibatch, self.validation)


def training_bytes(
    spec: NetworkSpec, config: TrainConfig, rows: int, validation_rows: int = 0, data_bytes: int = 0
) -> TrainingMemory:
    """:meth:`Trainer.fit` on ``rows`` rows (a held-out fraction included) and ``validation_rows``
    rows of separate validation data; ``data_bytes`` is what those arrays take as given."""
    batch = min(config.batch_size + 1, rows)  # a one-row remainder may join the batch before it
    chunk = min(validation_rows or _held_out(spec, config, rows), PREDICT_CHUNK)
    itemsize, widest = _itemsize(spec), max(spec.input_dim, spec.output_dim)
    gathered = (spec.input_dim + spec.output_dim) * (GATHERED_VALUE_BYTES + itemsize)
    per_group = batches_per_group(spec.input_dim, spec.output_dim, itemsize, config.batch_size)
    group = min(per_group * config.batch_size + 1, rows)  # rows gathered at once, outputs kept
    kept = spec.output_dim * (1 + METRIC_TEMPORARIES[LOSSES[spec.loss].metric])  # outputs, metric
    return TrainingMemory(
        data=data_bytes + rows * INDEX_BYTES_PER_ROW + _check_bytes(rows + validation_rows, widest),
        parameters=_training_state_bytes(spec, config),
        minibatch=group * (gathered + itemsize * kept) + batch * itemsize * _gradient_values(spec),
        validation=chunk * (gathered + itemsize * _evaluate_values(spec)),
    )


def _held_out(spec: NetworkSpec, config: TrainConfig, rows: int) -> int:
    """The most rows :func:`~.data.holdout_split` holds out: each class (at most one per output,
    or two for a single output) rounds its share on its own and gives at least one."""
    if not config.validation_fraction:
        return 0
    return round(rows * config.validation_fraction) + max(spec.output_dim, 2)


def _training_state_bytes(spec: NetworkSpec, config: TrainConfig) -> int:
    """Weights, gradient, slots and a step's temporaries; the best epoch's weights and slots twice."""
    name, decay = config.optimizer.name, config.optimizer.weight_decay
    slots = len(OPTIMIZERS[name].slots)
    temporaries = OPTIMIZER_TEMPORARIES[name] + (WEIGHT_DECAY_TEMPORARIES if decay else 0)
    snapshot = state_values(spec) + slots * spec.parameter_count
    step = (2 + slots + temporaries) * spec.parameter_count
    return _itemsize(spec) * (step + 2 * snapshot)


# ----------------------------------------------------------------------------- words

UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def format_bytes(n: int) -> str:
    """``n`` bytes in words: ``2.1 GiB``, ``512.0 MiB``, ``96 bytes``."""
    for size, unit in UNITS:
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
