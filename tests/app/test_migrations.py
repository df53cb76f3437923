"""Alembic: upgrade from empty, the schema equals the ORM models, downgrade back to empty (SQLite);
rows written under an older revision survive the upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session

from app.db import current_revision, downgrade_database, make_engine, upgrade_database
from app.models import Base, PredictionResult
from app.services import lung_focus

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
    "pacs_instances",
    "dicom_exports",
}


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from app.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


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


def test_results_written_at_0002_upgrade_to_not_computed_lung_focus(tmp_path: Path) -> None:
    """A result row of the previous release (0002) gains NULL lung-focus columns, read as "not computed"."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        upgrade_database(engine, "0002")
        now = "2026-11-20 10:00:00+00:00"
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO models (id, name, architecture, version, checkpoint_path, checkpoint_sha256, active,"
                    " metrics, classes, input_size, cam_method, hparams, created_at) VALUES (1, 'm', 'resnet18', 1,"
                    " '/m.pt', :sha, 1, '{}', '[]', 224, 'cam', '{}', :now)"
                ),
                {"sha": "a" * 64, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO images (id, sha256, format, width, height, byte_size, meta, created_at)"
                    " VALUES (1, :sha, 'png', 8, 8, 10, '{}', :now)"
                ),
                {"sha": "b" * 64, "now": now},
            )
            conn.execute(text("INSERT INTO predictions (id, image_id, created_at) VALUES (1, 1, :now)"), {"now": now})
            conn.execute(
                text(
                    "INSERT INTO prediction_results (id, prediction_id, model_id, model_version, checkpoint_sha256,"
                    " architecture, probabilities, predicted_class, top_probability, cam_method, cam_sha256,"
                    " created_at) VALUES (1, 1, 1, 1, :sha, 'resnet18',"
                    ' \'{"normal": 0.7, "bacterial": 0.1, "viral": 0.1, "covid19": 0.1}\','
                    " 'normal', 0.7, 'cam', :cam, :now)"
                ),
                {"sha": "a" * 64, "cam": "c" * 64, "now": now},
            )
        upgrade_database(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT lung_focus, lung_focus_score, lung_mask_sha256, lungseg_sha256, input_box, top_probability"
                    " FROM prediction_results"
                )
            ).one()
        assert tuple(row) == (None, None, None, None, None, 0.7)
        with Session(engine) as session:
            result = session.get(PredictionResult, 1)
            assert result is not None and result.lung_focus is None and result.input_box is None
            assert lung_focus.by_class(result, 0.5) is None and lung_focus.of_predicted_class(result, 0.5) is None
    finally:
        engine.dispose()
