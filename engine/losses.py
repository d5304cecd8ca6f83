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


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "squared_error",
            _squared_error,
            _squared_error_gradient,
            ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"),
            "r2",
        ),
        Loss(
            "binary_crossentropy",
            _binary_crossentropy,
            _binary_crossentropy_gradient,
            ("sigmoid", "softmax"),
            "binary_accuracy",
        ),
        Loss(
            "softmax_crossentropy",
            _softmax_crossentropy,
            _softmax_crossentropy_gradient,
            ("softmax",),
            "accuracy",
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


def get_loss(name: str, field: str = "loss") -> Loss:
    """Look a loss up by name; an unknown name raises with the valid ones."""
    return lookup(LOSSES, name, field)


def check_pair(output_activation: str, loss_name: str, field: str = "loss") -> None:
    """Refuse an (output activation, loss) pair that the loss does not accept."""
    loss = get_loss(loss_name, field)
    if output_activation not in loss.accepts:
        raise InvalidArgument(
            field,
            f"{loss_name} needs an output activation among {', '.join(loss.accepts)}, "
            f"not {output_activation}",
            loss.accepts,
        )
