"""durable runs: chunked blobs, datasets, run leases and checkpoints, request ids

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 20:30:00

What happens to existing data:

* every weight version's blob moves into ``blob_chunks`` (same bytes, same checksum);
* runs get the new columns; those left ``running`` become ``interrupted`` (as the old server
  would have marked them on its next start); ``created_at`` takes the old ``started_at``;
* the old per-model ``checkpoints`` table is dropped: optimiser state now travels with the weight
  version it belongs to, and versions made before this revision have none, so the next run on
  them starts its optimiser afresh.

Downgrading restores the 0001 tables and the weights; datasets, run checkpoints, receipts and
request ids are lost, and queued runs become ``cancelled``.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHUNK_BYTES = 4 << 20  # as gradwire.storage.blobs.CHUNK_BYTES when this revision was written
ACTIVE = "status IN ('queued', 'running')"

chunks = sa.table(
    "blob_chunks",
    sa.column("blob_id", sa.String),
    sa.column("seq", sa.Integer),
    sa.column("data", sa.LargeBinary),
)
versions = sa.table(
    "weight_versions",
    sa.column("model_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("weights", sa.LargeBinary),
    sa.column("blob_id", sa.String),
)


def upgrade() -> None:
    op.create_table(
        "blob_chunks",
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", "seq", name=op.f("pk_blob_chunks")),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("columns", sa.BigInteger(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_index(op.f("ix_datasets_created_at"), "datasets", ["created_at"], unique=False)
    op.create_table(
        "uploads",
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", name=op.f("pk_uploads")),
    )
    op.create_index(op.f("ix_uploads_touched_at"), "uploads", ["touched_at"], unique=False)
    op.create_table(
        "request_ids",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_request_ids")),
    )
    _upgrade_weight_versions()
    _upgrade_runs()
    op.create_table(
        "run_datasets",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.id"],
            name=op.f("fk_run_datasets_run_id_training_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "role", name=op.f("pk_run_datasets")),
    )
    op.create_index(op.f("ix_run_datasets_dataset_id"), "run_datasets", ["dataset_id"], unique=False)
    op.create_table(
        "run_checkpoints",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.id"],
            name=op.f("fk_run_checkpoints_run_id_training_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_run_checkpoints")),
    )
    op.drop_table("checkpoints")


def _upgrade_weight_versions() -> None:
    with op.batch_alter_table("weight_versions") as batch:
        batch.add_column(sa.Column("blob_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("optimizer_blob_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("optimizer_checksum", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("optimizer_meta", sa.JSON(), nullable=True))
    connection = op.get_bind()
    keys = connection.execute(sa.select(versions.c.model_id, versions.c.version)).all()
    for model_id, version in keys:  # one blob in memory at a time
        where = (versions.c.model_id == model_id) & (versions.c.version == version)
        data = connection.execute(sa.select(versions.c.weights).where(where)).scalar_one()
        blob_id = uuid.uuid4().hex
        for seq, start in enumerate(range(0, max(len(data), 1), CHUNK_BYTES)):
            connection.execute(
                chunks.insert().values(blob_id=blob_id, seq=seq, data=data[start : start + CHUNK_BYTES])
            )
        connection.execute(versions.update().where(where).values(blob_id=blob_id))
    with op.batch_alter_table("weight_versions") as batch:
        batch.alter_column("blob_id", existing_type=sa.String(length=32), nullable=False)
        batch.drop_column("weights")


def _upgrade_runs() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("best_loss", sa.Float(), nullable=True))
        batch.add_column(sa.Column("epochs_done", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("receipt", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("load_seconds", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("train_seconds", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column("started_at", existing_type=sa.DateTime(timezone=True), nullable=True)
    op.execute("UPDATE training_runs SET created_at = started_at")
    op.execute("UPDATE training_runs SET status = 'interrupted' WHERE status = 'running'")
    op.execute(
        "UPDATE training_runs SET epochs_done = "
        "(SELECT COALESCE(MAX(epoch), 0) FROM epochs WHERE epochs.run_id = training_runs.id)"
    )
    with op.batch_alter_table("training_runs") as batch:
        batch.alter_column("created_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.alter_column("epochs_done", server_default=None, existing_type=sa.Integer())
        batch.alter_column("cancel_requested", server_default=None, existing_type=sa.Boolean())
        batch.alter_column("attempts", server_default=None, existing_type=sa.Integer())
        batch.alter_column("load_seconds", server_default=None, existing_type=sa.Float())
        batch.alter_column("train_seconds", server_default=None, existing_type=sa.Float())
        batch.create_index("ix_training_runs_status_created_at", ["status", "created_at"], unique=False)
        batch.create_index(
            "uq_training_runs_active_model",
            ["model_id"],
            unique=True,
            sqlite_where=sa.text(ACTIVE),
            postgresql_where=sa.text(ACTIVE),
        )


def downgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("arrays", sa.LargeBinary(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_checkpoints_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_checkpoints")),
    )
    op.drop_table("run_checkpoints")
    op.drop_index(op.f("ix_run_datasets_dataset_id"), table_name="run_datasets")
    op.drop_table("run_datasets")
    op.execute(
        "UPDATE training_runs SET status = 'cancelled', started_at = created_at WHERE status = 'queued'"
    )
    op.execute("UPDATE training_runs SET started_at = created_at WHERE started_at IS NULL")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_index("uq_training_runs_active_model")
        batch.drop_index("ix_training_runs_status_created_at")
        batch.alter_column("started_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        for column in (
            "created_at",
            "train_seconds",
            "load_seconds",
            "attempts",
            "cancel_requested",
            "heartbeat_at",
            "owner",
            "receipt",
            "epochs_done",
            "best_loss",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("weight_versions") as batch:
        batch.add_column(sa.Column("weights", sa.LargeBinary(), nullable=True))
    connection = op.get_bind()
    keys = connection.execute(sa.select(versions.c.model_id, versions.c.version, versions.c.blob_id)).all()
    for model_id, version, blob_id in keys:
        parts = connection.execute(
            sa.select(chunks.c.data).where(chunks.c.blob_id == blob_id).order_by(chunks.c.seq)
        )
        where = (versions.c.model_id == model_id) & (versions.c.version == version)
        connection.execute(versions.update().where(where).values(weights=b"".join(parts.scalars())))
    with op.batch_alter_table("weight_versions") as batch:
        batch.alter_column("weights", existing_type=sa.LargeBinary(), nullable=False)
        for column in ("optimizer_meta", "optimizer_checksum", "optimizer_blob_id", "blob_id"):
            batch.drop_column(column)
    op.drop_table("request_ids")
    op.drop_index(op.f("ix_uploads_touched_at"), table_name="uploads")
    op.drop_table("uploads")
    op.drop_index(op.f("ix_datasets_created_at"), table_name="datasets")
    op.drop_table("datasets")
    op.drop_table("blob_chunks")
