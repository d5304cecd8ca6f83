"""Checks on data arrays, and the index bookkeeping of minibatches and hold-out splits.

Nothing here copies a dataset: inputs are checked in place (in chunks, so the check needs no
dataset-sized temporary), and minibatches and validation splits are index arrays that gather a
few rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from .errors import InvalidArgument, require

Array = np.ndarray

CHECK_CHUNK = 16384
"""Rows per step of the finiteness check."""


def check_finite(a: Array, field: str) -> None:
    """Raise :class:`InvalidArgument` if ``a`` holds a NaN or an infinity (checked in chunks)."""
    for start in range(0, len(a), CHECK_CHUNK):
        if not np.isfinite(a[start : start + CHECK_CHUNK]).all():
            raise InvalidArgument(field, "contains NaN or infinite values")


def check_in_range(a: Array, dtype: np.dtype[Any] | str, field: str) -> None:
    """Raise :class:`InvalidArgument` if ``a`` holds values a ``dtype`` network cannot (float64
    data past float32's ±3.4e38 would become infinities inside it); checked in chunks."""
    dtype = np.dtype(dtype)
    if a.dtype.kind != "f" or a.dtype.itemsize <= dtype.itemsize or not a.size:
        return
    limit = np.finfo(dtype).max
    for start in range(0, len(a), CHECK_CHUNK):
        chunk = a[start : start + CHECK_CHUNK]
        if max(chunk.max(), -chunk.min()) > limit:
            raise InvalidArgument(field, f"holds values beyond ±{limit:.3g}, the range of a {dtype} network")


def _numeric(a: object, field: str) -> Array:
    array = np.asarray(a)
    kind = array.dtype.kind
    require(kind in "fiub", field, f"must be numeric, got dtype {array.dtype}")
    return array


def as_features(X: object, width: int, field: str = "X") -> Array:
    """``X`` as a finite ``(n, width)`` numeric array, without copying it."""
    array = _numeric(X, field)
    require(array.ndim == 2, field, f"must be 2-D (samples, features), got shape {array.shape}")
    require(array.shape[1] == width, field, f"has {array.shape[1]} features, the model takes {width}")
    check_finite(array, field)
    return array


def as_targets(Y: object, n: int, width: int, field: str = "Y") -> Array:
    """``Y`` as a finite ``(n, width)`` array; a 1-D ``Y`` is taken as one output per row."""
    array = _numeric(Y, field)
    if array.ndim == 1 and width == 1:
        array = array.reshape(-1, 1)
    require(array.ndim == 2, field, f"must be 2-D (samples, outputs), got shape {array.shape}")
    require(len(array) == n, field, f"has {len(array)} rows, the inputs have {n}")
    require(array.shape[1] == width, field, f"has {array.shape[1]} outputs, the model gives {width}")
    check_finite(array, field)
    return array


def one_hot(labels: Array, n_classes: int, dtype: str = "float64") -> Array:
    """``(n,)`` integer labels in ``[0, n_classes)`` to ``(n, n_classes)`` one-hot rows."""
    labels = np.asarray(labels)
    require(labels.ndim == 1, "labels", f"must be 1-D, got shape {labels.shape}")
    ok = labels.size == 0 or (labels.min() >= 0 and labels.max() < n_classes)
    require(bool(ok), "labels", f"must lie in [0, {n_classes})")
    out = np.zeros((len(labels), n_classes), dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def class_labels(Y: Array) -> Array:
    """A class per row for stratifying: the arg-max of one-hot rows, or the 0.5 side of one output."""
    if Y.shape[1] == 1:
        return (Y[:, 0] > 0.5).astype(np.int64)
    return np.asarray(Y.argmax(axis=1))


def batch_bounds(n: int, batch_size: int, min_rows: int = 1) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each minibatch of ``n`` rows taken ``batch_size`` at a time.

    A last batch of fewer than ``min_rows`` rows joins the one before it, which then has more
    than ``batch_size``: with batch norm (``min_rows = 2``) 33 rows in batches of 32 train as one
    batch of 33, never as 32 and a row that is its own mean. Every other split is the plain one.
    Assumes ``batch_size ≥ min_rows``.
    """
    count = -(-n // batch_size)
    if count > 1 and n - (count - 1) * batch_size < min_rows:
        count -= 1
    for i in range(count):
        yield i * batch_size, n if i == count - 1 else (i + 1) * batch_size


GATHER_BYTES = 1 << 20
"""About this many bytes of training rows (inputs, targets and the outputs kept for the metric)
are gathered at a time, as many whole minibatches as fit (one at least, plus the row a batch-norm
network's last batch may take over). It bounds what training adds to memory, whatever the
dataset's size."""


def batches_per_group(input_dim: int, output_dim: int, itemsize: int, batch_size: int) -> int:
    """How many minibatches :data:`GATHER_BYTES` holds: a row is its inputs, targets and outputs."""
    row_bytes = (input_dim + 2 * output_dim) * itemsize
    return max(1, GATHER_BYTES // (row_bytes * batch_size))


def batch_groups(bounds: Iterable[tuple[int, int]], per_group: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive minibatches ``(start, stop)``, ``per_group`` to a group (the last group may
    have fewer), taken from ``bounds`` as they come: only one group is ever held."""
    batches = iter(bounds)
    while group := list(islice(batches, per_group)):
        yield group


def holdout_split(
    n: int, fraction: float, rng: np.random.Generator, strata: Array | None = None
) -> tuple[Array, Array]:
    """Row indices ``(train, validation)`` holding out ``fraction`` of ``n`` rows.

    With ``strata`` (a class per row) each class gives the same fraction, at least one row of
    each class with two or more rows, so validation keeps the class balance.
    """
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == c) for c in np.unique(strata)]
    held = []
    for rows in groups:
        take = round(len(rows) * fraction)
        take = min(max(take, 1 if len(rows) > 1 else 0), len(rows) - 1)
        held.append(rng.permutation(rows)[:take])
    val = np.sort(np.concatenate(held))
    require(len(val) > 0 and len(val) < n, "validation_fraction", f"leaves no rows on one side of {n}")
    mask = np.ones(n, bool)
    mask[val] = False
    return np.flatnonzero(mask), val
