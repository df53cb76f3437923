"""error risk and warnings of each prediction result: `error_risk` (indexed: the worklist's default
priority), `error_risk_reason`, `warnings` ([{"code", "message"}]) and the `risk_signals` they came from.

Every column is nullable: results stored before this revision keep NULLs, read as "no error risk"
with the reason "stored before error risk existed" (never recomputed behind a reviewer's back). Plain
ADD/DROP COLUMN on both backends, never a batch table rebuild (prediction_results is referenced by the
append-only verdicts).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "prediction_results"
RISK_INDEX = "ix_prediction_results_error_risk"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("error_risk", sa.Float(), nullable=True))
    op.add_column(TABLE, sa.Column("error_risk_reason", sa.Text(), nullable=True))
    op.add_column(TABLE, sa.Column("warnings", sa.JSON(none_as_null=True), nullable=True))
    op.add_column(TABLE, sa.Column("risk_signals", sa.JSON(none_as_null=True), nullable=True))
    op.create_index(RISK_INDEX, TABLE, ["error_risk"], unique=False)


def downgrade() -> None:
    op.drop_index(RISK_INDEX, table_name=TABLE)
    for column in ("risk_signals", "warnings", "error_risk_reason", "error_risk"):
        op.drop_column(TABLE, column)  # SQLite ≥ 3.35 drops a column in place
