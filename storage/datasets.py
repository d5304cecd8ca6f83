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
from typing import Any

import numpy as np
from sqlalchemy import delete, exc, exists, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gradwire.v1.vocabulary import HOLDING

from . import blobs
from .database import Database, as_utc, seconds_ago, utcnow
from .errors import CorruptBlob, WrongState
from .lookup import one
from .records import DatasetRecord
from .requests import once
from .schema import ChunkRow, DatasetRow, RunDatasetRow, RunRow, UploadRow, now
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


COLUMNS = tuple(DatasetRow.__table__.columns)
SKIPPING_INSERTS: dict[str, Any] = {
    name: dialect.insert(DatasetRow).on_conflict_do_nothing().returning(DatasetRow.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
"""Each database's INSERT of datasets that skips a row whose key is taken (``ON CONFLICT DO
NOTHING``), returning the ids it inserted."""


def dataset_record(row: Any) -> DatasetRecord:
    """The record of a dataset's columns (an ORM row, or a statement's row naming them alike)."""
    return DatasetRecord(
        row.id, row.name, row.dtype, row.rows, row.columns, row.nbytes, as_utc(row.created_at)
    )


def dataset_row(
    s: Session, tenant: str, dataset_id: str, field: str = "dataset_id", *, shared: bool = False
) -> DatasetRow:
    """The tenant's dataset, locked against a concurrent delete with ``shared``."""
    return one(s, DatasetRow, dataset_id, "dataset", field, "share" if shared else "", tenant)


def add_datasets(
    s: Session, tenant: str, items: Sequence[tuple[DatasetMeta, bytes | memoryview]], temporary: bool = False
) -> dict[str, DatasetRecord]:
    """Store new datasets of the tenant's (their ids not stored yet: the caller asked), their
    chunks in one statement and their rows in another, however many; their records by id. The
    same content stored meanwhile by a transaction that committed first (PostgreSQL: it was not
    there to see) is taken as it is, locked as the ones found are, the chunks written here for it
    dropped."""
    if not items:
        return {}
    written = blobs.write_many(s, [data for _, data in items])
    rows = [_row(tenant, meta, blob_id) for (meta, _), (blob_id, _) in zip(items, written, strict=True)]
    stamp = now()
    for row in rows:
        row.created_at, row.temporary = stamp, temporary
    values = [{column.key: getattr(row, column.key) for column in COLUMNS} for row in rows]
    added = set(s.connection().execute(SKIPPING_INSERTS[s.get_bind().dialect.name], values).scalars())
    records = {row.id: dataset_record(row) for row in rows if row.id in added}
    if lost := [row for row in rows if row.id not in added]:
        blobs.drop(s, [row.blob_id for row in lost])
        query = select(DatasetRow).where(
            DatasetRow.tenant_id == tenant, DatasetRow.id.in_([r.id for r in lost])
        )
        records |= {row.id: dataset_record(row) for row in s.scalars(query.with_for_update(read=True))}
    return records


def load_dataset(s: Session, row: Any) -> np.ndarray:
    """A stored dataset's array (``row``: its columns): one allocation, filled as its chunks
    come (:func:`.blobs.chunks`) and checked against its checksum."""
    out = np.empty((row.rows, row.columns), np.dtype(row.dtype))
    target = out.reshape(-1).view(np.uint8).data
    digest, filled = hashlib.sha256(), 0
    for chunk in blobs.chunks(s, row.blob_id, -(-row.nbytes // blobs.CHUNK_BYTES) or 1):
        if filled + len(chunk) > row.nbytes:
            raise CorruptBlob(f"dataset {row.id} has more bytes stored than its shape holds")
        target[filled : filled + len(chunk)] = chunk
        digest.update(chunk)
        filled += len(chunk)
    if filled != row.nbytes or digest.hexdigest() != row.checksum:
        raise CorruptBlob(f"dataset {row.id}: stored bytes do not match their checksum")
    return out


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
            blobs.write_chunks(s, blob_id, first, pieces)

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

        def create(s: Session) -> tuple[str, DatasetRecord]:
            _touch(s, blob_id)
            s.execute(delete(UploadRow).where(UploadRow.blob_id == blob_id))
            if (kept := s.get(DatasetRow, (tenant, meta.id))) is not None:
                blobs.drop(s, [blob_id])
                kept.temporary = False  # uploaded on purpose: it stays
                return meta.id, dataset_record(kept)
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
            row = _row(tenant, meta, blob_id)
            s.add(row)
            s.flush()
            return meta.id, dataset_record(row)

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

        def create(s: Session) -> tuple[str, DatasetRecord]:
            if (stored := s.get(DatasetRow, (tenant, meta.id))) is not None:
                stored.temporary = False  # stored on purpose: it stays
                return meta.id, dataset_record(stored)
            charge(s, tenant, {"max_dataset_bytes": meta.nbytes})
            return meta.id, add_datasets(s, tenant, [(meta, data)])[meta.id]

        return self._once(tenant, meta, request_id, create)

    def _once(
        self,
        tenant: str,
        meta: DatasetMeta,
        request_id: str,
        create: Callable[[Session], tuple[str, DatasetRecord]],
    ) -> DatasetRecord:
        """``create`` once per request id; two stores of the same content racing both get the one
        that committed first."""

        def fetch(s: Session, key: str) -> DatasetRecord:
            return dataset_record(dataset_row(s, tenant, key))

        try:
            return once(self.db, tenant, request_id, "dataset", create, fetch)
        except exc.IntegrityError:
            return self.get(tenant, meta.id)

    def reap_temporary(self) -> int:
        """Delete the temporary datasets (brought inline by runs) that no queued, running or
        interrupted run of their tenant needs. Candidates are locked, then asked again in a
        statement of its own: on PostgreSQL a statement's snapshot is taken when it starts, so
        the locking one, which waited for a start reading the dataset, cannot see that start's
        run; the next one does, and the start keeps its data. Returns how many were deleted."""
        with self.db.write() as s:
            candidates = s.execute(
                select(DatasetRow.tenant_id, DatasetRow.id).where(DatasetRow.temporary, ~_needed())
            ).all()
            if not candidates:
                return 0
            key = tuple_(DatasetRow.tenant_id, DatasetRow.id)
            locked = s.scalars(  # waits for a start that holds one (it locks what it reads)
                select(DatasetRow).where(key.in_([tuple(c) for c in candidates])).with_for_update()
            ).all()
            unneeded = set(  # asked again after the wait: a new statement sees what such a start committed
                s.execute(
                    select(DatasetRow.tenant_id, DatasetRow.id).where(
                        key.in_([(row.tenant_id, row.id) for row in locked]), ~_needed()
                    )
                ).all()
            )
            doomed = [row for row in locked if (row.tenant_id, row.id) in unneeded]
            blobs.drop(s, [row.blob_id for row in doomed])
            for row in doomed:
                s.delete(row)
            return len(doomed)

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
            return dataset_record(dataset_row(s, tenant, dataset_id, field))

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
            return [dataset_record(row) for row in s.scalars(query)]

    def load(self, tenant: str, dataset_id: str, field: str = "dataset_id") -> np.ndarray:
        """The tenant's dataset as a ``(rows, columns)`` array: one allocation, filled a chunk at a
        time and checked against its checksum."""
        with self.db.read() as s:
            return load_dataset(s, dataset_row(s, tenant, dataset_id, field))

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


def _needed() -> Any:
    """Whether a queued, running or interrupted run of the dataset's tenant reads it."""
    return exists(
        select(RunDatasetRow.run_id)
        .join(RunRow, RunRow.id == RunDatasetRow.run_id)
        .where(
            RunDatasetRow.dataset_id == DatasetRow.id,
            RunRow.tenant_id == DatasetRow.tenant_id,
            RunRow.status.in_(HOLDING),
        )
    )


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
