"""Alembic: upgrade from empty, the schema equals the ORM models, downgrade back to empty (SQLite);
rows written under an older revision survive the upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from app.db import current_revision, downgrade_database, make_engine, upgrade_database
from app.models import Base, PredictionResult, Verdict
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
    "assignments",
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


def test_verdicts_written_at_0003_upgrade_to_no_regions_and_downgrade_keeps_them(tmp_path: Path) -> None:
    """0005 adds `verdicts.regions`: older verdicts read [] (no boxes), new ones keep theirs; the downgrade
    drops the column and no verdict (append-only: triggers refuse updates and deletes) is lost."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    now = "2026-11-30 10:00:00+00:00"
    try:
        upgrade_database(engine, "0003")
        with engine.begin() as conn:
            for sql in (
                "INSERT INTO users (id, username, password_hash, role, active, must_change_password, created_at)"
                " VALUES (1, 'dr', 'x', 'reviewer', 1, 0, :now)",
                "INSERT INTO models (id, name, architecture, version, checkpoint_path, checkpoint_sha256, active,"
                " metrics, classes, input_size, cam_method, hparams, created_at) VALUES (1, 'm', 'resnet18', 1,"
                " '/m.pt', :sha, 1, '{}', '[]', 224, 'cam', '{}', :now)",
                "INSERT INTO images (id, sha256, format, width, height, byte_size, meta, created_at)"
                " VALUES (1, :sha, 'png', 8, 8, 10, '{}', :now)",
                "INSERT INTO predictions (id, image_id, created_at) VALUES (1, 1, :now)",
                "INSERT INTO prediction_results (id, prediction_id, model_id, model_version, checkpoint_sha256,"
                " architecture, probabilities, predicted_class, top_probability, cam_method, cam_sha256, created_at)"
                " VALUES (1, 1, 1, 1, :sha, 'resnet18', '{}', 'normal', 0.7, 'cam', :sha, :now)",
                "INSERT INTO verdicts (id, result_id, prediction_id, model_id, reviewer_id, verdict, reasons, comment,"
                " diagnosis, created_at) VALUES (1, 1, 1, 1, 1, 'reject', '[]', 'old', NULL, :now)",
            ):
                conn.execute(text(sql), {"sha": "a" * 64, "now": now})
        upgrade_database(engine)
        box = [{"kind": "wrong_evidence", "box": [0.1, 0.2, 0.3, 0.4]}]
        with Session(engine) as session:
            old = session.get(Verdict, 1)
            assert old is not None and old.regions == []
            session.add(Verdict(id=2, result_id=1, prediction_id=1, model_id=1, reviewer_id=1, verdict="reject",
                                reasons=[], comment="new", regions=box))  # fmt: skip
            session.commit()
        with Session(engine) as session:
            assert [v.regions for v in session.scalars(select(Verdict).order_by(Verdict.id))] == [[], box]
        downgrade_database(engine, "0003")
        with engine.connect() as conn:
            assert "regions" not in {c["name"] for c in inspect(engine).get_columns("verdicts")}
            assert conn.execute(text("SELECT comment FROM verdicts ORDER BY id")).scalars().all() == ["old", "new"]
        upgrade_database(engine)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()
