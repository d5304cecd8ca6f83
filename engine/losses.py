"""Loss functions, their gradients, and which output activations each one accepts.

Every loss is the *mean over the batch* of a per-sample loss that *sums over the outputs*, so a
multi-output network adds up its outputs' contributions. ``value(a, y)`` returns that mean as a
Python float; ``gradient(a, y)`` returns ``∂L/∂a``, shape ``(n, k)``, already divided by ``n``.

Squared error keeps the constant ½: ``L = ½ Σ_k (y_k − a_k)²``. Then ``∂L/∂a = −(y − a)`` and the
output layer's error term is exactly Russell & Norvig's ``Δ = (y − a) · g′(in)`` with the sign of
a gradient (``∂L/∂in = −Δ``); their ``Loss(w) = |y − h_w(x)|²`` is twice ours, which only rescales
the learning rate.

Accepted (output activation, loss) pairs are listed in :data:`LOSSES` (``accepts``). For any of
them the output error is the exact chain-rule composition ``activation.backward(a, gradient(a, y))``.
Three pairs also have an algebraically equal shortcut in :data:`FUSED_DELTAS` that avoids dividing
by ``a(1 − a)`` near saturation; the tests check each shortcut against the composition.

The cross-entropies of probabilities (``value``) clip ``a`` one machine epsilon inside (0, 1), so a
confidently wrong output reports at most ``−log ε`` (36.04 in float64, 15.94 in float32) where the
true loss grows with the logit gap without bound. The network therefore reports them from the
output layer's pre-activation ``z`` (:data:`LOGIT_LOSSES`), exact at any gap. That is possible only
for the matched pairs, so the cross-entropies accept only their matched activation: softmax with
binary cross-entropy is refused, since its output error ``Δ = J_softmaxᵀ (a − y)/(a(1 − a))`` has
no such shortcut and, computed from ``a``, is wrong by O(1) once a unit saturates (relative error
near 1 at a logit gap of 53 in float64, of 18 in float32); its model (units that must sum to one,
scored as independent yes/no outputs) is sigmoid's job anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgument, lookup

Array = np.ndarray


def _clipped(a: Array) -> Array:
    """``a`` kept inside (0, 1) by one machine epsilon, so logs and divisions stay finite."""
    eps = np.finfo(a.dtype).eps
    return np.clip(a, eps, 1.0 - eps)


def _squared_error(a: Array, y: Array) -> float:
    d = y - a
    return 0.5 * float(np.vdot(d, d)) / len(a)


def _squared_error_gradient(a: Array, y: Array) -> Array:
    g = a - y
    g /= len(a)
    return g


def _squared_error_and_gradient(a: Array, y: Array) -> tuple[float, Array]:
    g = a - y  # (a − y)² = (y − a)² exactly: the value and the gradient share this pass
    flat = g.ravel()
    value = 0.5 * float(flat.dot(flat)) / len(a)
    if len(a) > 1:  # ÷ 1 changes nothing, and would cost an online step a NumPy call
        g /= len(a)
    return value, g


def _binary_crossentropy(a: Array, y: Array) -> float:
    p = _clipped(a)
    return -float(np.sum(y * np.log(p) + (1.0 - y) * np.log1p(-p))) / len(a)


def _binary_crossentropy_gradient(a: Array, y: Array) -> Array:
    p = _clipped(a)
    g = p - y
    g /= p * (1.0 - p) * len(a)
    return g


def _softmax_crossentropy(a: Array, y: Array) -> float:
    return -float(np.sum(y * np.log(_clipped(a)))) / len(a)


def _softmax_crossentropy_gradient(a: Array, y: Array) -> Array:
    g = y / _clipped(a)
    g /= -len(a)
    return g


@dataclass(frozen=True)
class Loss:
    """A named loss, its gradient with respect to the output, and the outputs it accepts."""

    name: str
    value: Callable[[Array, Array], float]
    gradient: Callable[[Array, Array], Array]
    accepts: tuple[str, ...]
    metric: str
    shared: Callable[[Array, Array], tuple[float, Array]] | None = None
    """Value and gradient together, where they share a pass (equal to calling both)."""
    labels: Callable[[Array], Array] | None = None
    """A classifier's labels from its outputs (int64); None: the loss makes no classifier."""

    @property
    def classifier(self) -> bool:
        """Whether a network trained on this loss classifies (its outputs have labels)."""
        return self.labels is not None

    def value_and_gradient(self, a: Array, y: Array) -> tuple[float, Array]:
        """``(value(a, y), gradient(a, y))``, in one go where the loss allows."""
        return self.shared(a, y) if self.shared is not None else (self.value(a, y), self.gradient(a, y))


def _above_half(a: Array) -> Array:
    """Each sigmoid output's label: 1 where its probability is above one half."""
    return (a > 0.5).astype(np.int64)


def _most_probable(a: Array) -> Array:
    """A softmax row's label: its most probable class."""
    return a.argmax(axis=1).astype(np.int64)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "squared_error",
            _squared_error,
            _squared_error_gradient,
            ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"),
            "r2",
            _squared_error_and_gradient,
        ),
        Loss(
            "binary_crossentropy",
            _binary_crossentropy,
            _binary_crossentropy_gradient,
            ("sigmoid",),
            "binary_accuracy",
            labels=_above_half,
        ),
        Loss(
            "softmax_crossentropy",
            _softmax_crossentropy,
            _softmax_crossentropy_gradient,
            ("softmax",),
            "accuracy",
            labels=_most_probable,
        ),
    )
}


def _output_minus_target(a: Array, y: Array) -> Array:
    g = a - y
    g /= len(a)
    return g


def _softmax_crossentropy_delta(a: Array, y: Array) -> Array:
    # ∂/∂in of −Σ y log softmax(in) is a·Σy − y; with one-hot or probability rows Σy = 1.
    g = a * y.sum(axis=1, keepdims=True)
    g -= y
    g /= len(a)
    return g


FUSED_DELTAS: dict[tuple[str, str], Callable[[Array, Array], Array]] = {
    ("identity", "squared_error"): _output_minus_target,
    ("sigmoid", "binary_crossentropy"): _output_minus_target,
    ("softmax", "softmax_crossentropy"): _softmax_crossentropy_delta,
}
"""``∂L/∂in`` of the output layer for matched pairs, equal to the general composition."""


def _sigmoid_crossentropy_of_logits(z: Array, y: Array) -> float:
    # −y log σ(z) − (1 − y) log(1 − σ(z)) = y·softplus(−z) + (1 − y)·softplus(z), and
    # softplus(t) = max(t, 0) + log(1 + e^−|t|): terms ≥ 0 for y in [0, 1], so nothing cancels.
    t = np.abs(z)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    t += y * np.maximum(-z, 0.0)
    t += (1.0 - y) * np.maximum(z, 0.0)
    return float(np.add.reduce(t, axis=None, dtype=np.float64)) / len(z)


def _softmax_crossentropy_of_logits(z: Array, y: Array) -> float:
    # −Σ_k y_k log softmax(z)_k = Σ_k y_k (m − z_k) + Σ_k y_k · log(1 + Σ_{j≠r} e^(z_j − m)), with
    # r the row's arg-max and m = z_r: for probability rows both terms are ≥ 0, so nothing cancels,
    # and log1p keeps a confident row's small loss to full relative precision.
    rows = np.arange(len(z))
    top = z.argmax(axis=1)
    shifted = z - z[rows, top][:, None]  # z − m ≤ 0
    e = np.exp(shifted)
    e[rows, top] = 0.0  # e^0: the 1 that log1p adds
    per_row = y.sum(axis=1) * np.log1p(e.sum(axis=1))
    per_row -= np.einsum("ij,ij->i", y, shifted)
    return float(np.add.reduce(per_row, dtype=np.float64)) / len(z)


LOGIT_LOSSES: dict[tuple[str, str], Callable[[Array, Array], float]] = {
    ("sigmoid", "binary_crossentropy"): _sigmoid_crossentropy_of_logits,
    ("softmax", "softmax_crossentropy"): _softmax_crossentropy_of_logits,
}
"""The mean loss from the output layer's pre-activation ``z`` ``(n, k)``, for the pairs whose
``value`` of probabilities is clipped: exact at any logit gap, summed in float64."""


def get_loss(name: str, field: str = "loss") -> Loss:
    """Look a loss up by name; an unknown name raises with the valid ones."""
    return lookup(LOSSES, name, field)


def check_pair(output_activation: str, loss_name: str, field: str = "loss") -> None:
    """Refuse an (output activation, loss) pair that the loss does not accept; the message also
    names the losses that do accept that output, so either side of the pair can be fixed."""
    loss = get_loss(loss_name, field)
    if output_activation not in loss.accepts:
        others = [name for name, other in LOSSES.items() if output_activation in other.accepts]
        raise InvalidArgument(
            field,
            f"{loss_name} needs an output activation among {', '.join(loss.accepts)}, "
            f"not {output_activation}; a {output_activation} output takes "
            f"{' or '.join(others) or 'no loss'}",
            loss.accepts,
        )
