"""A multilayer network built from a :class:`~gradwire.engine.spec.NetworkSpec`.

Backpropagation (Russell & Norvig 18.7) is two readable steps, vectorised over the batch:

1. forward: each layer maps its input to its output and keeps a cache;
2. backward: the output error ``Δ`` (``∂L/∂in`` of the last layer) is propagated to the first
   layer by the chain rule, each layer turning ``∂L/∂output`` into ``∂L/∂input`` and its
   parameters' gradients; one pass costs O(w) in the number of weights.

:meth:`Network.loss_and_gradients` does both without changing the network; training applies the
state update of batch norm separately (:meth:`Network.commit`).

Cross-entropy losses are reported from the output layer's logits (:meth:`Network.loss_value`),
not from its clipped probabilities, so a confidently wrong output reports its true loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from .activations import get_activation
from .data import as_features, as_targets
from .errors import InvalidArgument
from .initializers import initial_weights
from .layers import (
    AnyLayer,
    BatchNormLayer,
    DenseCache,
    DenseLayer,
    LayerCache,
    LogitDenseLayer,
    ResidualLayer,
)
from .losses import FUSED_DELTAS, LOGIT_LOSSES, get_loss
from .metrics import METRICS
from .spec import BatchNorm, Dense, LayerSpec, NetworkSpec, Residual

Array = np.ndarray

PREDICT_CHUNK = 8192
"""Rows per forward pass in :meth:`Network.predict`: bounds its working memory."""


def _build(spec: LayerSpec, width: int, rng: np.random.Generator, dtype: np.dtype) -> tuple[AnyLayer, int]:
    if isinstance(spec, Dense):
        W = initial_weights(spec.init, rng, width, spec.units, dtype)
        return DenseLayer(W, np.zeros(spec.units, dtype), get_activation(spec.activation)), spec.units
    if isinstance(spec, BatchNorm):
        return BatchNormLayer(
            np.ones(width, dtype),
            np.zeros(width, dtype),
            np.zeros(width, dtype),
            np.ones(width, dtype),
            get_activation(spec.activation),
            spec.momentum,
            spec.epsilon,
        ), width
    assert isinstance(spec, Residual)
    block = []
    inner = width
    for sub in spec.layers:
        layer, inner = _build(sub, inner, rng, dtype)
        block.append(layer)
    return ResidualLayer(block, get_activation(spec.activation)), width


def _output(caches: list[LayerCache]) -> DenseCache:
    """The output layer's cache: a dense layer's, always (see :class:`Network`)."""
    last = caches[-1]
    assert isinstance(last, DenseCache)
    return last


def _logits(caches: list[LayerCache]) -> Array:
    """The output layer's pre-activation, which it keeps where the loss is computed from it."""
    z = _output(caches).z
    assert z is not None
    return z


def _pack_parameters(layers: list[AnyLayer], dtype: np.dtype) -> tuple[Array, list[str], list[Array]]:
    """Move every parameter into one flat buffer, layer by layer; re-point the layers at views."""
    slots = [s for i, layer in enumerate(layers) for s in layer.parameter_slots(f"{i}.")]
    sizes = [getattr(owner, attr).size for _, owner, attr in slots]
    flat = np.empty(sum(sizes), dtype)
    views, start = [], 0
    for (_, owner, attr), size in zip(slots, sizes, strict=True):
        view = flat[start : start + size].reshape(getattr(owner, attr).shape)
        view[...] = getattr(owner, attr)
        setattr(owner, attr, view)
        views.append(view)
        start += size
    return flat, [name for name, _, _ in slots], views


def _layer_segments(names: list[str], params: list[Array]) -> list[tuple[str, slice]]:
    """Each parameterised layer's path and its contiguous share of the flat buffer."""
    segments: dict[str, slice] = {}
    start = 0
    for name, p in zip(names, params, strict=True):
        path = name.rsplit(".", 1)[0]
        first = segments.get(path, slice(start, start)).start
        segments[path] = slice(first, start + p.size)
        start += p.size
    return list(segments.items())


class Network:
    """Layers, their parameters, and the forward and backward passes.

    Parameters are addressed by name (``"0.W"``, ``"2.1.gamma"``: layer path, then array) in a
    fixed order; :attr:`params` lists the arrays themselves in that order, each a view of the one
    flat buffer :attr:`flat`, where every layer's parameters are contiguous
    (:attr:`layer_segments`). The arrays are updated in place and never replaced.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.loss = get_loss(spec.loss)
        pair = (spec.output_activation, spec.loss)
        self.fused_delta = FUSED_DELTAS.get(pair)
        self.logit_loss = LOGIT_LOSSES.get(pair)
        rng = np.random.default_rng(spec.seed)
        self.layers: list[AnyLayer] = []
        width = spec.input_dim
        for layer_spec in spec.layers:
            layer, width = _build(layer_spec, width, rng, self.dtype)
            self.layers.append(layer)
        last = self.layers[-1]
        assert isinstance(last, DenseLayer)
        if self.logit_loss is not None:
            last = self.layers[-1] = LogitDenseLayer(last.W, last.b, last.activation)
        self.output_layer = last
        self._hidden_reversed = list(reversed(list(enumerate(self.layers[:-1]))))  # backward's order
        # the fewest rows a training-mode batch may have: 2 with batch norm anywhere, else 1
        self.min_training_rows = max(layer.min_training_rows for layer in self.layers)
        self.flat, self.param_names, self.params = _pack_parameters(self.layers, self.dtype)
        self._param_counts = [len(layer.parameter_slots("")) for layer in self.layers]
        self.layer_segments = _layer_segments(self.param_names, self.params)
        self._buffers = [b for i, layer in enumerate(self.layers) for b in layer.named_buffers(f"{i}.")]

    # ------------------------------------------------------------------ passes

    def forward(self, X: Array, training: bool = False) -> tuple[Array, list[LayerCache]]:
        """Outputs ``(n, output_dim)`` for inputs ``(n, input_dim)`` in the network's dtype, C-contiguous
        (the public methods make them so: a strided input may round its products differently)."""
        caches = []
        a = X
        for layer in self.layers:
            a, cache = layer.forward(a, training)
            caches.append(cache)
        return a, caches

    def output_error(self, a: Array, caches: list[LayerCache], Y: Array) -> tuple[float, Array]:
        """The mean loss of a forward pass that gave outputs ``a``, and the output layer's error
        ``Δ = ∂L/∂in``; the two share the passes they have in common.

        A cross-entropy's loss comes from the logits the output layer kept (exact where ``a`` has
        rounded to 0 or 1) and its ``Δ`` from the fused shortcut; any other pair's ``Δ`` is the
        chain rule ``g′ ⊙ ∂L/∂a``.
        """
        if self.logit_loss is not None:
            assert self.fused_delta is not None
            return self.logit_loss(_logits(caches), Y), self.fused_delta(a, Y)
        loss, grad = self.loss.value_and_gradient(a, Y)
        return loss, self.output_layer.activation.backward(a, grad)

    def backward(self, caches: list[LayerCache], delta: Array, out: list[list[Array]]) -> None:
        """From the output error ``delta`` (:meth:`output_error`), write the gradients of the mean
        batch loss into ``out``: arrays shaped and ordered as :attr:`params`, grouped by layer
        (:meth:`gradient_views`)."""
        g = self.output_layer.backward_from_delta(_output(caches), delta, len(self.layers) > 1, out[-1])
        for i, layer in self._hidden_reversed:
            assert g is not None
            g = layer.backward(caches[i], g, i > 0, out[i])

    def unflatten(self, flat: Array) -> list[Array]:
        """Views of ``flat`` (laid out like :attr:`flat`) shaped and ordered like :attr:`params`."""
        views, start = [], 0
        for p in self.params:
            views.append(flat[start : start + p.size].reshape(p.shape))
            start += p.size
        return views

    def gradient_views(self, flat: Array) -> list[list[Array]]:
        """:meth:`unflatten`'s views of ``flat``, grouped by top-level layer: what :meth:`backward`
        writes into (made once, used for every step)."""
        views, shares, start = self.unflatten(flat), [], 0
        for count in self._param_counts:
            shares.append(views[start : start + count])
            start += count
        return shares

    def loss_value(self, a: Array, caches: list[LayerCache], Y: Array) -> float:
        """The mean loss of a forward pass that gave outputs ``a``; for a cross-entropy, from the
        logits the output layer kept (exact where ``a`` has rounded to 0 or 1)."""
        if self.logit_loss is not None:
            return self.logit_loss(_logits(caches), Y)
        return self.loss.value(a, Y)

    def commit(self, caches: list[LayerCache]) -> None:
        """Apply the state updates of a training-mode forward pass (batch-norm averages)."""
        if self._buffers:
            for layer, cache in zip(self.layers, caches, strict=True):
                layer.commit(cache)

    # ------------------------------------------------------------------ public API

    def predict(self, X: Array, batch_size: int = PREDICT_CHUNK) -> Array:
        """Inference-mode outputs for ``X`` ``(n, input_dim)``, computed ``batch_size`` rows at a time."""
        X = as_features(X, self.spec.input_dim)
        out = np.empty((len(X), self.spec.output_dim), self.dtype)
        for start in range(0, len(X), batch_size):
            chunk = np.ascontiguousarray(X[start : start + batch_size], self.dtype)
            out[start : start + batch_size] = self.forward(chunk)[0]
        return out

    def loss_and_gradients(
        self, X: Array, Y: Array, training: bool = True, *, field: str = "X"
    ) -> tuple[float, dict[str, Array]]:
        """The mean loss on ``(X, Y)`` and the gradient of every parameter; changes nothing.

        ``training`` selects batch norm's batch statistics (the loss training minimises) or its
        running averages. Batch statistics of one row are degenerate (``x̂ = 0``, so the gradient
        ignores the input), hence fewer than :attr:`min_training_rows` rows raise
        :class:`InvalidArgument` on ``field`` (the caller's name for ``X``).
        """
        X = np.ascontiguousarray(as_features(X, self.spec.input_dim, field), self.dtype)
        Y = np.ascontiguousarray(as_targets(Y, len(X), self.spec.output_dim), self.dtype)
        if training and 0 < len(X) < self.min_training_rows:
            raise InvalidArgument(
                field,
                f"batch normalisation in training mode needs at least {self.min_training_rows} rows, "
                f"got {len(X)} (inference mode takes any number)",
            )
        a, caches = self.forward(X, training)
        grads = np.empty_like(self.flat)
        loss, delta = self.output_error(a, caches, Y)
        self.backward(caches, delta, self.gradient_views(grads))
        return loss, dict(zip(self.param_names, self.unflatten(grads), strict=True))

    def evaluate(
        self, X: Array, Y: Array, rows: Array | None = None, batch_size: int = PREDICT_CHUNK
    ) -> tuple[float, float]:
        """Inference-mode ``(mean loss, metric)`` on ``(X, Y)``, or on its ``rows`` only.

        Works ``batch_size`` rows at a time, gathering them as it goes: no copy of the data.
        """
        n = len(X) if rows is None else len(rows)
        metric = METRICS[self.loss.metric]()
        total = 0.0
        for start in range(0, n, batch_size):
            take = slice(start, start + batch_size) if rows is None else rows[start : start + batch_size]
            x = np.ascontiguousarray(X[take], self.dtype)
            y = np.ascontiguousarray(Y[take], self.dtype)
            a, caches = self.forward(x)
            total += self.loss_value(a, caches, y) * len(x)
            metric.update(a, y)
        return total / max(n, 1), metric.value()

    # ------------------------------------------------------------------ state

    def named_parameters(self) -> Iterator[tuple[str, Array]]:
        return zip(self.param_names, self.params, strict=True)

    def layer_paths(self) -> list[str]:
        """One path per parameterised layer, in order: the parameter names less their last part."""
        return [path for path, _ in self.layer_segments]

    @property
    def nbytes(self) -> int:
        """What the network keeps between calls: its parameters and buffers."""
        return self.flat.nbytes + sum(array.nbytes for _, array in self._buffers)

    def state_arrays(self) -> dict[str, Array]:
        """Copies of every parameter and buffer, by name: what a checkpoint stores."""
        return {name: array.copy() for name, array in (*self.named_parameters(), *self._buffers)}

    def load_state_arrays(self, arrays: Mapping[str, Array]) -> None:
        """Copy saved arrays into the network in place; shapes and names must match exactly."""
        targets = dict((*self.named_parameters(), *self._buffers))
        missing, unknown = set(targets) - set(arrays), set(arrays) - set(targets)
        if missing or unknown:
            raise InvalidArgument(
                "weights", f"names differ: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        for name, target in targets.items():
            source = np.asarray(arrays[name])
            if source.shape != target.shape:
                raise InvalidArgument(f"weights.{name}", f"shape {source.shape}, expected {target.shape}")
            if not np.all(np.isfinite(source)):
                raise InvalidArgument(f"weights.{name}", "contains non-finite values")
            np.copyto(target, source, casting="same_kind")

    @classmethod
    def from_state(cls, spec: NetworkSpec, arrays: Mapping[str, Array]) -> Network:
        network = cls(spec)
        network.load_state_arrays(arrays)
        return network
