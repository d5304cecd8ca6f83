"""Runtime layers: forward and backward for a whole minibatch at once.

Each layer keeps its local derivative beside its forward computation. ``forward`` returns the
output and a *cache* (what backward needs); ``backward`` takes that cache and ``∂L/∂output``,
writes the gradients of the layer's parameters into ``out`` (arrays shaped like the parameters,
in the order of :meth:`Layer.named_parameters`) and returns ``∂L/∂input``. Neither changes the
layer: state updates that training implies (batch norm's running averages) are applied separately
by :meth:`Layer.commit`, so a gradient evaluation leaves the model as it was.

Parameters are attributes (``W``, ``b``, ``gamma``, ``beta``) named by :attr:`Layer.param_attrs`;
the network re-points them at views of one flat buffer, so an optimiser updates every weight
with a few whole-buffer operations.

Matrix products are written ``x.dot(W)``: the same BLAS call as ``x @ W`` or ``np.dot(x, W)``
(the same bits), at half their per-call cost, which counts at small batches.

Shapes: ``x`` is ``(n, fan_in)``, outputs ``(n, fan_out)``, ``W`` ``(fan_in, fan_out)``, ``b``
``(fan_out,)``. ``backward`` may overwrite the ``grad`` it is given, never a cached array.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from .activations import Activation
from .spec import BatchNorm

Array = np.ndarray
Named = list[tuple[str, Array]]


class DenseCache(NamedTuple):
    """What a dense layer's backward needs: its input, its output and, for an output layer whose
    loss is computed from the logits, its pre-activation."""

    x: Array
    a: Array
    z: Array | None = None


class BatchNormCache(NamedTuple):
    """What a batch-norm layer's backward and :meth:`BatchNormLayer.commit` need."""

    training: bool
    xhat: Array
    inv_std: Array
    a: Array
    mean: Array
    var: Array


class ResidualCache(NamedTuple):
    """Each inner layer's cache, and the block's output."""

    caches: list[LayerCache]
    a: Array


LayerCache = DenseCache | BatchNormCache | ResidualCache
"""Any layer's cache; each layer's own type is its :class:`Layer` parameter."""
C = TypeVar("C", DenseCache, BatchNormCache, ResidualCache)


def column_sums(x: Array, out: Array) -> None:
    """``out = Σ_n x[n]``; one row is copied, not reduced (the same values, a fifth of the time)."""
    if len(x) == 1:
        out[...] = x[0]
    else:
        np.add.reduce(x, axis=0, out=out)


class Layer(ABC, Generic[C]):
    """A differentiable function of a batch with named parameters; ``C`` is its cache's type."""

    @abstractmethod
    def forward(self, x: Array, training: bool) -> tuple[Array, C]: ...

    @abstractmethod
    def backward(self, cache: C, grad: Array, need_input_grad: bool, out: list[Array]) -> Array | None:
        """Write parameter gradients into ``out``; return ``∂L/∂input`` (``None`` if not needed)."""

    param_attrs: tuple[str, ...] = ()

    min_training_rows = 1
    """The fewest rows a training-mode batch may have for the layer's gradient to mean anything."""

    def parameter_slots(self, prefix: str) -> list[tuple[str, AnyLayer, str]]:
        """``(name, owner, attribute)`` of every trainable array, in the order of ``out``."""
        return [(f"{prefix}{attr}", self, attr) for attr in self.param_attrs]

    def named_parameters(self, prefix: str) -> Named:
        """Trainable arrays, in the order ``backward`` writes their gradients."""
        return [(name, getattr(owner, attr)) for name, owner, attr in self.parameter_slots(prefix)]

    def named_buffers(self, prefix: str) -> Named:
        """Non-trainable state (running averages), saved and restored with the weights."""
        return []

    def commit(self, cache: C) -> None:
        """Apply the state update implied by a training-mode forward pass (default: none)."""


AnyLayer = Layer[Any]
"""A layer of any kind, as a network or a block holds them."""


class DenseLayer(Layer[DenseCache]):
    """``a = g(x W + b)``; backward: ``Δ = g′ ⊙ ∂L/∂a``, ``∂W = xᵀΔ``, ``∂b = Σ_n Δ``, ``∂x = ΔWᵀ``."""

    param_attrs = ("W", "b")

    def __init__(self, W: Array, b: Array, activation: Activation) -> None:
        self.W, self.b, self.activation = W, b, activation

    @property
    def b(self) -> Array:
        return self._b

    @b.setter
    def b(self, value: Array) -> None:
        # Also kept as a (1, k) view: adding a (1, k) row to (n, k) is ~3× cheaper in NumPy
        # than adding a (k,) vector, which matters at small batches.
        self._b, self._b_row = value, value.reshape(1, -1)

    def _pre_activation(self, x: Array) -> Array:
        z = x.dot(self.W)
        z += self._b_row
        return z

    def forward(self, x: Array, training: bool) -> tuple[Array, DenseCache]:
        z = self._pre_activation(x)
        a = self.activation.forward(z)
        return a, DenseCache(x, a)

    def backward(
        self, cache: DenseCache, grad: Array, need_input_grad: bool, out: list[Array]
    ) -> Array | None:
        delta = self.activation.backward(cache.a, grad)
        return self.backward_from_delta(cache, delta, need_input_grad, out)

    def backward_from_delta(
        self, cache: DenseCache, delta: Array, need_input_grad: bool, out: list[Array]
    ) -> Array | None:
        """Backward from ``Δ = ∂L/∂in`` (the pre-activation), e.g. a fused output error."""
        cache.x.T.dot(delta, out=out[0])
        column_sums(delta, out[1])
        return delta.dot(self.W.T) if need_input_grad else None


class LogitDenseLayer(DenseLayer):
    """An output layer that also keeps its pre-activation ``z`` (the logits): its cache is
    ``z`` too, from which a cross-entropy is exact at any logit gap.

    The activation may overwrite its input, so it gets a copy: ``(n, k)`` values, against the
    ``n·fan_in·k`` multiply-adds of ``x W``.
    """

    def forward(self, x: Array, training: bool) -> tuple[Array, DenseCache]:
        z = self._pre_activation(x)
        a = self.activation.forward(z.copy())
        return a, DenseCache(x, a, z)


class BatchNormLayer(Layer[BatchNormCache]):
    """``a = g(γ x̂ + β)`` with ``x̂ = (x − μ)/√(σ² + ε)`` (Ioffe & Szegedy 2015).

    Training uses the batch's mean and (biased) variance and, on :meth:`commit`, moves the
    running averages: ``r ← m·r + (1 − m)·batch`` (the variance unbiased by ``n/(n − 1)``).
    Inference uses the running averages, so a sample's output does not depend on its batch.
    """

    param_attrs = ("gamma", "beta")
    min_training_rows = BatchNorm.MIN_TRAINING_ROWS

    def __init__(
        self,
        gamma: Array,
        beta: Array,
        mean: Array,
        var: Array,
        activation: Activation,
        momentum: float,
        epsilon: float,
    ) -> None:
        self.gamma, self.beta, self.running_mean, self.running_var = gamma, beta, mean, var
        self.activation, self.momentum, self.epsilon = activation, momentum, epsilon

    def forward(self, x: Array, training: bool) -> tuple[Array, BatchNormCache]:
        mean, var = (x.mean(axis=0), x.var(axis=0)) if training else (self.running_mean, self.running_var)
        inv_std = 1.0 / np.sqrt(var + self.epsilon)
        xhat = (x - mean) * inv_std
        a = self.activation.forward(xhat * self.gamma + self.beta)
        return a, BatchNormCache(training, xhat, inv_std, a, mean, var)

    def backward(
        self, cache: BatchNormCache, grad: Array, need_input_grad: bool, out: list[Array]
    ) -> Array | None:
        training, xhat, inv_std, a, _, _ = cache
        dy = self.activation.backward(a, grad)
        dgamma = np.einsum("ij,ij->j", dy, xhat, out=out[0])
        column_sums(dy, out[1])
        if not need_input_grad:
            return None
        dxhat = dy * self.gamma
        if not training:
            return dxhat * inv_std
        # The batch statistics depend on every row, hence the two mean-correction terms.
        dx = dxhat - dxhat.mean(axis=0) - xhat * (dgamma * self.gamma / len(xhat))
        dx *= inv_std
        return dx

    def commit(self, cache: BatchNormCache) -> None:
        training, xhat, _, _, mean, var = cache
        if not training:
            return
        n = len(xhat)
        m = self.momentum
        self.running_mean *= m
        self.running_mean += (1.0 - m) * mean
        self.running_var *= m
        self.running_var += (1.0 - m) * var * (n / max(n - 1, 1))

    def named_buffers(self, prefix: str) -> Named:
        return [
            (f"{prefix}running_mean", self.running_mean),
            (f"{prefix}running_var", self.running_var),
        ]


class ResidualLayer(Layer[ResidualCache]):
    """``a = g(x + f(x))``: the gradient reaches ``x`` both through ``f`` and directly."""

    def __init__(self, layers: list[AnyLayer], activation: Activation) -> None:
        self.layers, self.activation = layers, activation
        self.min_training_rows = max(layer.min_training_rows for layer in layers)
        counts = [len(layer.parameter_slots("")) for layer in layers]
        self._out_slices = [slice(sum(counts[:i]), sum(counts[: i + 1])) for i in range(len(layers))]

    def forward(self, x: Array, training: bool) -> tuple[Array, ResidualCache]:
        h, caches = x, []
        for layer in self.layers:
            h, cache = layer.forward(h, training)
            caches.append(cache)
        a = self.activation.forward(x + h)
        return a, ResidualCache(caches, a)

    def backward(
        self, cache: ResidualCache, grad: Array, need_input_grad: bool, out: list[Array]
    ) -> Array | None:
        caches, a = cache
        skip = self.activation.backward(a, grad)  # ∂L/∂(x + f(x))
        g: Array | None = skip.copy()  # the block's backward overwrites what it is given
        for i in reversed(range(len(self.layers))):
            assert g is not None
            g = self.layers[i].backward(caches[i], g, need_input_grad or i > 0, out[self._out_slices[i]])
        if not need_input_grad:
            return None
        assert g is not None
        g += skip
        return g

    def commit(self, cache: ResidualCache) -> None:
        for layer, layer_cache in zip(self.layers, cache.caches, strict=True):
            layer.commit(layer_cache)

    def parameter_slots(self, prefix: str) -> list[tuple[str, AnyLayer, str]]:
        return [s for i, layer in enumerate(self.layers) for s in layer.parameter_slots(f"{prefix}{i}.")]

    def named_buffers(self, prefix: str) -> Named:
        return [p for i, layer in enumerate(self.layers) for p in layer.named_buffers(f"{prefix}{i}.")]
