"""Streaming metrics: accuracy for classifiers, R² for regression.

Training metrics accumulate over the minibatches of an epoch, as the network saw them, so they
cost no extra pass over the data. Each accumulator keeps a few sums and gives the metric of
everything it has seen.
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
    """Coefficient of determination over all outputs together: 1 − Σ SS_res / Σ SS_tot.

    With one output this is the usual R²; with several it weights each output by its variance
    (scikit-learn's ``variance_weighted``), which needs only scalar sums per minibatch.
    """

    def __init__(self) -> None:
        self.n = 0
        self.ss_res = 0.0
        self.sum_y2 = 0.0
        self.sum_y: Array | float = 0.0

    def update(self, a: Array, y: Array) -> None:
        d = y - a
        self.n += len(y)
        self.ss_res += float(np.vdot(d, d))
        self.sum_y2 += float(np.vdot(y, y))
        self.sum_y = self.sum_y + np.add.reduce(y, axis=0, dtype=np.float64)

    def value(self) -> float:
        if self.n < 2:
            return float("nan")
        ss_tot = self.sum_y2 - float(np.vdot(self.sum_y, self.sum_y)) / self.n
        return 1.0 - self.ss_res / ss_tot if ss_tot > 0 else 0.0


METRICS: dict[str, Callable[[], Accuracy | BinaryAccuracy | R2]] = {
    "accuracy": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "r2": R2,
}
