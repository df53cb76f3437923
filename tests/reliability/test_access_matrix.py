"""Who reaches what: every route of the app × {anonymous, reviewer, admin, a revoked token, an expired
session}, with the exact status each must get.

The routes come from the app's own route table, so a route added later without an entry in `MATRIX`
fails `test_every_route_has_an_entry` (nobody can add an unprotected route silently), and an entry
whose route is gone fails it too. Identities, as a real client would present them:

- API routes (/api/..., /openapi.json): reviewer and admin send their Bearer token; the expired
  session sends its cookie and its CSRF header; anonymous sends nothing.
- Pages: reviewer and admin send a fresh session cookie and put its CSRF token in every form;
  anonymous and the expired session carry the login form's CSRF cookie and token, as a browser would
  (a page rendered after the session expired holds the anonymous token).
- Revoked: another reviewer's token, revoked, as a Bearer header (it must never fall back to anonymous).

Every reply must also carry the security headers (CSP without inline script, nosniff, frame-ancestors).
API refusals are JSON (401 with WWW-Authenticate, 403); pages send anonymous visitors to /login (303).
Runs on SQLite and PostgreSQL (the expiry is compared by the database).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.deps import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from app.models import AuditEntry, MLModel, TrainingJob, WebSession, utcnow
from app.services import accounts, training
from tests.app.conftest import Env, start_env
from tests.reliability.conftest import Database
from tests.reliability.support import film_png
from tests.support.checkpoints import write_untrained_cnnx

IDENTITIES = ("anonymous", "revoked", "expired", "reviewer", "admin")
PASSWORD = "correct horse"  # tests.app.conftest's users
ANON_CSRF = "anonymous-csrf-token-of-the-login-form"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


# ------------------------------------------------------------------------- expected statuses
def api_user(ok: int = 200) -> dict[str, int]:
    return {"anonymous": 401, "revoked": 401, "expired": 401, "reviewer": ok, "admin": ok}


def api_admin(ok: int = 200) -> dict[str, int]:
    return {"anonymous": 401, "revoked": 401, "expired": 401, "reviewer": 403, "admin": ok}


def page_user(ok: int = 200) -> dict[str, int]:
    return {"anonymous": 303, "revoked": 401, "expired": 303, "reviewer": ok, "admin": ok}


def page_admin(ok: int = 200) -> dict[str, int]:
    return {"anonymous": 303, "revoked": 401, "expired": 303, "reviewer": 403, "admin": ok}


def public(ok: int = 200, revoked: int | None = None) -> dict[str, int]:
    return {i: ok for i in IDENTITIES} | ({"revoked": revoked} if revoked is not None else {})


@dataclass
class Fixture:
    """Ids the path templates are filled with, and counters for bodies that must be unique."""

    env: Env
    prediction_id: int
    model_id: int
    image_sha256: str
    jobs: dict[str, int]
    counter: Iterator[int] = field(default_factory=itertools.count)

    def params(self, route: tuple[str, str]) -> dict[str, Any]:
        job = self.jobs.get(f"{route[0]} {route[1]}", self.jobs["any"])
        return {
            "prediction_id": self.prediction_id,
            "model_id": self.model_id,
            "cls": "normal",
            "image_sha256": self.image_sha256,
            "name": "curves" if "charts" in route[1] else "swagger-ui.css",
            "username": "matrix-target",
            "job_id": job,
        }


Body = Callable[[Fixture], dict[str, Any]]


def none(_f: Fixture) -> dict[str, Any]:
    return {}


def upload_body(f: Fixture) -> dict[str, Any]:
    return {"files": {"file": (f"m{next(f.counter)}.png", film_png(seed=70_000 + next(f.counter)), "image/png")}}


def verdict_json(f: Fixture) -> dict[str, Any]:
    return {"json": {"model_id": f.model_id, "verdict": "approve", "comment": "matrix"}}


def verdict_form(f: Fixture) -> dict[str, Any]:
    return {"data": {"model_id": str(f.model_id), "verdict": "approve", "comment": "matrix"}}


def user_json(f: Fixture) -> dict[str, Any]:
    return {"json": {"username": f"matrix-user-{next(f.counter)}", "role": "reviewer"}}


def user_form(f: Fixture) -> dict[str, Any]:
    return {"data": {"username": f"matrix-form-{next(f.counter)}", "role": "reviewer", "password": "long enough pw"}}


def job_json(_f: Fixture) -> dict[str, Any]:
    return {"json": {"architecture": "cnnx", "scenario": "s1", "epochs": 1, "max_steps_per_epoch": 1}}


def job_form(_f: Fixture) -> dict[str, Any]:
    return {
        "data": {"architecture": "cnnx", "scenario": "s1", "epochs": "1", "batch_size": "4", "learning_rate": "0.001"}
        | {"seed": "0", "max_steps_per_epoch": "1"}
    }


def login_form(_f: Fixture) -> dict[str, Any]:
    return {"data": {"username": "reviewer", "password": PASSWORD, "next": "/worklist"}}


def password_form(_f: Fixture) -> dict[str, Any]:
    return {"data": {"current": PASSWORD, "new": PASSWORD, "repeat": PASSWORD}}


def deactivate_form(_f: Fixture) -> dict[str, Any]:
    return {"data": {"active": "false"}}


def role_form(_f: Fixture) -> dict[str, Any]:
    return {"data": {"role": "admin"}}


def reading_mode_form(_f: Fixture) -> dict[str, Any]:
    return {"data": {"reading_mode": "film_first"}}


def assign_form(f: Fixture) -> dict[str, Any]:
    """A fresh reader each time: an assignment to someone who has read the case already is refused."""
    name = f"matrix-reader-{next(f.counter)}"
    with f.env.session() as s:
        accounts.create_user(session=s, username=name, password=PASSWORD, role="reviewer")
    return {"data": {"prediction_id": str(f.prediction_id), "model_id": str(f.model_id), "reviewer": name}}


@dataclass(frozen=True)
class Entry:
    statuses: dict[str, int]
    body: Body = none
    url: str | None = None
    """Overrides the path template (e.g. a file under a mount)."""


MATRIX: dict[tuple[str, str], Entry] = {
    # --------------------------------------------------------------------------------- REST API
    ("GET", "/api/v1/health"): Entry(public()),
    ("GET", "/api/v1/me"): Entry(api_user()),
    ("GET", "/api/v1/models"): Entry(api_user()),
    ("POST", "/api/v1/models/{model_id}/activate"): Entry(api_admin()),
    ("POST", "/api/v1/predictions"): Entry(api_user(201), upload_body),
    ("GET", "/api/v1/predictions"): Entry(api_user()),
    ("GET", "/api/v1/predictions/{prediction_id}"): Entry(api_user()),
    ("GET", "/api/v1/predictions/{prediction_id}/overlays/{model_id}/{cls}.png"): Entry(api_user()),
    ("GET", "/api/v1/predictions/{prediction_id}/lung-outline/{model_id}.png"): Entry(api_user()),
    ("GET", "/api/v1/images/{image_sha256}.png"): Entry(api_user()),
    ("GET", "/api/v1/predictions/{prediction_id}/heat-maps/{model_id}/{cls}.png"): Entry(api_user()),
    ("GET", "/api/v1/images/{image_sha256}/thumbnail.jpg"): Entry(api_user()),
    # the site's film is a PNG: a signed-in reader gets the 404 that says it has only 8 bits (the DICOM
    # answers are tests/app/test_film_values.py); nobody else learns even that
    ("GET", "/api/v1/images/{image_sha256}/values.json"): Entry(api_user(404)),
    ("GET", "/api/v1/images/{image_sha256}/values.u16"): Entry(api_user(404)),
    ("POST", "/api/v1/predictions/{prediction_id}/verdicts"): Entry(api_user(201), verdict_json),
    ("GET", "/api/v1/verdicts"): Entry(api_user()),
    ("GET", "/api/v1/users"): Entry(api_admin()),
    ("POST", "/api/v1/users"): Entry(api_admin(201), user_json),
    ("POST", "/api/v1/training-jobs"): Entry(api_admin(202), job_json),
    ("GET", "/api/v1/training-jobs"): Entry(api_admin()),
    ("GET", "/api/v1/training-jobs/{job_id}"): Entry(api_admin()),
    ("POST", "/api/v1/training-jobs/{job_id}/cancel"): Entry(api_admin()),
    ("GET", "/api/v1/training-jobs/{job_id}/report"): Entry(api_admin(409)),  # queued: no report yet
    ("GET", "/api/v1/training-jobs/{job_id}/charts/{name}.png"): Entry(api_admin(404)),  # queued: no charts
    ("GET", "/api/v1/architectures"): Entry(api_admin()),
    ("GET", "/api/v1/training-datasets"): Entry(api_admin()),
    ("GET", "/api/v1/audit-log"): Entry(api_admin()),
    ("GET", "/api/v1/analytics"): Entry(api_admin()),
    # ------------------------------------------------------------------ schema and Swagger UI
    ("GET", "/openapi.json"): Entry(api_user()),
    ("GET", "/docs"): Entry(page_user()),
    ("GET", "/docs/assets/{name}"): Entry(public()),  # library assets, like /static
    ("GET", "/static"): Entry(public(), url="/static/css/review.css"),
    # ------------------------------------------------------------------------------------ pages
    ("GET", "/"): Entry(page_user(303)),  # → /worklist
    ("GET", "/login"): Entry(public(revoked=401) | {"reviewer": 303, "admin": 303}),  # logged in → next
    ("POST", "/login"): Entry(public(303, revoked=403), login_form),  # revoked: no CSRF cookie
    ("POST", "/logout"): Entry(public(303, revoked=401)),
    ("GET", "/account"): Entry(page_user()),
    ("POST", "/account/reading-mode"): Entry(page_user(), reading_mode_form),
    ("GET", "/account/password"): Entry(page_user()),
    ("POST", "/account/password"): Entry(page_user(303), password_form),
    ("GET", "/upload"): Entry(page_user()),
    ("POST", "/upload"): Entry(page_user(303), upload_body),
    ("GET", "/cases/{prediction_id}"): Entry(page_user()),
    ("GET", "/cases/{prediction_id}/compare"): Entry(page_user()),
    ("POST", "/cases/{prediction_id}/verdicts"): Entry(page_user(303), verdict_form),
    ("GET", "/cases/{prediction_id}/verdicts"): Entry(page_user(303)),  # → the case page
    ("GET", "/legend/colorbar.png"): Entry(page_user()),
    ("GET", "/worklist"): Entry(page_user()),
    ("GET", "/export"): Entry(page_user()),
    ("GET", "/models"): Entry(page_user()),
    ("GET", "/models/{model_id}/activate"): Entry(page_admin()),  # the confirmation page
    ("POST", "/models/{model_id}/activate"): Entry(page_admin(303)),  # unconfirmed: → the confirmation page
    ("POST", "/admin/assignments"): Entry(page_admin(303), assign_form),
    ("GET", "/admin/analytics"): Entry(page_admin()),
    ("GET", "/admin/users"): Entry(page_admin()),
    ("POST", "/admin/users"): Entry(page_admin(201), user_form),
    ("POST", "/admin/users/{username}/active"): Entry(page_admin(303), deactivate_form),
    ("POST", "/admin/users/{username}/role"): Entry(page_admin(303), role_form),
    ("GET", "/admin/training"): Entry(page_admin()),
    ("POST", "/admin/training"): Entry(page_admin(303), job_form),
    ("GET", "/admin/training/{job_id}"): Entry(page_admin()),
    ("POST", "/admin/training/{job_id}/cancel"): Entry(page_admin(303)),
    ("POST", "/admin/training/models/{model_id}/activate"): Entry(page_admin(303)),
    ("GET", "/admin/audit"): Entry(page_admin()),
}
LOGOUT_ANONYMOUS = {"/logout"}  # answers 303 → /login for anyone without a session, by design


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/openapi.json"


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves; a mount counts as GET of its prefix."""
    routes = set()
    for context in iter_route_contexts(app.routes):
        methods = context.methods or {"GET"}
        routes |= {(m, context.path) for m in methods if m != "HEAD"}
    return routes


# --------------------------------------------------------------------------------- the site
@dataclass
class Site:
    env: Env
    fixture: Fixture
    revoked_token: str


@pytest.fixture(scope="module")
def site(module_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("matrix")
    write_untrained_cnnx(data_dir / "models" / "cnnx-untrained.pt")  # a second, inactive model
    with ExitStack() as stack:
        env = start_env(stack, data_dir, database_url=module_database.url)
        with env.session() as s:
            other = accounts.create_user(session=s, username="other-reviewer", password=PASSWORD)
            revoked = accounts.create_api_token(session=s, user=other)
            accounts.revoke_api_token(session=s, token_id_or_prefix=str(revoked.record.id))
            accounts.create_user(session=s, username="matrix-target", password=PASSWORD)
            admin = accounts.get_user_by_name(session=s, username="admin2")
            jobs = {}
            for key in ("any", "POST /api/v1/training-jobs/{job_id}/cancel", "POST /admin/training/{job_id}/cancel"):
                params = training.TrainingParams(architecture="cnnx", scenario="s1", epochs=1, max_steps_per_epoch=1)
                jobs[key] = training.create_job(session=s, settings=env.settings, params=params, actor=admin).id
        case = env.upload(film_png(seed=1), who="admin").json()
        fixture = Fixture(
            env=env,
            prediction_id=case["id"],
            model_id=case["results"][0]["model_id"],
            image_sha256=case["image_sha256"],
            jobs=jobs,
        )
        yield Site(env, fixture, revoked.token)


def new_session(env: Env, username: str, *, expired: bool = False) -> accounts.NewWebSession:
    with env.session() as s:
        user = accounts.get_user_by_name(session=s, username=username)
        web = accounts.create_session(session=s, settings=env.settings, user=user)
        if expired:
            row = s.get(WebSession, web.record.id)
            row.expires_at = utcnow() - timedelta(minutes=1)
            s.commit()
    return web


def request_as(site: Site, identity: str, method: str, template: str, entry: Entry) -> httpx.Response:
    """One request of `identity` to the route, carrying what that kind of client carries."""
    env = site.env
    url = entry.url or template.format(**site.fixture.params((method, template)))
    kwargs = entry.body(site.fixture) if method in UNSAFE else {}
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    csrf: str | None = None
    if identity == "revoked":
        headers["Authorization"] = f"Bearer {site.revoked_token}"
    elif identity in ("reviewer", "admin") and is_api(template):
        headers["Authorization"] = f"Bearer {env.tokens[identity]}"
    elif identity in ("reviewer", "admin", "expired"):
        web = new_session(env, "admin2" if identity == "admin" else "reviewer", expired=identity == "expired")
        cookies[SESSION_COOKIE] = web.token
        csrf = web.csrf_token
    if identity in ("anonymous", "expired") and not is_api(template):
        # A browser that has seen the login form: pages render the anonymous token once a session is gone.
        cookies[CSRF_COOKIE] = csrf = ANON_CSRF
    if csrf is not None and method in UNSAFE:
        if "data" in kwargs or "files" in kwargs:
            kwargs["data"] = {**kwargs.get("data", {}), "csrf_token": csrf}
        headers[CSRF_HEADER] = csrf
    client = TestClient(env.app, follow_redirects=False, raise_server_exceptions=False, cookies=cookies)
    return client.request(method, url, headers=headers, **kwargs)


def test_every_route_has_an_entry(site: Site) -> None:
    routes = app_routes(site.env.app)
    missing = sorted(routes - set(MATRIX))
    assert missing == [], f"routes without an access-matrix entry (add them to MATRIX): {missing}"
    stale = sorted(set(MATRIX) - routes)
    assert stale == [], f"MATRIX entries for routes the app no longer has: {stale}"


@pytest.mark.parametrize(("method", "template"), list(MATRIX))
def test_route_answers_each_identity_exactly(site: Site, method: str, template: str) -> None:
    entry = MATRIX[(method, template)]
    got = {}
    for identity in IDENTITIES:  # admin last: its writes succeed and must not change the others' answers
        r = request_as(site, identity, method, template, entry)
        got[identity] = r.status_code
        check_security_headers(r)
        expected = entry.statuses[identity]
        if r.status_code != expected:
            continue  # reported below with the whole row
        if is_api(template) and expected == 401:
            assert r.headers["www-authenticate"] == "Bearer" and r.json()["detail"], (identity, r.text)
        elif is_api(template) and expected == 403:
            assert r.json()["detail"] == "admin role required", (identity, r.text)
        elif template in ("/login", "/logout") and expected == 303:  # a login goes on, a logout back to /login
            target = {"GET": "/", "POST": "/worklist"}[method] if template == "/login" else "/login"
            assert r.headers["location"] == target, identity
        elif expected == 303 and identity in ("anonymous", "expired"):
            assert r.headers["location"].startswith("/login"), (identity, r.headers["location"])
        elif expected == 303:
            assert not r.headers["location"].startswith("/login"), (identity, r.headers["location"])
        elif expected == 403 and identity == "reviewer" and not is_api(template):
            assert r.headers["content-type"].startswith("text/html") and "admin" in r.text.lower(), identity
    assert got == entry.statuses, f"{method} {template}"


def check_security_headers(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_a_reviewer_can_never_start_training_or_change_the_active_model(site: Site) -> None:
    """Every route that queues training or activates a model, tried by a reviewer with a token and with
    a valid session and CSRF token: refused, and nothing changed in the database."""

    def state() -> tuple[Any, ...]:
        with site.env.session() as s:
            active = s.scalars(select(MLModel.id).where(MLModel.active.is_(True))).all()
            jobs = s.scalar(select(func.count()).select_from(TrainingJob))
            audit = s.scalar(select(func.count()).select_from(AuditEntry))
        return active, jobs, audit

    with site.env.session() as s:  # the untrained CNN-X: activating it would be a change
        other = s.scalar(select(MLModel.id).where(MLModel.active.is_(False)))
        assert other is not None
    before = state()
    targets = [
        route
        for route in MATRIX
        if route[0] in UNSAFE and ("training" in route[1] or "activate" in route[1]) and "cancel" not in route[1]
    ]
    assert len(targets) == 5
    for method, template in targets:
        entry = MATRIX[(method, template)]
        as_page = not is_api(template)
        url = template.format(**(site.fixture.params((method, template)) | {"model_id": other}))
        r = request_as(site, "reviewer", method, template, Entry(entry.statuses, entry.body, url))
        assert r.status_code == 403, (template, r.status_code)
        if as_page:  # the same page action with the reviewer's Bearer token instead of a cookie
            r = TestClient(site.env.app, raise_server_exceptions=False).request(
                method, url, headers=site.env.auth("reviewer"), **entry.body(site.fixture)
            )
            assert r.status_code == 403, (template, r.status_code)
    assert state() == before


def test_path_ids_beyond_integer_range_are_not_found(site: Site) -> None:
    """Path parameters a hostile client inflates: 404 (no such row), never a database error."""
    big = 2**70
    env = site.env
    for url in (
        f"/api/v1/predictions/{big}",
        f"/api/v1/predictions/{big}/overlays/{big}/normal.png",
        f"/api/v1/predictions/{big}/lung-outline/{big}.png",
        f"/api/v1/predictions/{big}/heat-maps/{big}/normal.png",
        f"/api/v1/training-jobs/{big}",
    ):
        r = env.client.get(url, headers=env.auth("admin"))
        assert r.status_code == 404, (url, r.text)
    r = env.client.post(f"/api/v1/models/{big}/activate", headers=env.auth("admin"))
    assert r.status_code == 404, r.text
    web = new_session(env, "admin2")
    client = TestClient(env.app, follow_redirects=False, cookies={SESSION_COOKIE: web.token})
    for url in (f"/cases/{big}", f"/cases/{big}/compare", f"/admin/training/{big}"):
        assert client.get(url).status_code == 404, url
