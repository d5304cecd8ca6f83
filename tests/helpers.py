"""Data generators shared by the tests (importable as ``helpers``: tests/ is on pytest's path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Running:
    """A started test server: its address and the application behind it."""

    address: str
    app: Any
    settings: Any


def two_spirals(n_per_class: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals in 2-D, labels 0 and 1: not separable by any line."""
    t = np.sqrt(rng.uniform(0.0, 1.0, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    X = np.concatenate([arm, -arm]) + rng.normal(0.0, noise, (2 * n_per_class, 2))
    labels = np.repeat([0, 1], n_per_class)
    return X, labels
