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


def test_a_reject_needs_a_reason_on_the_page_and_in_the_api(env: Env, case: dict[str, Any]) -> None:
    model_id = case["results"][0]["model_id"]
    client = login(env)
    token = client.get(f"/cases/{case['id']}").context["csrf_token"]
    form = {"csrf_token": token, "model_id": str(model_id), "verdict": "reject", "comment": "kept"}
    r = client.post(f"/cases/{case['id']}/verdicts", data=form)
    assert r.status_code == 422 and "at least one reason" in r.context["form_error"]
    assert r.context["form"]["comment"] == "kept"  # what was typed comes back
    r = client.post(f"/cases/{case['id']}/verdicts", data={**form, "reasons": "other", "comment": " "})
    assert r.status_code == 422 and "needs a comment" in r.context["form_error"]
    url = f"/api/v1/predictions/{case['id']}/verdicts"
    api = env.client.post(url, headers=env.auth("reviewer"), json={"model_id": model_id, "verdict": "reject"})
    assert api.status_code == 422 and "at least one reason" in api.json()["detail"]
    ok = client.post(f"/cases/{case['id']}/verdicts", data={**form, "reasons": "other", "comment": "a ruler"})
    assert ok.status_code == 303


def test_an_expired_session_posting_a_verdict_returns_to_the_case_not_to_a_405(env: Env, case: dict[str, Any]) -> None:
    anonymous = TestClient(env.app, follow_redirects=False)
    base = str(anonymous.base_url)
    r = anonymous.post(
        f"/cases/{case['id']}/verdicts",
        data={"verdict": "approve", "model_id": "1"},
        headers={"referer": f"{base}/cases/{case['id']}?model=1"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/login?next=%2Fcases%2F{case['id']}%3Fmodel%3D1"
    other_site = anonymous.post(f"/cases/{case['id']}/verdicts", headers={"referer": "https://evil.example/x"})
    assert other_site.headers["location"] == "/login"
    client = login(env)
    assert client.get(f"/cases/{case['id']}/verdicts").headers["location"] == f"/cases/{case['id']}"


def test_browser_errors_are_pages_with_a_way_back_and_the_api_keeps_json(env: Env) -> None:
    client = login(env)
    html = {"accept": "text/html,application/xhtml+xml"}
    r = client.get("/no/such/page", headers={**html, "referer": f"{client.base_url}/worklist"})
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert 'href="/worklist" id="error-back"' in r.text
    r = client.put("/worklist", headers=html)
    assert r.status_code == 405 and "<h1>Not here</h1>" in r.text
    api = client.get("/api/v1/no-such", headers=html)
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}


def test_other_reviewers_verdicts_stay_hidden_until_ones_own_is_in(env: Env, case: dict[str, Any]) -> None:
    model_id = case["results"][0]["model_id"]
    url = f"/api/v1/predictions/{case['id']}/verdicts"
    body = {"model_id": model_id, "verdict": "approve", "comment": "first reader"}
    assert env.client.post(url, headers=env.auth("reviewer"), json=body).status_code == 201
    with env.session() as s:
        accounts.create_user(session=s, username="dr.blind", password=PASSWORD)
    blind = login(env, "dr.blind")
    page = blind.get(f"/cases/{case['id']}")
    assert page.context["history"] == [] and page.context["hidden_verdicts"] >= 1
    assert "first reader" not in page.text and 'id="hidden-verdicts"' in page.text
    assert blind.get(f"/cases/{case['id']}/compare").context["review_state"] == {}
    token = page.context["csrf_token"]
    form = {"csrf_token": token, "model_id": str(model_id), "verdict": "approve", "comment": "second reader"}
    assert blind.post(f"/cases/{case['id']}/verdicts", data=form).status_code == 303
    after = blind.get(f"/cases/{case['id']}")
    assert after.context["hidden_verdicts"] == 0 and "first reader" in after.text and "second reader" in after.text
    admin = login(env, "admin2").get(f"/cases/{case['id']}")
    assert admin.context["hidden_verdicts"] == 0 and len(admin.context["history"]) == len(after.context["history"])
