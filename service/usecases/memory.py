"""What the model and inference use cases hold in memory at their worst, for the requests they
are asked: checked against the memory budget before any work starts (see
:func:`.runs.check_memory`)."""

from __future__ import annotations

import numpy as np

from gradwire.engine import NetworkSpec
from gradwire.engine.memory import (
    ALLOWANCE,
    gradient_bytes,
    gradient_check_bytes,
    inference_bytes,
    network_bytes,
    parameter_bytes,
    state_values,
)

ANSWER_COPIES = 2
"""Copies of an answer's arrays on its way out, beside the arrays: the message's bytes, and the
serialised message (the peak this gives is measured in docs/benchmarks.md, "Figures behind
constants")."""


IMPORT_COPIES = 2
"""An import's weights held at once besides the request's bytes: the arrays read, and the
``.npz`` written for the store."""


def import_bytes(spec: NetworkSpec, request_bytes: int) -> int:
    """ImportModel at its worst: the request's bytes twice (the message and the field read from
    it), the arrays and their stored copy."""
    return ALLOWANCE + 2 * request_bytes + IMPORT_COPIES * state_values(spec) * np.dtype(spec.dtype).itemsize


def label_bytes(spec: NetworkSpec, rows: int) -> int:
    """What :func:`.inference.labels` makes: an arg-max per row and its int64 copy, or a mask and an int64
    per output; nothing for a regression."""
    per_row = {"softmax_crossentropy": 16, "binary_crossentropy": 9 * spec.output_dim}
    return rows * per_row.get(spec.loss, 0)


def answer_bytes(spec: NetworkSpec, rows: int) -> int:
    """The arrays of a Predict answer: outputs and, for classifiers, labels."""
    return rows * spec.output_dim * np.dtype(spec.dtype).itemsize + label_bytes(spec, rows)


def predict_bytes(spec: NetworkSpec, rows: int) -> int:
    """Predict of ``rows`` rows at its worst: the forward passes, the labels, the answer's copies."""
    labels = label_bytes(spec, rows)
    outputs = rows * spec.output_dim * np.dtype(spec.dtype).itemsize
    return inference_bytes(spec, rows) + labels + ANSWER_COPIES * (outputs + labels)


def as_float64(spec: NetworkSpec) -> NetworkSpec:
    """The same architecture in float64, where the numerical gradient check runs."""
    return NetworkSpec.from_dict({**spec.to_dict(), "dtype": "float64"})


def gradients_bytes(spec: NetworkSpec, rows: int, numerical_check: bool) -> int:
    """GetGradients at its worst: the passes, the answer's copies and, if asked, the numerical
    check's float64 copy of the model (copied state, then built) and its own passes."""
    need = gradient_bytes(spec, rows) + ANSWER_COPIES * parameter_bytes(spec)
    if numerical_check:
        wide = as_float64(spec)
        copied = state_values(spec) * np.dtype(spec.dtype).itemsize
        need += copied + network_bytes(wide) + gradient_check_bytes(wide, rows)
    return need
