"""Activation functions g and their derivatives, as one lookup table.

Each derivative is written in terms of the activation's *output* ``a = g(in)`` (sigmoid:
``a(1 - a)``, tanh: ``1 - a²``, relu: ``a > 0``), so the forward cache holds ``a`` and nothing
else. Backward functions are vector-Jacobian products: given ``a`` and ``grad_a = ∂L/∂a`` they
return ``∂L/∂in``. For the element-wise activations that is ``grad_a · g′(in)``; softmax couples
the units of a row, and its product with the full Jacobian ``diag(a) − a aᵀ`` is
``a · (grad_a − Σ_k grad_a,k a_k)``.

Constants enter as 0-d arrays of the operand's dtype (:mod:`.scalars`). All arrays are
``(n_samples, n_units)``. ``forward`` may overwrite its input and ``backward`` its
``grad_a``: both are always temporaries the engine made. Neither ever writes into ``a``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import lookup
from .scalars import scalars

Array = np.ndarray

LEAKY_SLOPE = 0.01
"""Slope of leaky relu for negative inputs."""


@dataclass(frozen=True)
class Activation:
    """A named activation: ``forward(in) -> a`` and ``backward(a, grad_a) -> grad_in``."""

    name: str
    forward: Callable[[Array], Array]
    backward: Callable[[Array, Array], Array]
    output_range: tuple[float, float]


def _identity(z: Array) -> Array:
    return z


def _identity_backward(a: Array, grad: Array) -> Array:
    return grad


_ZERO_HALF_ONE = scalars(0.0, 0.5, 1.0)


def _sigmoid(z: Array) -> Array:
    # 1/(1+e^-z) written as (1 + tanh(z/2))/2: the same function, without overflow in exp.
    _, half, one = _ZERO_HALF_ONE[z.dtype]
    z *= half
    np.tanh(z, out=z)
    z += one
    z *= half
    return z


def _sigmoid_backward(a: Array, grad: Array) -> Array:
    one = _ZERO_HALF_ONE[a.dtype][2]
    grad *= a * (one - a)  # g'(in) = a(1 - a)
    return grad


def _tanh(z: Array) -> Array:
    return np.tanh(z, out=z)


def _tanh_backward(a: Array, grad: Array) -> Array:
    one = _ZERO_HALF_ONE[a.dtype][2]
    grad *= one - a * a  # g'(in) = 1 - a²
    return grad


def _relu(z: Array) -> Array:
    return np.maximum(z, _ZERO_HALF_ONE[z.dtype][0], out=z)


def _relu_backward(a: Array, grad: Array) -> Array:
    grad *= a > _ZERO_HALF_ONE[a.dtype][0]  # g'(in) = 1 where the unit is active, else 0 (0 at in = 0)
    return grad


def _leaky_relu(z: Array) -> Array:
    return np.where(z > 0, z, z * LEAKY_SLOPE)


def _leaky_relu_backward(a: Array, grad: Array) -> Array:
    grad *= np.where(a > 0, 1.0, LEAKY_SLOPE).astype(a.dtype, copy=False)
    return grad


def _softmax(z: Array) -> Array:
    e = z - z.max(axis=1, keepdims=True)  # shift so the largest exponent is 0: no overflow
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def _softmax_backward(a: Array, grad: Array) -> Array:
    # (diag(a) - a aᵀ) grad, one row at a time, without building the Jacobian.
    dot = np.einsum("ij,ij->i", grad, a)[:, None]
    grad -= dot
    grad *= a
    return grad


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("identity", _identity, _identity_backward, (-np.inf, np.inf)),
        Activation("sigmoid", _sigmoid, _sigmoid_backward, (0.0, 1.0)),
        Activation("tanh", _tanh, _tanh_backward, (-1.0, 1.0)),
        Activation("relu", _relu, _relu_backward, (0.0, np.inf)),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_backward, (-np.inf, np.inf)),
        Activation("softmax", _softmax, _softmax_backward, (0.0, 1.0)),
    )
}

HIDDEN_ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
"""Softmax normalises across units and is offered for the output layer only."""


def get_activation(name: str, field: str = "activation") -> Activation:
    """Look an activation up by name; an unknown name raises with the valid ones."""
    return lookup(ACTIVATIONS, name, field)
