"""Datasets: 2-D arrays stored in chunks, addressed by their content, readable by every process
that reaches the database.

An upload writes its chunks as they come, each in a short transaction of its own, under a blob
recorded in ``uploads``; nothing is a dataset until :meth:`DatasetStore.finish_upload` hands the
blob over in one transaction. A failed upload deletes what it wrote; what a dead process left is
deleted by :meth:`DatasetStore.reap_uploads` once it is old enough.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import delete, exc, func, insert, select, update
from sqlalchemy.orm import Session

from gradwire.v1.vocabulary import HOLDING

from . import blobs
from .database import Database, seconds_ago, utcnow
from .errors import CorruptBlob, WrongState
from .lookup import one
from .records import DatasetRecord
from .requests import once
from .schema import ChunkRow, DatasetRow, RunDatasetRow, RunRow, UploadRow
from .tenants import charge


@dataclass(frozen=True)
class DatasetMeta:
    """What a dataset is: its content address, the SHA-256 of its bytes, and its layout."""

    id: str
    checksum: str
    name: str
    dtype: str
    rows: int
    columns: int
    nbytes: int


def _record(row: DatasetRow) -> DatasetRecord:
    return DatasetRecord(row.id, row.name, row.dtype, row.rows, row.columns, row.nbytes, row.created_at)


def dataset_row(
    s: Session, tenant: str, dataset_id: str, field: str = "dataset_id", *, shared: bool = False
) -> DatasetRow:
    """The tenant's dataset, locked against a concurrent delete with ``shared``."""
    return one(s, DatasetRow, dataset_id, "dataset", field, "share" if shared else "", tenant)


class DatasetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ writing

    def begin_upload(self) -> str:
        """A new blob to write chunks into: its id."""
        with self.db.write() as s:
            blob_id = blobs.new_id()
            s.execute(insert(UploadRow).values(blob_id=blob_id, touched_at=utcnow()))
            return blob_id

    def write_chunks(self, blob_id: str, first: int, pieces: Sequence[bytes | memoryview]) -> None:
        """Chunks ``first``, ``first + 1``, ... of an upload's blob, in one transaction that also
        touches the upload; WrongState if the janitor deleted it (it was left idle too long)."""
        with self.db.write() as s:
            _touch(s, blob_id)
            for seq, piece in enumerate(pieces, first):
                blobs.write_chunk(s, blob_id, seq, piece)

    def abort_upload(self, blob_id: str) -> None:
        """Delete a blob that will not become a dataset."""
        with self.db.write() as s:
            blobs.drop(s, [blob_id])
            s.execute(delete(UploadRow).where(UploadRow.blob_id == blob_id))

    def finish_upload(
        self, tenant: str, blob_id: str, meta: DatasetMeta, request_id: str = ""
    ) -> DatasetRecord:
        """Make the uploaded blob the tenant's dataset ``meta`` describes, after checking every
        byte of it is stored, within the tenant's dataset quota; if the tenant has that content
        stored already, the existing dataset is returned and the blob deleted."""

        def create(s: Session) -> str:
            _touch(s, blob_id)
            s.execute(delete(UploadRow).where(UploadRow.blob_id == blob_id))
            if s.get(DatasetRow, (tenant, meta.id)) is not None:
                blobs.drop(s, [blob_id])
                return meta.id
            charge(s, tenant, {"max_dataset_bytes": meta.nbytes})
            stored = s.execute(
                select(func.count(), func.coalesce(func.sum(func.length(ChunkRow.data)), 0)).where(
                    ChunkRow.blob_id == blob_id
                )
            ).one()
            if tuple(stored) != (-(-meta.nbytes // blobs.CHUNK_BYTES), meta.nbytes):
                raise CorruptBlob(
                    f"the upload stored {stored[1]} bytes in {stored[0]} chunks, not {meta.nbytes}"
                )
            s.add(_row(tenant, meta, blob_id))
            return meta.id

        record = self._once(tenant, meta, request_id, create)
        with self.db.read() as s:
            adopted = s.scalar(select(DatasetRow.id).where(DatasetRow.blob_id == blob_id)) is not None
        if not adopted:
            self.abort_upload(blob_id)  # another upload of the same content, or of the same request
        return record

    def put(
        self, tenant: str, meta: DatasetMeta, data: bytes | memoryview, request_id: str = ""
    ) -> DatasetRecord:
        """Store a small dataset of the tenant's in one transaction (or find it stored already)."""

        def create(s: Session) -> str:
            if s.get(DatasetRow, (tenant, meta.id)) is None:
                charge(s, tenant, {"max_dataset_bytes": meta.nbytes})
                blob_id, _ = blobs.write(s, data)
                s.add(_row(tenant, meta, blob_id))
            return meta.id

        return self._once(tenant, meta, request_id, create)

    def _once(
        self, tenant: str, meta: DatasetMeta, request_id: str, create: Callable[[Session], str]
    ) -> DatasetRecord:
        """``create`` once per request id; two stores of the same content racing both get the one
        that committed first."""

        def fetch(s: Session, key: str) -> DatasetRecord:
            return _record(dataset_row(s, tenant, key))

        try:
            return once(self.db, tenant, request_id, "dataset", create, fetch)
        except exc.IntegrityError:
            return self.get(tenant, meta.id)

    def reap_uploads(self, older_than_seconds: float) -> int:
        """Delete uploads left untouched for longer than this (their process died or gave up)."""
        with self.db.write() as s:
            stale = list(
                s.scalars(
                    select(UploadRow.blob_id).where(UploadRow.touched_at < seconds_ago(older_than_seconds))
                )
            )
            blobs.drop(s, stale)
            s.execute(delete(UploadRow).where(UploadRow.blob_id.in_(stale)))
            return len(stale)

    # ------------------------------------------------------------------ reading

    def has(self, tenant: str, dataset_id: str) -> bool:
        with self.db.read() as s:
            return s.get(DatasetRow, (tenant, dataset_id)) is not None

    def get(self, tenant: str, dataset_id: str, field: str = "dataset_id") -> DatasetRecord:
        with self.db.read() as s:
            return _record(dataset_row(s, tenant, dataset_id, field))

    def page(self, tenant: str, limit: int, after: tuple[datetime, str] | None = None) -> list[DatasetRecord]:
        """Up to ``limit`` of the tenant's datasets in creation order, after the given
        ``(created_at, id)``."""
        query = (
            select(DatasetRow)
            .where(DatasetRow.tenant_id == tenant)
            .order_by(DatasetRow.created_at, DatasetRow.id)
            .limit(limit)
        )
        if after is not None:
            created, key = after
            query = query.where(
                (DatasetRow.created_at > created)
                | ((DatasetRow.created_at == created) & (DatasetRow.id > key))
            )
        with self.db.read() as s:
            return [_record(row) for row in s.scalars(query)]

    def load(self, tenant: str, dataset_id: str, field: str = "dataset_id") -> np.ndarray:
        """The tenant's dataset as a ``(rows, columns)`` array: one allocation, filled a chunk at a
        time and checked against its checksum."""
        with self.db.read() as s:
            row = dataset_row(s, tenant, dataset_id, field)
            out = np.empty((row.rows, row.columns), np.dtype(row.dtype))
            target = out.reshape(-1).view(np.uint8).data
            digest, filled = hashlib.sha256(), 0
            for chunk in blobs.chunks(s, row.blob_id):
                if filled + len(chunk) > row.nbytes:
                    raise CorruptBlob(f"dataset {dataset_id} has more bytes stored than its shape holds")
                target[filled : filled + len(chunk)] = chunk
                digest.update(chunk)
                filled += len(chunk)
            if filled != row.nbytes or digest.hexdigest() != row.checksum:
                raise CorruptBlob(f"dataset {dataset_id}: stored bytes do not match their checksum")
            return out

    # ------------------------------------------------------------------ deleting

    def delete(self, tenant: str, dataset_id: str) -> None:
        """Delete a dataset of the tenant's; refused while a queued, running or interrupted run
        (of the tenant's: no other reads it) needs it."""
        with self.db.write() as s:
            row = one(s, DatasetRow, dataset_id, "dataset", "dataset_id", "update", tenant)
            users = list(
                s.scalars(
                    select(RunRow.id)
                    .join(RunDatasetRow, RunDatasetRow.run_id == RunRow.id)
                    .where(
                        RunDatasetRow.dataset_id == dataset_id,
                        RunRow.tenant_id == tenant,
                        RunRow.status.in_(HOLDING),
                    )
                )
            )
            if users:
                raise WrongState(
                    f"dataset {dataset_id} is used by run(s) {', '.join(sorted(users))}, queued, running "
                    "or interrupted; cancel them first",
                    "dataset_id",
                )
            blobs.drop(s, [row.blob_id])
            s.delete(row)


def _touch(s: Session, blob_id: str) -> None:
    touched = s.execute(update(UploadRow).where(UploadRow.blob_id == blob_id).values(touched_at=utcnow()))
    if not getattr(touched, "rowcount", 0):
        raise WrongState("the upload was idle too long and was discarded; upload the data again", "chunk")


def _row(tenant: str, meta: DatasetMeta, blob_id: str) -> DatasetRow:
    return DatasetRow(
        tenant_id=tenant,
        id=meta.id,
        name=meta.name,
        dtype=meta.dtype,
        rows=meta.rows,
        columns=meta.columns,
        nbytes=meta.nbytes,
        blob_id=blob_id,
        checksum=meta.checksum,
    )
