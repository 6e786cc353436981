"""jobs.tags and jobs.note: a user's labels and free-text note on a job (PATCH /v1/jobs/{id})

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 00:00:01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER most things; Alembic rebuilds the table there, ALTERs on Postgres.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tags", JSON_TYPE, nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("note")
        batch.drop_column("tags")
