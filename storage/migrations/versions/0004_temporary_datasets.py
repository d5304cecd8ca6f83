"""datasets.temporary: the data a run brought inline is deleted once no run needs it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 11:00:00

What happens to existing data: every dataset stored so far stays, as permanent (uploaded) data;
only data brought inline from now on is temporary. Downgrading drops the column: temporary
datasets left then stay, as the older schema kept every dataset.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("temporary", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("temporary", server_default=None, existing_type=sa.Boolean())


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("temporary")
