"""lung focus of each prediction result: per-class scores, the predicted class's score (indexed, for
the worklist's "flagged first"), the lung mask and segmenter that produced them, the lung-crop box.

Every column is nullable: results stored before this revision keep NULLs, which the service reads
as "lung focus not computed" (never recomputed behind the reviewer's back: their verdicts were given
without it). Plain ADD/DROP COLUMN on both backends, never a batch table rebuild: rebuilding
prediction_results on SQLite would have to drop a table the append-only verdicts reference.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "prediction_results"
SCORE_INDEX = "ix_prediction_results_lung_focus_score"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("lung_focus", sa.JSON(none_as_null=True), nullable=True))
    op.add_column(TABLE, sa.Column("lung_focus_score", sa.Float(), nullable=True))
    op.add_column(TABLE, sa.Column("lung_mask_sha256", sa.String(length=64), nullable=True))
    op.add_column(TABLE, sa.Column("lungseg_sha256", sa.String(length=64), nullable=True))
    op.add_column(TABLE, sa.Column("input_box", sa.JSON(none_as_null=True), nullable=True))
    op.create_index(SCORE_INDEX, TABLE, ["lung_focus_score"], unique=False)


def downgrade() -> None:
    op.drop_index(SCORE_INDEX, table_name=TABLE)
    for column in ("input_box", "lungseg_sha256", "lung_mask_sha256", "lung_focus_score", "lung_focus"):
        op.drop_column(TABLE, column)  # SQLite ≥ 3.35 drops a column in place
