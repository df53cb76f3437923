"""Security properties end to end: CSRF on every browser form and cookie-authenticated API write,
cookie flags, headers on error replies too, secrets stored only as hashes, login throttling, token
revocation, session fixation. Generated from the route table where it applies. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from app.config import Settings
from app.deps import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from app.main import create_app
from app.models import ApiToken, AuditEntry, Base, MLModel, Prediction, TrainingJob, User, Verdict, WebSession
from app.services import accounts
from tests.app.conftest import Env, start_env
from tests.reliability.conftest import Database
from tests.reliability.support import film_png
from tests.reliability.test_access_matrix import MATRIX, Fixture

PASSWORD = "correct horse"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
COUNTED = (User, ApiToken, WebSession, Prediction, Verdict, TrainingJob, AuditEntry)


@dataclass
class Site:
    env: Env
    fixture: Fixture
    secrets: list[str]
    """Every API token, password and session cookie handed out: none may appear in the database. (A
    session's CSRF token is stored as it is: it is compared, and useless without the session cookie.)"""

    def state(self) -> tuple[Any, ...]:
        with self.env.session() as s:
            counts = tuple(s.scalar(select(func.count()).select_from(m)) for m in COUNTED)
            active = tuple(s.scalars(select(MLModel.id).where(MLModel.active.is_(True))))
            enabled = tuple(s.scalars(select(User.username).where(User.active.is_(True)).order_by(User.id)))
            hashes = tuple(s.scalars(select(User.password_hash).order_by(User.id)))
        return counts, active, enabled, hashes

    def login(self, username: str = "admin2") -> tuple[TestClient, str]:
        """A browser logged in through the login form; returns it and its CSRF token."""
        client = TestClient(self.env.app, follow_redirects=False, raise_server_exceptions=False)
        form = client.get("/login")
        r = client.post(
            "/login", data={"username": username, "password": PASSWORD, "csrf_token": form.context["csrf_token"]}
        )
        assert r.status_code == 303, r.text
        self.secrets.append(client.cookies[SESSION_COOKIE])
        return client, client.get("/upload").context["csrf_token"]


@pytest.fixture(scope="module")
def site(module_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with ExitStack() as stack:
        env = start_env(stack, tmp_path_factory.mktemp("security"), database_url=module_database.url)
        case = env.upload(film_png(seed=5), who="admin").json()
        with env.session() as s:
            accounts.create_user(session=s, username="matrix-target", password=PASSWORD)
        job = env.client.post(
            "/api/v1/training-jobs",
            headers=env.auth("admin"),
            json={"architecture": "cnnx", "scenario": "s1", "epochs": 1, "max_steps_per_epoch": 1},
        )
        assert job.status_code == 202, job.text
        fixture = Fixture(
            env=env,
            prediction_id=case["id"],
            model_id=case["results"][0]["model_id"],
            image_sha256=case["image_sha256"],
            jobs={"any": job.json()["id"]},
        )
        yield Site(env, fixture, [PASSWORD, *env.tokens.values()])


def unsafe_routes(app: Any) -> list[tuple[str, str]]:
    return sorted(
        (method, c.path)
        for c in iter_route_contexts(app.routes)
        if isinstance(c.original_route, APIRoute)
        for method in c.methods or ()
        if method in UNSAFE
    )


@pytest.mark.parametrize("token", ["missing", "wrong", "another session's"])
def test_every_unsafe_route_refuses_a_cookie_request_without_its_csrf_token(site: Site, token: str) -> None:
    """Browser forms and cookie-authenticated API writes, with a valid admin session but no or a wrong
    CSRF token: 403, and nothing changes (no row, no role, no password, no active model, no session)."""
    routes = unsafe_routes(site.env.app)
    assert len(routes) >= 15
    _, other_token = site.login()
    failures = []
    for method, template in routes:
        client, _ = site.login()
        entry = MATRIX[(method, template)]
        url = template.format(**site.fixture.params((method, template)))
        kwargs = entry.body(site.fixture)
        supplied = {"missing": None, "wrong": "forged-token", "another session's": other_token}[token]
        if supplied is not None and ("data" in kwargs or "files" in kwargs):
            kwargs["data"] = {**kwargs.get("data", {}), "csrf_token": supplied}
        headers = {CSRF_HEADER: supplied} if supplied is not None and "json" in kwargs else {}
        if template == "/login":
            client = TestClient(site.env.app, follow_redirects=False, cookies={CSRF_COOKIE: "the-form-token"})
        before = site.state()
        r = client.request(method, url, headers=headers, **kwargs)
        if r.status_code != 403 or site.state() != before:
            failures.append(f"{method} {template}: {r.status_code}, state changed: {site.state() != before}")
        elif not template.startswith("/api/"):
            assert "form has expired" in r.text.lower() or "csrf" in r.text.lower(), template
        else:
            assert CSRF_HEADER in r.json()["detail"], template
    assert failures == []


@pytest.mark.parametrize("env_name", ["production", "development"])
def test_cookies_are_httponly_samesite_and_secure_in_production(tmp_path: Path, env_name: str) -> None:
    """Through the real login form (cookie flags do not depend on the database: SQLite only)."""
    settings = Settings(env=env_name, secret_key="s" * 48, data_dir=tmp_path / env_name)
    app = create_app(settings, announce=lambda _line: None)
    base = "https://cxr.example" if env_name == "production" else "http://testserver"
    with TestClient(app, base_url=base, follow_redirects=False) as client, app.state.ctx.session_factory() as s:
        accounts.create_user(session=s, username="radiologist", password=PASSWORD)
        form = client.get("/login")
        secure = {"secure"} if env_name == "production" else set()
        csrf_cookie = cookie_header(form, CSRF_COOKIE)
        assert {"httponly", "samesite=strict", "path=/"} | secure <= csrf_cookie
        assert ("secure" in csrf_cookie) is (env_name == "production")
        r = client.post(
            "/login", data={"username": "radiologist", "password": PASSWORD, "csrf_token": form.context["csrf_token"]}
        )
        assert r.status_code == 303
        session_cookie = cookie_header(r, SESSION_COOKIE)
        assert {"httponly", "samesite=lax", "path=/", "max-age=43200"} | secure <= session_cookie
        assert ("secure" in session_cookie) is (env_name == "production")


def cookie_header(response: Any, name: str) -> set[str]:
    """The lower-cased attributes of the Set-Cookie header that sets `name`."""
    for value in response.headers.get_list("set-cookie"):
        if value.startswith(f"{name}="):
            return {part.strip().lower() for part in value.split(";")[1:]}
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('set-cookie')}")


def test_error_replies_carry_the_security_headers_too(site: Site) -> None:
    client = site.env.client
    replies = [
        client.get("/no/such/page"),
        client.delete("/api/v1/models", headers=site.env.auth("admin")),
        client.post("/api/v1/users", headers=site.env.auth("admin"), json={"username": ""}),
        client.post(
            "/api/v1/predictions",
            headers={**site.env.auth("admin"), "Content-Length": str(10**9), "Content-Type": "multipart/form-data"},
            content=b"",
        ),
        client.get("/api/v1/models", headers={"Authorization": "Bearer nope"}),
    ]
    assert [r.status_code for r in replies] == [404, 405, 422, 413, 401]
    for r in replies:
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.status_code
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "upload limit" in replies[3].json()["detail"]


def test_films_are_served_as_png_with_nosniff_and_no_cross_origin_access(site: Site) -> None:
    r = site.env.client.get(
        f"/api/v1/images/{site.fixture.image_sha256}.png",
        headers={**site.env.auth("reviewer"), "Origin": "https://evil.example"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in r.headers


def test_no_secret_is_stored_in_clear(site: Site) -> None:
    """Passwords as argon2id hashes; API tokens and session cookies as sha256; no token, password or
    cookie value handed out in this module appears in any column of any table (nor, on SQLite, in the
    database file and its WAL)."""
    site.login("reviewer")
    with site.env.session() as s:
        hashes = list(s.scalars(select(User.password_hash)))
        assert hashes and all(h.startswith("$argon2id$") for h in hashes)
        stored_tokens = set(s.scalars(select(ApiToken.token_hash)))
        assert {accounts.security.token_hash(t) for t in site.env.tokens.values()} <= stored_tokens
        dump = []
        for table in Base.metadata.sorted_tables:
            dump += [repr(tuple(row)) for row in s.execute(text(f"SELECT * FROM {table.name}"))]
    everything = "\n".join(dump)
    leaked = [secret[:8] + "…" for secret in site.secrets if secret in everything]
    assert leaked == []
    if site.env.app.state.ctx.engine.dialect.name == "sqlite":
        raw = b"".join(p.read_bytes() for p in site.env.settings.data_dir.glob("cxr-review.sqlite3*"))
        assert [s[:8] for s in site.secrets if s.encode() in raw] == []


def test_login_is_throttled_after_repeated_failures_then_recovers(tmp_path: Path, database: Database) -> None:
    with ExitStack() as stack:
        env = start_env(
            stack, tmp_path / "throttle", database_url=database.url, login_max_failures=3, login_window_seconds=3
        )
        client = TestClient(env.app, follow_redirects=False)
        token = client.get("/login").context["csrf_token"]

        def attempt(password: str) -> Any:
            return client.post("/login", data={"username": "reviewer", "password": password, "csrf_token": token})

        assert [attempt("guess-1").status_code for _ in range(3)] == [401, 401, 401]
        refused = attempt(PASSWORD)  # the right password, but too late
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 4
        assert SESSION_COOKIE not in refused.cookies
        unknown = client.post("/login", data={"username": "nobody-here", "password": "x" * 9, "csrf_token": token})
        assert unknown.status_code == 401  # the same answer as a wrong password: no user enumeration
        time.sleep(3.5)
        assert attempt(PASSWORD).status_code == 303


def test_revoked_tokens_and_ended_sessions_stop_working_at_once(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import main as cli

    env = site.env
    with env.session() as s:
        user = accounts.get_user_by_name(session=s, username="matrix-target")
        issued = [accounts.create_api_token(session=s, user=user).token for _ in range(3)]
    site.secrets += issued
    for t in issued:
        assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {t}"}).status_code == 200
    monkeypatch.setenv("CXR_DATA_DIR", str(env.settings.data_dir))
    if env.app.state.ctx.engine.dialect.name == "postgresql":
        monkeypatch.setenv("CXR_DATABASE_URL", env.app.state.ctx.engine.url.render_as_string(hide_password=False))
    assert cli(["tokens", "revoke", issued[0][:12]]) == 0  # by its prefix, as `tokens list` shows it
    assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {issued[0]}"}).status_code == 401
    assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {issued[1]}"}).status_code == 200
    assert cli(["tokens", "revoke", "--all", "matrix-target"]) == 0
    for t in issued:
        assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {t}"}).status_code == 401

    # A session ends with logout, and a password change ends the user's other sessions.
    first, token = site.login("reviewer")
    second, _ = site.login("reviewer")
    assert first.get("/worklist").status_code == 200
    assert first.post("/logout", data={"csrf_token": token}).status_code == 303
    assert first.get("/worklist").status_code == 303
    with env.session() as s:
        accounts.set_password(
            session=s, user=accounts.get_user_by_name(session=s, username="reviewer"), password=PASSWORD
        )
    assert second.get("/worklist").status_code == 303


def test_login_never_adopts_a_session_id_chosen_by_someone_else(site: Site) -> None:
    client = TestClient(site.env.app, follow_redirects=False, cookies={SESSION_COOKIE: "planted-by-attacker"})
    form = client.get("/login")
    assert form.status_code == 200  # an unknown cookie is no session
    r = client.post(
        "/login", data={"username": "reviewer", "password": PASSWORD, "csrf_token": form.context["csrf_token"]}
    )
    issued = re.search(rf"{SESSION_COOKIE}=([^;]+)", r.headers["set-cookie"])
    assert issued and issued.group(1) != "planted-by-attacker"
