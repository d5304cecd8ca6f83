"""Arrays to bytes and back: ``.npz`` without pickles, with a SHA-256 checksum.

``np.savez`` writes each array as raw little-endian data with its dtype and shape in a header;
``np.load(..., allow_pickle=False)`` refuses object arrays, so nothing executable is ever read.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import CorruptBlob


def pack(arrays: Mapping[str, np.ndarray]) -> tuple[bytes, str]:
    """``(blob, sha256 hex)`` for named arrays; refuses object dtypes."""
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} has an object dtype and cannot be stored")
    buffer = io.BytesIO()
    contents: dict[str, Any] = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    np.savez(buffer, **contents)
    blob = buffer.getvalue()
    return blob, hashlib.sha256(blob).hexdigest()


def unpack(blob: bytes, checksum: str) -> dict[str, np.ndarray]:
    """The arrays of a blob made by :func:`pack`, after checking its checksum."""
    if hashlib.sha256(blob).hexdigest() != checksum:
        raise CorruptBlob("stored arrays do not match their checksum")
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
