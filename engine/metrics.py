"""Streaming metrics: accuracy for classifiers, R² for regression.

Training metrics accumulate over the minibatches of an epoch, as the network saw them, so they
cost no extra pass over the data. Each accumulator keeps a few sums and gives the metric of
everything it has seen; for R² the sums are per output and the score is their uniform average.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Array = np.ndarray


class Accuracy:
    """Fraction of rows whose largest output is the target's largest entry (one-hot targets)."""

    def __init__(self) -> None:
        self.correct = 0
        self.seen = 0

    def update(self, a: Array, y: Array) -> None:
        self.correct += int(np.count_nonzero(a.argmax(axis=1) == y.argmax(axis=1)))
        self.seen += len(a)

    def value(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


class BinaryAccuracy:
    """Fraction of (row, output) entries on the target's side of 0.5."""

    def __init__(self) -> None:
        self.correct = 0
        self.seen = 0

    def update(self, a: Array, y: Array) -> None:
        self.correct += int(np.count_nonzero((a > 0.5) == (y > 0.5)))
        self.seen += a.size

    def value(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


class R2:
    """Coefficient of determination 1 − SS_res/SS_tot, averaged over outputs."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_y: Array | float = 0.0
        self.sum_y2: Array | float = 0.0
        self.ss_res: Array | float = 0.0

    def update(self, a: Array, y: Array) -> None:
        y64 = y.astype(np.float64)
        self.n += len(y)
        self.sum_y = self.sum_y + y64.sum(axis=0)
        self.sum_y2 = self.sum_y2 + np.einsum("ij,ij->j", y64, y64)
        d = y64 - a
        self.ss_res = self.ss_res + np.einsum("ij,ij->j", d, d)

    def value(self) -> float:
        if self.n < 2:
            return float("nan")
        ss_tot = np.asarray(self.sum_y2) - np.asarray(self.sum_y) ** 2 / self.n
        ss_res = np.asarray(self.ss_res)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), 0.0)
        return float(np.mean(score))


METRICS: dict[str, Callable[[], Accuracy | BinaryAccuracy | R2]] = {
    "accuracy": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "r2": R2,
}
