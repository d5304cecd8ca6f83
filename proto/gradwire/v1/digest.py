"""Content addresses of the contract: how a dataset's id and a weights digest are computed.

Pure functions of NumPy arrays and text (no protobuf), so the service's use cases and the SDK
compute the same values: the SDK asks for a dataset by the id it computed before uploading it,
and checks exported weights against a run's receipt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

DATASET_FORMAT = "gradwire.dataset/1"
WEIGHTS_FORMAT = "gradwire.weights/1"


def dataset_id(dtype: str, rows: int, columns: int, checksum: str) -> str:
    """The id of a ``(rows, columns)`` array of ``dtype`` whose bytes have SHA-256 ``checksum``."""
    text = f"{DATASET_FORMAT}\n{dtype}\n{rows}x{columns}\n{checksum}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` as row-major little-endian data, copied only if it is not already."""
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<"))


def raw(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy (empty for an empty array)."""
    return array.reshape(-1).view(np.uint8).data


def array_id(array: np.ndarray) -> str:
    """The dataset id of a 2-D float array, as the service computes it on upload."""
    data = little_endian(array)
    rows, columns = data.shape
    return dataset_id(data.dtype.name, rows, columns, hashlib.sha256(raw(data)).hexdigest())


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over named arrays in sorted name order: each name, dtype, shape, then its bytes."""
    digest = hashlib.sha256(WEIGHTS_FORMAT.encode())
    for name in sorted(arrays):
        data = little_endian(np.asarray(arrays[name]))
        digest.update(f"\n{name}\n{data.dtype.name}\n{list(data.shape)}\n".encode())
        digest.update(raw(data))
    return digest.hexdigest()
