"""Dataset use cases: upload (streamed, checked, content-addressed), inline tensors, list, delete.

An upload is checked as it arrives, a storage chunk at a time: no more bytes than the header's
shape holds, every float finite; the SHA-256 of the bytes is computed on the way. Only a
complete, consistent upload becomes a dataset; anything else deletes what it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from gradwire.engine import InvalidArgument
from gradwire.engine.data import check_finite
from gradwire.engine.spec import DTYPES
from gradwire.storage import CHUNK_BYTES, DatasetMeta, DatasetRecord, RequestReused, StorageError, Store
from gradwire.v1.digest import dataset_id, raw

from ..core.errors import LimitExceeded
from ..core.settings import Limits, MiB
from .paging import paged

log = logging.getLogger(__name__)

DATASET_DTYPES = DTYPES
"""What a dataset may hold: what a model computes in."""
MAX_NAME = 200
MAX_REQUEST_ID = 128


class ChunkWriter:
    """An upload's storage chunks, written on a thread of its own (a transaction each) while the
    next chunk is received, checked and hashed, so the network and the database work at once.
    One write at most is in flight: an upload holds at most two chunks beyond what it receives.
    Leaving it waits for that write; its error is the upload's unless the upload failed already
    (and is then deleted whole, the late write with it)."""

    def __init__(self, store: Store, blob_id: str) -> None:
        self.store, self.blob_id, self.seq = store, blob_id, 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gradwire-upload")
        self._writing: Future[None] | None = None

    def write(self, piece: bytes | memoryview) -> None:
        self._wait()  # the previous chunk's error, if it had one, ends the upload here
        self._writing = self._thread.submit(self.store.datasets.write_chunks, self.blob_id, self.seq, [piece])
        self.seq += 1

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            if kind is None:
                self._wait()
            else:
                with contextlib.suppress(Exception):  # the upload's own error goes on
                    self._wait()
        finally:
            self._thread.shutdown()


@dataclass(frozen=True)
class Header:
    """What an upload declares before its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    request_id: str = ""


@dataclass(frozen=True)
class Inline:
    """An array sent inline, as it would be stored: little-endian, C order, and what it is."""

    data: np.ndarray
    meta: DatasetMeta

    @classmethod
    def of(cls, array: np.ndarray, name: str) -> Inline:
        data = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
        checksum = hashlib.sha256(raw(data)).hexdigest()
        rows, columns = data.shape
        key = dataset_id(data.dtype.name, rows, columns, checksum)
        return cls(data, DatasetMeta(key, checksum, name, data.dtype.name, rows, columns, data.nbytes))


def check_request_id(request_id: str, field: str = "request_id") -> None:
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument(field, f"must be at most {MAX_REQUEST_ID} characters")


class Datasets:
    def __init__(self, store: Store, limits: Limits) -> None:
        self.store, self.limits = store, limits

    def upload(self, tenant: str, header: Header, chunks: Iterable[bytes]) -> DatasetRecord:
        """Store the bytes ``chunks`` yields as the tenant's array ``header`` describes (refused
        before any byte is received if they would not fit the tenant's dataset quota)."""
        rows, columns = self._check_header(header)
        dtype = np.dtype(header.dtype)
        expected = rows * columns * dtype.itemsize
        self.store.tenants.check(tenant, {"max_dataset_bytes": expected})
        blob_id = self.store.datasets.begin_upload()
        try:
            checksum = self._receive(blob_id, chunks, dtype, expected)
            meta = DatasetMeta(
                dataset_id(header.dtype, rows, columns, checksum),
                checksum,
                header.name,
                header.dtype,
                rows,
                columns,
                expected,
            )
            record = self.store.datasets.finish_upload(tenant, blob_id, meta, header.request_id)
            if record.id != meta.id:
                raise RequestReused(f"request_id {header.request_id!r} was first used to upload other data")
            return record
        except BaseException:
            self._abandon(blob_id)
            raise

    def check_inline(self, array: np.ndarray, field: str) -> None:
        """Refuse an inline tensor past ``max_inline_mb`` (before anything is stored)."""
        if array.nbytes > self.limits.max_inline_mb * MiB:
            raise LimitExceeded(
                field,
                f"inline tensors take at most {self.limits.max_inline_mb} MiB; upload it with UploadDataset",
            )

    def get(self, tenant: str, dataset_id: str) -> DatasetRecord:
        return self.store.datasets.get(tenant, dataset_id)

    def page(self, tenant: str, page_size: int, page_token: str) -> tuple[list[DatasetRecord], str]:
        return paged(partial(self.store.datasets.page, tenant), page_size, page_token)

    def delete(self, tenant: str, dataset_id: str) -> None:
        self.store.datasets.delete(tenant, dataset_id)

    # ------------------------------------------------------------------ helpers

    def _check_header(self, header: Header) -> tuple[int, int]:
        if len(header.name) > MAX_NAME:
            raise InvalidArgument("header.name", f"must be at most {MAX_NAME} characters")
        check_request_id(header.request_id, "header.request_id")
        if header.dtype not in DATASET_DTYPES:
            raise InvalidArgument(
                "header.dtype", f"must be one of {', '.join(DATASET_DTYPES)}, got {header.dtype}"
            )
        if len(header.shape) != 2 or min(header.shape) < 0:
            raise InvalidArgument("header.shape", f"must be [rows, columns], got {list(header.shape)}")
        rows, columns = header.shape
        if rows == 0 or columns == 0:
            raise InvalidArgument("header.shape", f"has no data: {list(header.shape)}")
        nbytes = rows * columns * np.dtype(header.dtype).itemsize
        if nbytes > self.limits.max_dataset_mb * MiB:
            raise LimitExceeded(
                "header.shape", f"{nbytes} bytes, datasets take at most {self.limits.max_dataset_mb} MiB"
            )
        return rows, columns

    def _receive(self, blob_id: str, chunks: Iterable[bytes], dtype: np.dtype, expected: int) -> str:
        """Store the bytes as storage chunks, each checked (finite floats) on the way; their SHA-256.
        Each byte is copied once, into one of two buffers of a storage chunk: one fills while the
        other is being written."""
        digest, received, filled, turn = hashlib.sha256(), 0, 0, 0
        size = min(CHUNK_BYTES, expected)
        buffers = (bytearray(size), bytearray(size))
        with ChunkWriter(self.store, blob_id) as writer:

            def store(piece: memoryview) -> None:
                check_finite(np.frombuffer(piece, dtype), "chunk")
                digest.update(piece)
                writer.write(piece)  # returns once the other buffer's write is over: it may fill

            for chunk in chunks:
                received += len(chunk)
                if received > expected:
                    raise InvalidArgument("chunk", f"more bytes than the header's shape holds ({expected})")
                view = memoryview(chunk)
                while view:
                    taken = min(len(view), size - filled)
                    buffers[turn][filled : filled + taken] = view[:taken]
                    filled, view = filled + taken, view[taken:]
                    if filled == size:
                        store(memoryview(buffers[turn]))
                        filled, turn = 0, 1 - turn
            if received != expected:
                raise InvalidArgument(
                    "chunk", f"the upload ended after {received} of the {expected} bytes its shape needs"
                )
            if filled:
                store(memoryview(buffers[turn])[:filled])
        return digest.hexdigest()

    def _abandon(self, blob_id: str) -> None:
        try:
            self.store.datasets.abort_upload(blob_id)
        except StorageError:
            log.warning("could not delete an abandoned upload; the janitor will", extra={"blob": blob_id})
