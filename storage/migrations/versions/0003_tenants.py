"""tenants: API keys, per-tenant quotas, and a tenant on models, datasets, runs and request ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 01:00:00

What happens to existing data: everything stored so far belongs to the tenant ``default``,
created here with the default quotas. A key created for ``default`` (``gradwire keys create
--tenant default``) reaches it; with authentication off every caller is ``default``.

Datasets and request ids are keyed by (tenant, id) from now on: two tenants uploading the same
bytes get a dataset each, and one tenant's request id is not another's.

Downgrading drops the keys and the tenants; it refuses while anything belongs to a tenant other
than ``default``, which the older schema could not tell apart.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT_TENANT = "default"
DEFAULT_QUOTAS = {  # as gradwire.storage.records.Quotas when this revision was written
    "max_models": 1000,
    "max_parameters": 1_000_000_000,
    "max_dataset_bytes": 100 << 30,
    "max_active_runs": 32,
}
ACTIVE = "status IN ('queued', 'running')"
OWNED = ("models", "datasets", "training_runs", "request_ids")
"""The tables whose rows get a tenant."""

tenants = sa.table(
    "tenants",
    sa.column("id", sa.String),
    sa.column("max_models", sa.Integer),
    sa.column("max_parameters", sa.BigInteger),
    sa.column("max_dataset_bytes", sa.BigInteger),
    sa.column("max_active_runs", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _tenant_column() -> sa.Column[str]:
    """Filled with the default tenant for the rows there are; the default is dropped after."""
    return sa.Column("tenant_id", sa.String(length=64), nullable=False, server_default=DEFAULT_TENANT)


def _foreign_key(batch: object, table: str) -> None:
    batch.create_foreign_key(  # type: ignore[attr-defined]
        op.f(f"fk_{table}_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("max_models", sa.Integer(), nullable=False),
        sa.Column("max_parameters", sa.BigInteger(), nullable=False),
        sa.Column("max_dataset_bytes", sa.BigInteger(), nullable=False),
        sa.Column("max_active_runs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.execute(tenants.insert().values(id=DEFAULT_TENANT, **DEFAULT_QUOTAS, created_at=sa.func.now()))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False)

    with op.batch_alter_table("models") as batch:
        batch.add_column(_tenant_column())
        _foreign_key(batch, "models")
        batch.create_index("ix_models_tenant_id_created_at", ["tenant_id", "created_at"], unique=False)
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(_tenant_column())
        batch.drop_constraint("pk_datasets", type_="primary")
        batch.create_primary_key("pk_datasets", ["tenant_id", "id"])
        _foreign_key(batch, "datasets")
        batch.create_index("ix_datasets_tenant_id_created_at", ["tenant_id", "created_at"], unique=False)
    op.drop_index("uq_training_runs_active_model", table_name="training_runs")  # rebuilt below, partial
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(_tenant_column())
        _foreign_key(batch, "training_runs")
        batch.create_index("ix_training_runs_tenant_id_status", ["tenant_id", "status"], unique=False)
    _active_index()
    with op.batch_alter_table("request_ids") as batch:
        batch.add_column(_tenant_column())
        batch.drop_constraint("pk_request_ids", type_="primary")
        batch.create_primary_key("pk_request_ids", ["tenant_id", "request_id"])
        _foreign_key(batch, "request_ids")
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("tenant_id", server_default=None, existing_type=sa.String(length=64))
    if op.get_context().dialect.name == "sqlite":  # batch mode rebuilt the table without it
        _active_index(drop_first=True)


def _active_index(drop_first: bool = False) -> None:
    """At most one queued or running run per model (as revision 0002 made it)."""
    if drop_first:
        op.execute("DROP INDEX IF EXISTS uq_training_runs_active_model")
    op.create_index(
        "uq_training_runs_active_model",
        "training_runs",
        ["model_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    connection = op.get_bind()
    for table in OWNED:
        others = connection.execute(
            sa.text(f"SELECT COUNT(*) FROM {table} WHERE tenant_id <> :tenant"), {"tenant": DEFAULT_TENANT}
        ).scalar_one()
        if others:
            raise RuntimeError(
                f"{others} rows of {table} belong to tenants other than {DEFAULT_TENANT!r}; revision "
                "0002 cannot tell tenants apart. Delete them first (or keep this revision)."
            )
    with op.batch_alter_table("request_ids") as batch:
        batch.drop_constraint("fk_request_ids_tenant_id_tenants", type_="foreignkey")
        batch.drop_constraint("pk_request_ids", type_="primary")
        batch.create_primary_key("pk_request_ids", ["request_id"])
        batch.drop_column("tenant_id")
    op.drop_index("uq_training_runs_active_model", table_name="training_runs")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_index("ix_training_runs_tenant_id_status")
        batch.drop_constraint("fk_training_runs_tenant_id_tenants", type_="foreignkey")
        batch.drop_column("tenant_id")
    _active_index(drop_first=op.get_context().dialect.name == "sqlite")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_tenant_id_created_at")
        batch.drop_constraint("fk_datasets_tenant_id_tenants", type_="foreignkey")
        batch.drop_constraint("pk_datasets", type_="primary")
        batch.create_primary_key("pk_datasets", ["id"])
        batch.drop_column("tenant_id")
    with op.batch_alter_table("models") as batch:
        batch.drop_index("ix_models_tenant_id_created_at")
        batch.drop_constraint("fk_models_tenant_id_tenants", type_="foreignkey")
        batch.drop_column("tenant_id")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
