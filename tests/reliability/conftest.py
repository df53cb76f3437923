"""Fixtures of the reliability tests: the database engines every database-facing test runs on.

`database` is parametrized over SQLite (a file in the test's data dir) and PostgreSQL (a fresh
database on the suite's throwaway cluster, tests/support/postgres.py); the PostgreSQL cases carry the
`postgres` marker and are part of the default run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from tests.app.conftest import films  # noqa: F401  (real films from ../shared/data)

ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@dataclass(frozen=True)
class Database:
    engine: str
    url: str | None
    """None: the default SQLite file under the data dir."""


def new_database(request: pytest.FixtureRequest, engine: str) -> Database:
    if engine == "sqlite":
        return Database("sqlite", None)
    cluster = request.getfixturevalue("postgres_cluster")
    return Database("postgresql", cluster.create_database(f"rel_{uuid.uuid4().hex[:16]}"))


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest) -> Database:
    """A new, empty database per test, on each engine."""
    return new_database(request, request.param)


@pytest.fixture(scope="module", params=ENGINES)
def module_database(request: pytest.FixtureRequest) -> Database:
    """A new, empty database per test module, on each engine."""
    return new_database(request, request.param)
