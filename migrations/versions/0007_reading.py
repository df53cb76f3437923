"""reading modes: how each verdict was read (film first or AI first, time from opening the case to the
verdict, whether and when the AI was shown before it), each user's reading-mode preference, and
assignments of results to a (second) reader.

Plain ADD COLUMNs, all NULL on existing rows ("not known"): no row is updated, so the verdicts'
append-only triggers do not fire; one new table.

Revision ID: 0007
Revises: 0006 (the lead re-chains it after 0006)
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERDICT_COLUMNS = ("reading_mode", "opened_at", "seconds_to_verdict", "ai_revealed", "ai_revealed_after_s")


def upgrade() -> None:
    op.add_column("users", sa.Column("reading_mode", sa.String(length=16), nullable=True))
    op.add_column("verdicts", sa.Column("reading_mode", sa.String(length=16), nullable=True))
    op.add_column("verdicts", sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("verdicts", sa.Column("seconds_to_verdict", sa.Float(), nullable=True))
    op.add_column("verdicts", sa.Column("ai_revealed", sa.Boolean(), nullable=True))
    op.add_column("verdicts", sa.Column("ai_revealed_after_s", sa.Float(), nullable=True))
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("assigned_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["prediction_results.id"],
            name=op.f("fk_assignments_result_id_prediction_results"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name=op.f("fk_assignments_reviewer_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["assigned_by_id"], ["users.id"], name=op.f("fk_assignments_assigned_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignments")),
        sa.UniqueConstraint("result_id", "reviewer_id", name="uq_assignments_result_reviewer"),
    )
    op.create_index("ix_assignments_result_id", "assignments", ["result_id"], unique=False)
    op.create_index("ix_assignments_reviewer_id", "assignments", ["reviewer_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_assignments_reviewer_id", table_name="assignments")
    op.drop_index("ix_assignments_result_id", table_name="assignments")
    op.drop_table("assignments")
    for column in VERDICT_COLUMNS:
        op.drop_column("verdicts", column)  # SQLite ≥ 3.35 drops a column in place
    op.drop_column("users", "reading_mode")
