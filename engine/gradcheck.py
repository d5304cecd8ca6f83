"""A central-difference gradient checker for :meth:`Network.loss_and_gradients`.

For every parameter entry θ_i it evaluates ``(L(θ + h e_i) − L(θ − h e_i)) / 2h``, and compares
each parameter array's analytic gradient ``a`` with its numerical one ``n`` by the relative error
``‖a − n‖₂ / max(‖a‖₂ + ‖n‖₂, floor)``. Taken over the whole array, the measure is not swamped by
entries whose gradient is nearly zero (where the difference quotient is all rounding). Run it in
float64; in float32 rounding dominates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .network import Network

Array = np.ndarray


@dataclass(frozen=True)
class GradCheck:
    """Worst relative error per parameter array, and over all of them."""

    errors: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.errors.values(), default=0.0)


def numerical_gradients(
    network: Network, X: Array, Y: Array, step: float = 1e-5, training: bool = True
) -> dict[str, Array]:
    """Central differences of the mean loss with respect to every parameter entry."""
    out = {}
    for name, p in network.named_parameters():
        grad = np.zeros_like(p)
        flat, gflat = p.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + step
            up = network.loss_and_gradients(X, Y, training)[0]
            flat[i] = saved - step
            down = network.loss_and_gradients(X, Y, training)[0]
            flat[i] = saved
            gflat[i] = (up - down) / (2 * step)
        out[name] = grad
    return out


def check_gradients(
    network: Network,
    X: Array,
    Y: Array,
    step: float = 1e-5,
    training: bool = True,
    floor: float = 1e-10,
) -> GradCheck:
    """Compare analytic and numerical gradients; ``floor`` keeps near-zero pairs from dominating."""
    analytic = network.loss_and_gradients(X, Y, training)[1]
    numeric = numerical_gradients(network, X, Y, step, training)
    errors = {}
    for name, a in analytic.items():
        n = numeric[name]
        scale = max(float(np.linalg.norm(a) + np.linalg.norm(n)), floor)
        errors[name] = float(np.linalg.norm(a - n)) / scale
    return GradCheck(errors)
