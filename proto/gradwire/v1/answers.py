"""The answers of Predict and GetGradients as arrays: what the service's use cases return and the
SDKs hand their callers, one definition for both (NumPy only; :mod:`.codec` packs them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """Outputs, labels for classifiers, the version that answered."""

    outputs: np.ndarray
    labels: np.ndarray | None
    version: int


@dataclass(frozen=True)
class Gradients:
    """The loss and every parameter's gradient by name, with the version that answered and, when
    checked, each parameter's largest relative error against numerical differences."""

    loss: float
    gradients: dict[str, np.ndarray]
    version: int
    max_relative_error: dict[str, float]
