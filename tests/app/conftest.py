"""Fixtures of the service tests: a real app (real bundled model, files in a temp dir) and real films.

`make_env(tmp_dir, **settings)` builds one app with a reviewer and an admin (each with an API
token) and enters its TestClient; modules share one env where their tests do not interfere.

Every test that uses `env` or `make_env` runs twice: on SQLite (a file in the data dir) and on
PostgreSQL (a fresh database per data dir on the suite's throwaway cluster; marker `postgres`).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from app.config import Settings
from app.main import create_app
from app.models import Base
from app.services import accounts

SOURCES = ("kermany", "cohen", "hannover")


@dataclass
class Film:
    source: str
    label: str
    path: Path

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def size(self) -> tuple[int, int]:
        with Image.open(self.path) as img:
            return img.size


@pytest.fixture(scope="session")
def films(cxr_data_dir: Path) -> dict[str, Film]:
    """The first film (manifest order) of each source: one pediatric Kermany, one Cohen, one Hannover."""
    chosen: dict[str, Film] = {}
    with open(cxr_data_dir / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["source"] in SOURCES and row["source"] not in chosen:
                chosen[row["source"]] = Film(row["source"], row["label"], cxr_data_dir / row["path"])
    assert set(chosen) == set(SOURCES), f"manifest lacks a source: {set(SOURCES) - set(chosen)}"
    return chosen


@dataclass
class Env:
    app: FastAPI
    client: TestClient
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    announced: list[str] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        """Shut the app down (lifespan end, engine disposed), e.g. before restarting on the same data dir."""
        self.stack.close()

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def session(self) -> Any:
        return self.app.state.ctx.session_factory()

    def count(self, model: type[Base]) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def files(self, *folders: str) -> list[Path]:
        root = self.settings.data_dir
        return sorted(p for f in folders for p in (root / f).rglob("*") if p.is_file())

    def upload(self, data: bytes, who: str = "reviewer", name: str = "film.jpg", **form: str) -> Any:
        return self.client.post(
            "/api/v1/predictions",
            headers=self.auth(who),
            files={"file": (name, data, "application/octet-stream")},
            data=form or None,
        )


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, env="development", **overrides)


def start_env(stack: ExitStack, data_dir: Path, *, users: bool = True, **overrides: Any) -> Env:
    announced: list[str] = []
    settings = settings_for(data_dir, **overrides)
    app = create_app(settings, announce=announced.append)
    own = ExitStack()
    stack.callback(own.close)
    client = own.enter_context(TestClient(app))
    env = Env(app=app, client=client, settings=app.state.ctx.settings, announced=announced, stack=own)
    if users:
        with env.session() as s:
            for name, role in (("reviewer", "reviewer"), ("admin2", "admin")):
                existing = accounts.get_user_by_name(session=s, username=name)
                user = existing or accounts.create_user(session=s, username=name, password="correct horse", role=role)
                env.tokens[role] = accounts.create_api_token(session=s, user=user).token
    return env


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_engine(request: pytest.FixtureRequest) -> str:
    """The engine the module's apps run on."""
    return str(request.param)


def new_database_url(request: pytest.FixtureRequest, engine: str) -> str | None:
    """None (SQLite in the data dir) or the URL of a new, empty PostgreSQL database."""
    if engine == "sqlite":
        return None
    return request.getfixturevalue("postgres_cluster").create_database(f"app_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, database_engine: str
) -> Iterator[Env]:
    """One app per test module (files in a fresh temp data dir; SQLite there, or a new PostgreSQL database)."""
    with ExitStack() as stack:
        url = new_database_url(request, database_engine)
        yield start_env(stack, tmp_path_factory.mktemp("data"), database_url=url)


class EnvFactory:
    """`make_env(data_dir=None, **settings)`: an app on `data_dir` (default tmp_path/data). The same data
    dir always gets the same database, so a second call is a restart; `database_url=` overrides."""

    def __init__(self, stack: ExitStack, tmp_path: Path, request: pytest.FixtureRequest, engine: str) -> None:
        self.stack, self.tmp_path, self.request, self.engine = stack, tmp_path, request, engine
        self.urls: dict[Path, str | None] = {}

    def url_for(self, data_dir: Path | None = None) -> str | None:
        """The database URL the apps on `data_dir` use (None: SQLite in the data dir)."""
        data_dir = data_dir or self.tmp_path / "data"
        if data_dir not in self.urls:
            self.urls[data_dir] = new_database_url(self.request, self.engine)
        return self.urls[data_dir]

    def __call__(self, data_dir: Path | None = None, **overrides: Any) -> Env:
        data_dir = data_dir or self.tmp_path / "data"
        overrides.setdefault("database_url", self.url_for(data_dir))
        return start_env(self.stack, data_dir, **overrides)


@pytest.fixture(scope="module")
def uploaded(env: Env, films: dict[str, Film]) -> dict[str, dict[str, Any]]:
    """Each film (Kermany, Cohen, Hannover) uploaded once by the reviewer into the module's `env`, with the
    active model (JSON replies keyed by source)."""
    replies = {}
    for source, film in films.items():
        r = env.upload(film.data, name=film.path.name)
        assert r.status_code == 201, r.text
        replies[source] = r.json()
    return replies


@pytest.fixture
def make_env(tmp_path: Path, request: pytest.FixtureRequest, database_engine: str) -> Iterator[EnvFactory]:
    """Factory for tests that need their own settings or a restart on the same data dir."""
    with ExitStack() as stack:
        yield EnvFactory(stack, tmp_path, request, database_engine)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
