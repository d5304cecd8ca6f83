"""ExportModel's streamed pieces assembled into what the caller asked for, once for both shells.

Part of the core under both SDKs: an export is its request and an assembly that is fed each
piece as it arrives (:meth:`ArraysExport.add`) and then asked for the result. :mod:`.sdk`
iterates the stream, :mod:`.aio` iterates it with ``async for``; neither reads a piece itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.digest import raw as raw_bytes
from gradwire.v1.digest import weights_digest

from . import calls
from .records import Exported

T_co = TypeVar("T_co", covariant=True)


class Export(Protocol[T_co]):
    """An export in progress: the request to send, each piece as it comes, then the result."""

    request: pb.ExportModelRequest

    def add(self, piece: pb.ExportModelResponse) -> None: ...

    def result(self) -> T_co: ...


class ArraysExport:
    """A version's weights and buffers (format ARRAYS): each array allocated at its first piece
    and filled in place, then checked against the digest the server sent."""

    def __init__(self, model_id: str, version: int) -> None:
        self.model_id = model_id
        self.request = calls.export(model_id, version, pb.ARRAYS)
        self.arrays: dict[str, np.ndarray] = {}
        self.digest, self.version = "", 0

    def add(self, piece: pb.ExportModelResponse) -> None:
        self.digest, self.version = self.digest or piece.weights_sha256, piece.version
        if piece.offset == 0:
            self.arrays[piece.name] = np.empty(tuple(piece.shape), codec.DTYPES[piece.dtype])
        target = raw_bytes(self.arrays[piece.name])
        target[piece.offset : piece.offset + len(piece.data)] = piece.data

    def result(self) -> Exported:
        if weights_digest(self.arrays) != self.digest:
            raise ValueError(f"exported weights of model {self.model_id} do not match the server's digest")
        return Exported(self.version, self.arrays, self.digest)


class OnnxExport:
    """A version as an ONNX model (format ONNX): its bytes in order, written to ``path`` if given."""

    def __init__(self, model_id: str, version: int, path: str | os.PathLike[str] | None) -> None:
        self.model_id, self.path = model_id, path
        self.request = calls.export(model_id, version, pb.ONNX)
        self.data = bytearray()

    def add(self, piece: pb.ExportModelResponse) -> None:
        if piece.offset != len(self.data):
            raise ValueError(
                f"ONNX export of model {self.model_id}: a piece at {piece.offset}, expected {len(self.data)}"
            )
        self.data += piece.data

    def result(self) -> bytes:
        if self.path is not None:
            Path(self.path).write_bytes(self.data)
        return bytes(self.data)
