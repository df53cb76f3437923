"""reviewers' boxes on a verdict: `verdicts.regions`, a JSON list of {"kind", "box"} ("wrong_evidence":
where the model looked and should not; "finding": where the finding really is; boxes as fractions of
the film). Stored with the verdict, so append-only like it.

Verdicts given before this revision get [] (no boxes). A plain ADD/DROP COLUMN with a constant default
on both backends: neither fires the append-only triggers (no row is updated) nor rebuilds the table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("verdicts", sa.Column("regions", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    op.drop_column("verdicts", "regions")  # SQLite ≥ 3.35 drops a column in place
