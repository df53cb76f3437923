"""The reading station's hygiene and safety rules through the real app (bundled model, SQLite, a real
film): no-store on everything that shows a patient, audited account changes, the admin navigation,
the reject-needs-a-reason rule and the verdict timing fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.services import accounts, audit
from tests.app.conftest import Env, Film, start_env

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with ExitStack() as stack:
        yield start_env(stack, tmp_path_factory.mktemp("reading"))


@pytest.fixture(scope="module")
def case(env: Env, films: dict[str, Film]) -> dict[str, Any]:
    film = films["hannover"]
    r = env.upload(film.data, name=film.path.name)
    assert r.status_code == 201, r.text
    return dict(r.json())


def login(env: Env, username: str = "reviewer", password: str = PASSWORD) -> TestClient:
    client = TestClient(env.app, follow_redirects=False)
    page = client.get("/login")
    r = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": page.context["csrf_token"]}
    )
    assert r.status_code == 303, r.text
    return client


def test_every_authenticated_reply_is_no_store_and_static_assets_are_not(env: Env, case: dict[str, Any]) -> None:
    client = login(env)
    result = case["results"][0]
    paths = [
        f"/cases/{case['id']}",
        "/worklist",
        "/export",
        case["image_url"],
        next(iter(result["overlays"].values())),
        result["lung_outline_url"],
        f"/api/v1/predictions/{case['id']}",
        "/legend/colorbar.png",
    ]
    for path in paths:
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
        assert r.headers["cache-control"] == "no-store", path
    assert client.get("/login").headers["cache-control"] == "no-store"
    assert "no-store" not in client.get("/static/css/review.css").headers.get("cache-control", "")


def test_admin_navigation_links_training_and_audit(env: Env) -> None:
    admin_nav = login(env, "admin2").get("/worklist").text
    assert 'href="/admin/training"' in admin_nav and 'href="/admin/audit"' in admin_nav
    reviewer_nav = login(env).get("/worklist").text
    assert 'href="/admin/training"' not in reviewer_nav and 'href="/admin/audit"' not in reviewer_nav


def _entries(env: Env, username: str) -> list[tuple[str, str, dict[str, Any]]]:
    with env.session() as s:
        rows = audit.list_entries(session=s, action_prefix="user.")
        return [(e.action, e.actor, dict(e.details)) for e in reversed(rows) if e.details.get("username") == username]


def test_account_changes_are_audited_with_who_did_them(env: Env) -> None:
    admin = login(env, "admin2")
    token = admin.get("/admin/users").context["csrf_token"]
    r = admin.post("/admin/users", data={"csrf_token": token, "username": "dr.audit", "role": "reviewer"})
    assert r.status_code == 201
    assert admin.post("/admin/users/dr.audit/role", data={"csrf_token": token, "role": "admin"}).status_code == 303
    bad = admin.post("/admin/users/dr.audit/role", data={"csrf_token": token, "role": "root"})
    assert bad.status_code == 422 and "role must be one of" in bad.context["error"]
    assert admin.post("/admin/users/dr.audit/active", data={"csrf_token": token, "active": "false"}).status_code == 303
    with env.session() as s:
        user = accounts.get_user_by_name(session=s, username="dr.audit")
        assert user is not None and user.role == "admin" and not user.active
        accounts.set_password(session=s, user=user, password="a reset secret")  # the CLI: no actor
    assert _entries(env, "dr.audit") == [
        ("user.created", "admin2", {"username": "dr.audit", "role": "reviewer"}),
        ("user.role_changed", "admin2", {"username": "dr.audit", "old": "reviewer", "new": "admin"}),
        ("user.deactivated", "admin2", {"username": "dr.audit"}),
        ("user.password_reset", "system", {"username": "dr.audit"}),
    ]
    assert "user.role_changed" in admin.get("/admin/audit").text
