"""The same database code on PostgreSQL (psycopg 3): migrations, a prediction/verdict round trip,
append-only verdicts. Uses the suite's throwaway cluster (tests/support/postgres.py)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from app.db import make_engine
from tests.app.conftest import Film, start_env
from tests.app.test_migrations import check_upgrade_downgrade
from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.postgres


def test_postgres_migrations_upgrade_and_downgrade_cleanly(postgres_cluster: PostgresCluster) -> None:
    engine = make_engine(postgres_cluster.create_database("cxr_migrations"))
    try:
        check_upgrade_downgrade(engine)
    finally:
        engine.dispose()


def test_prediction_and_verdict_round_trip_on_postgres(
    postgres_cluster: PostgresCluster, films: dict[str, Film], tmp_path: Path
) -> None:
    url = postgres_cluster.create_database("cxr_roundtrip")
    with ExitStack() as stack:  # not make_env: that one runs every test on both engines already
        env = start_env(stack, tmp_path / "pg-data", database_url=url)
        assert env.app.state.ctx.engine.dialect.name == "postgresql"
        case = env.upload(films["hannover"].data).json()
        again = env.upload(films["hannover"].data).json()  # same bytes: one image row (ON CONFLICT path)
        assert again["image_sha256"] == case["image_sha256"]
        verdict = env.client.post(
            f"/api/v1/predictions/{case['id']}/verdicts",
            headers=env.auth("reviewer"),
            json={
                "model_id": case["results"][0]["model_id"],
                "verdict": "reject",
                "reasons": ["text_or_marker"],
                "diagnosis": "covid19",
            },
        )
        assert verdict.status_code == 201, verdict.text
        worklist = env.client.get("/api/v1/predictions", headers=env.auth("reviewer")).json()
        assert [i["prediction_id"] for i in worklist["items"]] == [again["id"]]
        export = env.client.get("/api/v1/verdicts?format=json", headers=env.auth("reviewer")).json()["verdicts"]
        assert [(r["verdict_id"], r["image_sha256"], r["checkpoint_sha256"]) for r in export] == [
            (verdict.json()["id"], case["image_sha256"], case["results"][0]["checkpoint_sha256"])
        ]
        with env.session() as s, pytest.raises(DatabaseError, match="append-only"):
            s.execute(text("UPDATE verdicts SET comment = 'rewritten'"))
        # Nothing lives in the data dir's SQLite file: the database is PostgreSQL.
        assert not (env.settings.data_dir / "cxr-review.sqlite3").exists()
