"""Who reaches what: anonymous, reviewer, admin; tokens, cookies, CSRF, throttling, headers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.deps import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, CsrfProtected, csrf_token
from app.services import accounts
from app.services.errors import ThrottledError
from tests.app.conftest import Env, Film


@pytest.fixture(scope="module")
def case(env: Env, films: dict[str, Film]) -> dict:
    r = env.upload(films["kermany"].data)
    assert r.status_code == 201
    return r.json()


def anonymous_urls(case: dict) -> list[tuple[str, str]]:
    overlay = next(iter(case["results"][0]["overlays"].values()))
    return [
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/predictions"),
        ("POST", "/api/v1/predictions"),
        ("GET", f"/api/v1/predictions/{case['id']}"),
        ("GET", overlay),
        ("GET", case["image_url"]),
        ("POST", f"/api/v1/predictions/{case['id']}/verdicts"),
        ("GET", "/api/v1/verdicts?format=csv"),
        ("GET", "/api/v1/me"),
        ("GET", "/openapi.json"),
    ]


def test_anonymous_gets_401_everywhere_but_health(env: Env, case: dict) -> None:
    env.client.cookies.clear()
    assert env.client.get("/api/v1/health").json() == {"status": "ok"}
    for method, url in anonymous_urls(case):
        r = env.client.request(method, url)
        assert r.status_code == 401, (method, url, r.status_code)
        assert r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == "application/json"  # never the image


def test_anonymous_pages_redirect_to_login(env: Env) -> None:
    env.client.cookies.clear()
    for url in ("/", "/docs"):
        r = env.client.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


@pytest.mark.parametrize("header", ["Bearer cxr_notatoken", "Bearer ", "Basic dXNlcjpwYXNz", "cxr_abc"])
def test_bad_authorization_header_is_401_not_anonymous(env: Env, header: str) -> None:
    r = env.client.get("/api/v1/health", headers={"Authorization": header})
    assert r.status_code == 200  # health ignores auth entirely
    r = env.client.get("/api/v1/models", headers={"Authorization": header})
    assert r.status_code == 401


def test_reviewer_is_403_on_admin_endpoints_admin_is_not(env: Env) -> None:
    for method, url, body in (
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"username": "x1"}),
        ("POST", "/api/v1/models/1/activate", None),
    ):
        r = env.client.request(method, url, headers=env.auth("reviewer"), json=body)
        assert r.status_code == 403 and r.json()["detail"] == "admin role required"
    assert env.client.get("/api/v1/users", headers=env.auth("admin")).status_code == 200
    assert env.client.post("/api/v1/models/1/activate", headers=env.auth("admin")).json()["active"] is True


def test_admin_creates_a_user_whose_token_works(env: Env) -> None:
    r = env.client.post("/api/v1/users", headers=env.auth("admin"), json={"username": "carol", "role": "reviewer"})
    assert r.status_code == 201
    body = r.json()
    assert body["password"] and body["api_token"].startswith("cxr_")
    me = env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['api_token']}"}).json()
    assert me == {"username": "carol", "role": "reviewer", "must_change_password": False}
    dup = env.client.post("/api/v1/users", headers=env.auth("admin"), json={"username": "carol"})
    assert dup.status_code == 409


def test_revoked_token_is_401(env: Env) -> None:
    with env.session() as s:
        user = accounts.get_user_by_name(session=s, username="reviewer")
        issued = accounts.create_api_token(session=s, user=user)
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert env.client.get("/api/v1/me", headers=headers).status_code == 200
    with env.session() as s:
        accounts.revoke_api_token(session=s, token_id_or_prefix=issued.record.prefix)
    r = env.client.get("/api/v1/me", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert env.client.get("/api/v1/me", headers=env.auth("reviewer")).status_code == 200  # others unaffected


def test_tokens_are_stored_hashed(env: Env) -> None:
    from sqlalchemy import select

    from app.models import ApiToken

    with env.session() as s:
        stored = set(s.scalars(select(ApiToken.token_hash)))
    assert env.tokens["reviewer"] not in stored and all(len(h) == 64 for h in stored)


def login_cookie(env: Env, username: str = "reviewer") -> accounts.NewWebSession:
    with env.session() as s:
        user = accounts.authenticate(
            session=s, settings=env.settings, username=username, password="correct horse", ip="testclient"
        )
        assert user is not None
        return accounts.create_session(session=s, settings=env.settings, user=user)


def test_cookie_session_reads_and_needs_csrf_header_to_write(env: Env, case: dict) -> None:
    web = login_cookie(env)
    env.client.cookies.clear()
    env.client.cookies.set(SESSION_COOKIE, web.token)
    try:
        assert env.client.get("/api/v1/me").json()["username"] == "reviewer"
        overlay = next(iter(case["results"][0]["overlays"].values()))
        assert env.client.get(overlay).headers["content-type"] == "image/png"
        url = f"/api/v1/predictions/{case['id']}/verdicts"
        body = {"model_id": case["results"][0]["model_id"], "verdict": "approve"}
        r = env.client.post(url, json=body)
        assert r.status_code == 403 and CSRF_HEADER in r.json()["detail"]
        assert env.client.post(url, json=body, headers={CSRF_HEADER: "wrong"}).status_code == 403
        assert env.client.post(url, json=body, headers={CSRF_HEADER: web.csrf_token}).status_code == 201
        with env.session() as s:
            accounts.end_session(session=s, token=web.token)
        assert env.client.get("/api/v1/me").status_code == 401  # logged out server-side
    finally:
        env.client.cookies.clear()


def test_expired_session_is_anonymous(env: Env) -> None:
    from datetime import timedelta

    from app.models import WebSession, utcnow

    web = login_cookie(env)
    with env.session() as s:
        row = s.get(WebSession, web.record.id)
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    env.client.cookies.set(SESSION_COOKIE, web.token)
    try:
        assert env.client.get("/api/v1/me").status_code == 401
    finally:
        env.client.cookies.clear()


def test_sessions_store_only_token_hashes(env: Env) -> None:
    from sqlalchemy import select

    from app.models import WebSession

    web = login_cookie(env)
    with env.session() as s:
        hashes = set(s.scalars(select(WebSession.token_hash)))
    assert web.token not in hashes


def test_login_is_throttled_after_repeated_failures(make_env: Callable[..., Env]) -> None:
    env = make_env(login_max_failures=3, login_window_seconds=600)
    with env.session() as s:
        for _ in range(3):
            assert (
                accounts.authenticate(
                    session=s, settings=env.settings, username="reviewer", password="nope", ip="10.0.0.1"
                )
                is None
            )
        with pytest.raises(ThrottledError) as err:  # even the right password now waits
            accounts.authenticate(
                session=s, settings=env.settings, username="reviewer", password="correct horse", ip="10.0.0.1"
            )
        assert 0 < err.value.retry_after <= 600
        # Another address is not punished for the attacker's failures.
        assert (
            accounts.authenticate(
                session=s, settings=env.settings, username="reviewer", password="correct horse", ip="10.0.0.2"
            )
            is not None
        )


def test_disabled_user_cannot_use_token_or_log_in(make_env: Callable[..., Env]) -> None:
    env = make_env()
    assert env.client.get("/api/v1/me", headers=env.auth("reviewer")).status_code == 200
    with env.session() as s:
        accounts.set_active(session=s, user=accounts.get_user_by_name(session=s, username="reviewer"), active=False)
        assert (
            accounts.authenticate(
                session=s, settings=env.settings, username="reviewer", password="correct horse", ip="x"
            )
            is None
        )
    assert env.client.get("/api/v1/me", headers=env.auth("reviewer")).status_code == 401


def test_security_headers_on_every_response(env: Env) -> None:
    for url in ("/api/v1/health", "/api/v1/models", "/", "/nope"):
        r = env.client.get(url, follow_redirects=False)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert "img-src 'self' data:" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"]


def test_docs_and_schema_for_logged_in_users(env: Env) -> None:
    schema = env.client.get("/openapi.json", headers=env.auth("reviewer")).json()
    assert (
        "/api/v1/predictions" in schema["paths"] and "/api/v1/predictions/{prediction_id}/verdicts" in schema["paths"]
    )
    web = login_cookie(env)
    env.client.cookies.set(SESSION_COOKIE, web.token)
    try:
        page = env.client.get("/docs")
        assert page.status_code == 200 and "<script>" not in page.text  # no inline script under the CSP
        assert env.client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    finally:
        env.client.cookies.clear()


def test_anonymous_csrf_cookie_protects_the_login_form(env: Env) -> None:
    """require_csrf + csrf_token(request) on a throwaway route, as the UI's /login will use them."""
    router = APIRouter()

    @router.get("/_csrf_probe")
    def form(request: Request) -> PlainTextResponse:
        return PlainTextResponse(csrf_token(request))

    @router.post("/_csrf_probe")
    def submit(_: CsrfProtected) -> PlainTextResponse:
        return PlainTextResponse("ok")

    env.app.include_router(router)
    env.client.cookies.clear()
    r = env.client.get("/_csrf_probe")
    token = r.text
    assert r.cookies.get(CSRF_COOKIE) == token and "httponly" in r.headers["set-cookie"].lower()
    assert env.client.post("/_csrf_probe", data={"csrf_token": "forged"}).status_code == 403
    assert env.client.post("/_csrf_probe", data={"csrf_token": token}).text == "ok"
    env.client.cookies.clear()
    assert env.client.post("/_csrf_probe", data={"csrf_token": token}).status_code == 403  # no cookie: refused


@pytest.mark.parametrize("env_name", ["development", "production"])
def test_session_cookie_flags(env_name: str, tmp_path: Path) -> None:
    from fastapi import Response

    from app.config import Settings
    from app.deps import set_session_cookie

    settings = Settings(env=env_name, secret_key="s" * 48, data_dir=tmp_path, session_hours=2)
    response = Response()
    set_session_cookie(response, "tok", settings)
    cookie = next(v for k, v in response.raw_headers if k == b"set-cookie" and v.startswith(b"cxr_session="))
    flags = cookie.decode().lower()
    assert "httponly" in flags and "samesite=lax" in flags and "max-age=7200" in flags and "path=/" in flags
    assert ("secure" in flags) is (env_name == "production")
