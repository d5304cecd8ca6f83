"""Streaming metrics: accuracy for classifiers, R² for regression.

Training metrics accumulate over an epoch's outputs as the network gave them while training,
a group of minibatches per update (:meth:`Trainer._run_epoch`), so they cost no extra pass over
the data. Each accumulator keeps a few sums, in float64, and gives the metric of everything it
has seen.
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
    (scikit-learn's ``variance_weighted``), which needs only a few sums per update.

    SS_tot is not ``Σy² − (Σy)²/n``: that cancels to nothing when the targets sit far from zero
    against their spread (around 1e8 with a spread of 1, every digit). The sums are of the targets
    less a shift ``K``, the first update's mean target, so ``SS_tot = Σc² − (Σc)²/n`` with
    ``c = y − K`` only loses a factor ``1 + (ȳ − K)²/var(y)`` of rounding, about one.
    """

    def __init__(self) -> None:
        self.n = 0
        self.ss_res = 0.0
        self.shift: Array | None = None  # K, per output
        self.sum_c2 = 0.0
        self.sum_c: Array | float = 0.0  # per output

    def update(self, a: Array, y: Array) -> None:
        if not len(y):
            return
        d = np.subtract(y, a, dtype=np.float64)  # a group of float32 rows still sums in float64
        self.n += len(y)
        self.ss_res += float(np.vdot(d, d))
        if self.shift is None:
            self.shift = y.mean(axis=0, dtype=np.float64)
        c = y - self.shift
        self.sum_c2 += float(np.vdot(c, c))
        self.sum_c = self.sum_c + np.add.reduce(c, axis=0)

    def value(self) -> float:
        if self.n < 2:
            return float("nan")
        ss_tot = self.sum_c2 - float(np.vdot(self.sum_c, self.sum_c)) / self.n
        return 1.0 - self.ss_res / ss_tot if ss_tot > 0 else 0.0


METRICS: dict[str, Callable[[], Accuracy | BinaryAccuracy | R2]] = {
    "accuracy": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "r2": R2,
}
