"""Large values: arrays to ``.npz`` bytes and back (no pickles), and bytes to chunk rows and back.

``np.savez`` writes each array as raw little-endian data with its dtype and shape in a header;
``np.load(..., allow_pickle=False)`` refuses object arrays, so nothing executable is ever read.

A blob is stored as :class:`~.schema.ChunkRow` rows of at most :data:`CHUNK_BYTES`, numbered from
0, under a blob id; the row that owns the blob keeps the id and the SHA-256 of the whole. Reading
goes a few chunks per query (:data:`CHUNKS_PER_QUERY`), so a reader holds no more than those
besides what it assembles.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from .database import BINARY_OPTION
from .errors import CorruptBlob
from .schema import ChunkRow

CHUNK_BYTES = 4 << 20
"""The most bytes one stored value holds: far below every database's limit on one value."""


def new_id() -> str:
    return uuid.uuid4().hex


def storable(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The arrays, C-contiguous, as ``np.savez`` takes them; refuses object dtypes (pickles)."""
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} has an object dtype and cannot be stored")
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def pack(arrays: Mapping[str, np.ndarray]) -> memoryview:
    """Named arrays as ``.npz`` bytes (a view of the buffer written, not a copy)."""
    buffer = io.BytesIO()
    np.savez(buffer, **storable(arrays))
    return buffer.getbuffer()


def unpack(blob: bytes | memoryview) -> dict[str, np.ndarray]:
    """The arrays of bytes made by :func:`pack`."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


_INSERT_CHUNKS = insert(ChunkRow).returning(ChunkRow.seq)
"""Chunks, however many, as one statement (with RETURNING, SQLAlchemy sends the rows of an
executemany as one multi-row INSERT, compiled once)."""


def write_chunks(s: Session, blob_id: str, first: int, pieces: Sequence[bytes | memoryview]) -> None:
    """Chunks ``first``, ``first + 1``, ... of a blob, sent now in one statement; a memoryview is
    stored as it is, without a copy here (the driver copies)."""
    send_chunks(s, [{"blob_id": blob_id, "seq": seq, "data": data} for seq, data in enumerate(pieces, first)])


def send_chunks(s: Session, rows: list[dict[str, Any]]) -> None:
    """Chunk rows (``blob_id``, ``seq``, ``data``), of one blob or several, in one statement."""
    if rows:
        s.connection().execute(_INSERT_CHUNKS, rows)


def write(s: Session, data: bytes | memoryview) -> tuple[str, str]:
    """Store ``data`` as a new blob: ``(blob id, sha256)``."""
    return write_many(s, [data])[0]


def write_many(s: Session, datas: Sequence[bytes | memoryview]) -> list[tuple[str, str]]:
    """Store each of ``datas`` as a new blob, the chunks of them all in one statement (views of
    the data, not copies): ``(blob id, sha256)`` of each."""
    chunks, written = [], []
    for data in datas:
        blob_id, view = new_id(), memoryview(data)
        for seq, start in enumerate(range(0, max(len(view), 1), CHUNK_BYTES)):
            chunks.append({"blob_id": blob_id, "seq": seq, "data": view[start : start + CHUNK_BYTES]})
        written.append((blob_id, sha256(data)))
    send_chunks(s, chunks)
    return written


CHUNKS_PER_QUERY = 2
"""Chunks one query reads: a blob of one chunk is read, and known to end, in one query, and a
reader holds at most this many chunks besides what it assembles."""

_CHUNKS = (
    select(ChunkRow.seq, ChunkRow.data)
    .where(
        ChunkRow.blob_id == bindparam("blob_id"),
        ChunkRow.seq >= bindparam("first"),
        ChunkRow.seq < bindparam("end"),
    )
    .order_by(ChunkRow.seq)
    .execution_options(**{BINARY_OPTION: True})  # bytes as they are, not as hex text
)


def chunks(s: Session, blob_id: str, count: int = 2**31) -> Iterator[bytes]:
    """The blob's chunks in order, :data:`CHUNKS_PER_QUERY` a query: up to ``count`` of them,
    where the caller knows how many. A chunk missing stops them, as the end does."""
    connection = s.connection()
    first = 0
    while first < count:
        end = min(first + CHUNKS_PER_QUERY, count)
        rows = connection.execute(_CHUNKS, {"blob_id": blob_id, "first": first, "end": end}).all()
        for seq, data in rows:
            if seq != first:
                return
            yield data
            first += 1
        del rows  # held no longer than they are read: the next query's chunks replace them
        if first < end:
            return


def read(s: Session, blob_id: str, checksum: str) -> bytes:
    """The whole blob, after checking its checksum."""
    data = b"".join(chunks(s, blob_id))
    if sha256(data) != checksum:
        raise CorruptBlob("stored bytes do not match their checksum")
    return data


class ChunkWriter(io.RawIOBase):
    """A file to write a blob into: it goes to the database a chunk at a time, each full one sent
    at once, so that what is written is not kept here beside the arrays it comes from (large
    writes are cut into chunks without a copy; only a chunk's worth of small ones is buffered).
    The last chunk is the caller's to send (:meth:`end`), with others.

    A write that fails (the database went away) is kept: later writes do nothing, and
    :meth:`end` raises it, so the caller sees the cause, not the writer's later complaints.
    """

    def __init__(self, s: Session) -> None:
        super().__init__()
        self.s, self.blob_id, self.seq, self.size = s, new_id(), 0, 0
        self.pending = bytearray()
        self.digest = hashlib.sha256()
        self.error: Exception | None = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                self._take(view)
            except Exception as exc:
                self.error = exc
        return len(view)

    def _take(self, view: memoryview) -> None:
        self.digest.update(view)
        self.size += len(view)
        start = 0
        if self.pending:  # top up the buffered chunk first
            start = min(CHUNK_BYTES - len(self.pending), len(view))
            self.pending += view[:start]
            if len(self.pending) < CHUNK_BYTES:
                return
            full, self.pending = bytes(self.pending), bytearray()
            self._emit(full)
        while len(view) - start >= CHUNK_BYTES:
            self._emit(view[start : start + CHUNK_BYTES])
            start += CHUNK_BYTES
        self.pending += view[start:]

    def end(self) -> tuple[str, str, list[dict[str, Any]]]:
        """``(blob id, sha256)`` and the row of the last chunk, not sent: the caller sends it, with
        others (none where the chunks sent already end the blob); the first failure, if a write
        failed."""
        if self.error is not None:
            raise self.error
        last = {"blob_id": self.blob_id, "seq": self.seq, "data": bytes(self.pending)}
        return self.blob_id, self.digest.hexdigest(), [] if self.seq and not self.pending else [last]

    def _emit(self, chunk: bytes | memoryview) -> None:
        write_chunks(self.s, self.blob_id, self.seq, [chunk])  # sent: nothing keeps the bytes here
        self.seq += 1


def write_arrays(s: Session, arrays: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """Store named arrays as an ``.npz`` blob, streamed into chunks: ``(blob id, sha256)``."""
    return write_array_sets(s, [arrays])[0]


def write_array_sets(s: Session, sets: Sequence[Mapping[str, np.ndarray]]) -> list[tuple[str, str]]:
    """Store each set of named arrays as :func:`write_arrays` does, the last chunks of them all in
    one statement (a version's weights and its optimiser state, a chunk each, are one INSERT):
    ``(blob id, sha256)`` of each."""
    ends = []
    for arrays in sets:
        writer = ChunkWriter(s)
        np.savez(writer, **storable(arrays))
        ends.append(writer.end())
    send_chunks(s, [row for *_, last in ends for row in last])
    return [(blob_id, checksum) for blob_id, checksum, _ in ends]


def read_arrays(s: Session, blob_id: str, checksum: str) -> dict[str, np.ndarray]:
    return unpack(read(s, blob_id, checksum))


def drop(s: Session, blob_ids: Iterable[str | None]) -> None:
    """Delete the chunks of these blobs (``None`` entries are skipped)."""
    ids = [b for b in blob_ids if b]
    if ids:
        s.execute(delete(ChunkRow).where(ChunkRow.blob_id.in_(ids)))
