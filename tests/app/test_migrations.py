"""Alembic: upgrade from empty, the schema equals the ORM models, downgrade back to empty (SQLite)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from app.db import current_revision, downgrade_database, make_engine, upgrade_database
from app.models import Base

TABLES = {
    "users",
    "api_tokens",
    "web_sessions",
    "login_attempts",
    "models",
    "images",
    "predictions",
    "prediction_results",
    "verdicts",
    "training_jobs",
    "audit_log",
}


def schema_diff(engine: Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def check_upgrade_downgrade(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade_database(engine)
    assert current_revision(engine) is not None
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert schema_diff(engine) == []  # migrations and models describe the same schema
    upgrade_database(engine)  # idempotent: a second start changes nothing
    downgrade_database(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(engine) is None
    upgrade_database(engine)  # and up again from the downgraded state
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_sqlite_migrations_upgrade_and_downgrade_cleanly(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        check_upgrade_downgrade(engine)
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    finally:
        engine.dispose()
