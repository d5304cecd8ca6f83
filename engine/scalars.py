"""Constants as 0-d arrays, one per engine dtype.

NumPy applies a 0-d array of an operand's own dtype about 0.2 µs faster per call than the same
Python float, with the same result: a Python float is cast to the array's dtype too (NEP 50's weak
scalars). On a small batch a training step is a few dozen NumPy calls on tiny arrays, where that
difference is a tenth of the step; on large arrays it is nothing, and nothing is lost.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes a network computes in (:data:`.spec.DTYPES`)."""


def scalars(*values: float) -> dict[np.dtype, tuple[Array, ...]]:
    """``values`` as 0-d arrays, by dtype: ``scalars(0.5, 1.0)[z.dtype]`` is ``(½, 1)`` in ``z``'s dtype."""
    return {dtype: tuple(np.array(v, dtype) for v in values) for dtype in DTYPES}


def scalar(value: float, dtype: np.dtype) -> Array:
    """One constant as a 0-d array of ``dtype``."""
    return np.array(value, dtype)
