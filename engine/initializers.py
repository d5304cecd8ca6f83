"""Weight initialisers. Biases always start at zero.

Each entry draws a ``(fan_in, fan_out)`` matrix from an explicit ``np.random.Generator``:

=================  =====================================================  ===================
name               distribution                                           reference
=================  =====================================================  ===================
``small_uniform``  U[−0.01, 0.01]                                         Russell & Norvig
``xavier_uniform`` U[−√(6/(fan_in+fan_out)), +√(6/(fan_in+fan_out))]      Glorot & Bengio 2010
``xavier_normal``  N(0, 2/(fan_in+fan_out))                               Glorot & Bengio 2010
``he_uniform``     U[−√(6/fan_in), +√(6/fan_in)]                          He et al. 2015
``he_normal``      N(0, 2/fan_in)                                         He et al. 2015
=================  =====================================================  ===================

All-zero weights are refused: every unit of a layer would compute the same function and receive
the same update, so the symmetry is never broken.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .errors import InvalidArgument, excerpt

Initializer = Callable[[np.random.Generator, int, int], np.ndarray]


def _uniform(limit: float, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.uniform(-limit, limit, size=shape)


INITIALIZERS: dict[str, Initializer] = {
    "small_uniform": lambda rng, i, o: _uniform(0.01, rng, (i, o)),
    "xavier_uniform": lambda rng, i, o: _uniform(math.sqrt(6.0 / (i + o)), rng, (i, o)),
    "xavier_normal": lambda rng, i, o: rng.normal(0.0, math.sqrt(2.0 / (i + o)), (i, o)),
    "he_uniform": lambda rng, i, o: _uniform(math.sqrt(6.0 / i), rng, (i, o)),
    "he_normal": lambda rng, i, o: rng.normal(0.0, math.sqrt(2.0 / i), (i, o)),
}

REFUSED = {"zeros": "all-zero weights never break the symmetry between units"}


def check_initializer(name: str, field: str) -> None:
    """Raise :class:`InvalidArgument` unless ``name`` is a known initialiser."""
    if not isinstance(name, str):
        raise InvalidArgument(field, f"must be a name, got {excerpt(name)}", sorted(INITIALIZERS))
    if name in REFUSED:
        raise InvalidArgument(field, f"{excerpt(name)} is refused: {REFUSED[name]}", sorted(INITIALIZERS))
    if name not in INITIALIZERS:
        raise InvalidArgument(field, f"unknown value {excerpt(name)}", sorted(INITIALIZERS))


def initial_weights(
    name: str, rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.dtype
) -> np.ndarray:
    """Draw a ``(fan_in, fan_out)`` weight matrix in ``dtype``; refuse one that is all zero."""
    check_initializer(name, "init")
    w = INITIALIZERS[name](rng, fan_in, fan_out).astype(dtype)
    if not np.any(w):
        raise InvalidArgument("init", "the initialiser produced all-zero weights")
    return w
