"""The browser pages through the real app: the bundled model plus a small second model (an untrained
CNN-X, so "compare all models" has two rows), SQLite in a temp dir, real films from ../shared/data.

Each test logs in through the login form (CSRF cookie + hidden field, as a browser does) with its
own cookie jar, and asserts the template, its context and what was stored.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import select

from app.models import PredictionResult, User, Verdict
from app.routes.templating import pct
from app.services import accounts, audit
from ml import CLASSES
from tests.app.conftest import Env, Film, png_bytes, png_size, start_env
from tests.support.checkpoints import UNTRAINED_CNNX, write_untrained_cnnx

PASSWORD = "correct horse"  # the conftest's users
SECOND_MODEL = UNTRAINED_CNNX


def report(n: int, accuracy: float, covid_sensitivity: float) -> dict[str, Any]:
    """An ml.evaluate-shaped report (illustrative numbers: the second model is untrained)."""
    return {
        "n": n,
        "accuracy": accuracy,
        "macro_sensitivity": accuracy,
        "error_ci95": [0.1, 0.2],
        "per_class": {"covid19": {"sensitivity": covid_sensitivity, "specificity": 0.5, "f1": 0.5, "support": n}},
    }


SECOND_MODEL_METRICS = {
    "test": {
        **report(465, 0.61, 0.12),
        "by_source": {"hannover": report(243, 0.12, 0.12), "kermany": report(222, 0.97, 0.0)},
    },
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("pages")
    write_untrained_cnnx(data_dir / "models" / f"{SECOND_MODEL}.pt", metrics=SECOND_MODEL_METRICS)
    with ExitStack() as stack:
        yield start_env(stack, data_dir)


def browser(env: Env) -> TestClient:
    """A fresh cookie jar on the same app (the module's TestClient already ran the lifespan)."""
    return TestClient(env.app, follow_redirects=False)


def login(env: Env, username: str = "reviewer", password: str = PASSWORD) -> TestClient:
    client = browser(env)
    page = client.get("/login")
    r = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": page.context["csrf_token"]}
    )
    assert r.status_code == 303, r.text
    return client


def token_of(client: TestClient, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    return r.context["csrf_token"]


def upload(client: TestClient, data: bytes, name: str = "film.jpg", models: str = "") -> Any:
    token = token_of(client, "/upload")
    return client.post(
        "/upload",
        data={"csrf_token": token, "models": models},
        files={"file": (name, data, "application/octet-stream")},
    )


def case_id(location: str) -> int:
    match = re.fullmatch(r"/cases/(\d+)(/compare\?ai=shown)?", location)
    assert match, location
    return int(match.group(1))


@pytest.fixture(scope="module")
def reviewer(env: Env) -> TestClient:
    return login(env)


@pytest.fixture(scope="module")
def case(env: Env, reviewer: TestClient, films: dict[str, Film]) -> int:
    """The Hannover film (adult COVID-19) uploaded through the form, active model only."""
    r = upload(reviewer, films["hannover"].data, name=films["hannover"].path.name)
    assert r.status_code == 303, r.text
    return case_id(r.headers["location"])


# ----------------------------------------------------------------------------- anonymous
@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/worklist",
        "/upload",
        "/export",
        "/models",
        "/admin/users",
        "/cases/1",
        "/cases/1/compare",
        "/account/password",
        "/legend/colorbar.png",
    ],
)
def test_anonymous_visitors_are_sent_to_login(env: Env, path: str) -> None:
    r = browser(env).get(path)
    assert r.status_code == 303
    expected = "/login" if path == "/" else f"/login?next={path.replace('/', '%2F')}"
    assert r.headers["location"] == expected


def test_anonymous_visitors_reach_login_static_and_health_only(env: Env, case: int) -> None:
    client = browser(env)
    page = client.get("/login")
    assert page.status_code == 200 and page.template.name == "login.html"
    assert page.context["user"] is None and page.context["csrf_token"]
    assert client.cookies.get("cxr_csrf") == page.context["csrf_token"]  # double-submit cookie
    assert client.get("/static/css/review.css").status_code == 200
    assert client.get("/static/js/review.js").status_code == 200
    assert client.get("/api/v1/health").status_code == 200
    with env.session() as s:
        result = s.scalar(select(PredictionResult).where(PredictionResult.prediction_id == case))
        sha = result.prediction.image.sha256
        model_id = result.model_id
    assert client.get(f"/api/v1/images/{sha}.png").status_code == 401  # films are never served anonymously
    assert client.get(f"/api/v1/predictions/{case}/overlays/{model_id}/covid19.png").status_code == 401


def test_pages_carry_a_strict_csp_and_no_inline_script_or_style(env: Env, reviewer: TestClient, case: int) -> None:
    for path in ("/login", f"/cases/{case}", "/worklist", "/upload", "/models"):
        client = reviewer if path != "/login" else browser(env)
        r = client.get(path)
        assert r.status_code == 200, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "<script>" not in r.text and " style=" not in r.text and "<style" not in r.text, path


# --------------------------------------------------------------------------------- login
def test_login_with_wrong_password_shows_a_clear_error(env: Env) -> None:
    client = browser(env)
    token = client.get("/login").context["csrf_token"]
    r = client.post("/login", data={"username": "reviewer", "password": "wrong password", "csrf_token": token})
    assert r.status_code == 401
    assert r.template.name == "login.html"
    assert "Wrong user name or password" in r.context["error"]
    assert r.context["username"] == "reviewer"  # kept, so only the password is typed again
    assert "cxr_session" not in client.cookies


def test_login_redirects_to_the_page_asked_for_but_never_off_site(env: Env) -> None:
    client = browser(env)
    token = client.get("/login?next=/worklist%3Fsort%3Dnewest").context["csrf_token"]
    r = client.post(
        "/login",
        data={"username": "reviewer", "password": PASSWORD, "csrf_token": token, "next": "/worklist?sort=newest"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/worklist?sort=newest"
    assert client.get("/worklist").status_code == 200
    assert client.get("/login").headers["location"] == "/"  # logged in: the login page steps aside

    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        other = browser(env)
        token = other.get("/login").context["csrf_token"]
        r = other.post("/login", data={"username": "reviewer", "password": PASSWORD, "csrf_token": token, "next": evil})
        assert r.headers["location"] == "/", evil


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_login_without_the_forms_csrf_token_is_refused(env: Env, token: str | None) -> None:
    client = browser(env)
    client.get("/login")  # sets the cxr_csrf cookie
    data = {"username": "reviewer", "password": PASSWORD}
    if token:
        data["csrf_token"] = token
    r = client.post("/login", data=data)
    assert r.status_code == 403
    assert r.template.name == "error.html"
    assert "cxr_session" not in client.cookies


def test_repeated_failed_logins_are_throttled_with_a_message(env: Env) -> None:
    client = browser(env)
    token = client.get("/login").context["csrf_token"]
    codes = []
    for _ in range(env.settings.login_max_failures + 1):
        r = client.post("/login", data={"username": "throttled-user", "password": "nope nope", "csrf_token": token})
        codes.append(r.status_code)
    assert codes[:-1] == [401] * env.settings.login_max_failures
    assert codes[-1] == 429
    assert r.template.name == "login.html"
    assert "Too many failed logins" in r.context["error"] and "try again in" in r.context["error"]
    assert int(r.headers["retry-after"]) > 0


def test_logout_ends_the_session(env: Env) -> None:
    client = login(env)
    token = token_of(client, "/worklist")
    assert client.post("/logout", data={}).status_code == 403  # no token: nothing happens
    assert client.get("/worklist").status_code == 200
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/worklist").status_code == 303


# -------------------------------------------------------------------------------- upload
def test_upload_page_offers_each_model_and_compare_all(env: Env, reviewer: TestClient) -> None:
    r = reviewer.get("/upload")
    assert r.template.name == "upload.html"
    names = [m.name for m in r.context["models"]]
    assert SECOND_MODEL in names and len(names) == 2
    assert r.context["models"][0].active  # the active model first, and checked by default
    assert 'value="all"' in r.text and "Compare all loaded models" in r.text


def test_upload_through_the_form_opens_the_case(env: Env, reviewer: TestClient, case: int) -> None:
    r = reviewer.get(f"/cases/{case}")
    assert r.status_code == 200 and r.template.name == "case.html"
    ctx = r.context
    assert ctx["prediction"].id == case and len(ctx["views"]) == 1
    result = ctx["focus"].result
    assert next(iter(ctx["focus"].overlays)) == result.predicted_class  # predicted class first
    assert ctx["selected_cls"] == result.predicted_class
    assert sorted(ctx["focus"].overlays) == sorted(CLASSES)
    for url in [*ctx["focus"].overlays.values(), ctx["film_url"]]:
        img = reviewer.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png", url
        assert png_size(img.content)[0] > 0
    # The page names the CAM method, explains the colour scale and shows the data caveat.
    assert "CAM</strong>" in r.text
    assert "left = little evidence" in r.text and "right = strongest evidence for this class" in r.text
    assert "pediatric (Kermany)" in r.text and "COVID-19 films are adult" in r.text
    assert "one hospital (NIH ChestX-ray14" in r.text and "arrows, letters, crops" in r.text
    for c in CLASSES:
        assert f'value="{result.probabilities[c]:.4f}"' in r.text  # one probability bar per class


def test_case_page_selects_class_and_view_from_the_query(env: Env, reviewer: TestClient, case: int) -> None:
    r = reviewer.get(f"/cases/{case}?cls=normal&view=side")
    assert r.context["selected_cls"] == "normal" and r.context["view_mode"] == "side"
    assert r.context["focus"].overlays["normal"] in r.text
    r = reviewer.get(f"/cases/{case}?cls=bogus&view=bogus")
    assert r.context["selected_cls"] == r.context["focus"].result.predicted_class
    assert r.context["view_mode"] == "overlay"


@pytest.mark.parametrize("bad_id", ["x", "-1", "1.5", "\u00b2"])  # "²" passes str.isdigit() but is no number
def test_pages_ignore_ids_in_the_query_that_are_not_numbers(
    env: Env, reviewer: TestClient, case: int, bad_id: str
) -> None:
    r = reviewer.get(f"/cases/{case}", params={"model": bad_id, "saved": bad_id})
    assert r.status_code == 200 and r.context["saved"] is None and r.context["next_case"] is None
    assert r.context["focus"].model.id == r.context["views"][0].model.id  # the first result, as without `model`
    r = reviewer.get("/worklist", params={"model": bad_id, "offset": bad_id})
    assert r.status_code == 200 and r.context["filters"]["model"] is None and r.context["worklist"].offset == 0


def test_unknown_case_is_a_404_page(env: Env, reviewer: TestClient) -> None:
    r = reviewer.get("/cases/999999")
    assert r.status_code == 404 and r.template.name == "error.html"
    assert "not found" in r.context["message"]


def test_colour_scale_legend_is_a_png_strip(env: Env, reviewer: TestClient) -> None:
    r = reviewer.get("/legend/colorbar.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    w, h = png_size(r.content)
    assert w > h


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("notes.txt", b"this is not an image at all", 415, "upload a PNG, JPEG or DICOM image"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "PNG"),
        ("empty.jpg", b"", 422, "empty"),
    ],
)
def test_bad_uploads_show_the_services_message_on_the_page(
    env: Env, reviewer: TestClient, name: str, data: bytes, status: int, message: str
) -> None:
    before = env.count(PredictionResult)
    r = upload(reviewer, data, name=name)
    assert r.status_code == status
    assert r.template.name == "upload.html"
    assert message in r.context["error"]
    assert r.context["error"] in r.text
    assert env.count(PredictionResult) == before


def test_too_large_upload_shows_the_limit(env: Env, reviewer: TestClient) -> None:
    data = png_bytes(np.zeros((8, 8), dtype=np.uint8)) + b"\x00" * env.settings.max_upload_bytes
    r = upload(reviewer, data, name="huge.png")
    assert r.status_code == 413 and r.template.name == "upload.html"
    assert "MiB upload limit" in r.context["error"]


def test_upload_without_a_file_asks_for_one(env: Env, reviewer: TestClient) -> None:
    token = token_of(reviewer, "/upload")
    r = reviewer.post("/upload", data={"csrf_token": token})
    assert r.status_code == 422 and "Choose a PNG, JPEG or DICOM file" in r.context["error"]


def test_upload_without_csrf_token_is_refused(env: Env, reviewer: TestClient, films: dict[str, Film]) -> None:
    before = env.count(PredictionResult)
    r = reviewer.post("/upload", files={"file": ("x.jpg", films["kermany"].data, "image/jpeg")})
    assert r.status_code == 403
    assert env.count(PredictionResult) == before


# ------------------------------------------------------------------------------- compare
def test_compare_all_models_shows_the_grid(env: Env, reviewer: TestClient, films: dict[str, Film]) -> None:
    r = upload(reviewer, films["kermany"].data, name="kermany.jpg", models="all")
    assert r.status_code == 303 and r.headers["location"].endswith("/compare?ai=shown")
    grid = reviewer.get(r.headers["location"])
    assert grid.status_code == 200 and grid.template.name == "compare.html"
    views = grid.context["views"]
    assert len(views) == 2
    assert {v.model.name for v in views} == {"cxr_default", SECOND_MODEL}
    assert {v.result.cam_method for v in views} == {"cam", "linear-decomposition"}
    for v in views:  # every cell of the grid is an overlay the browser can load
        assert set(v.overlays) == set(CLASSES)
        assert v.overlays[v.result.predicted_class] in grid.text
    assert grid.text.count("is-predicted") == 2  # one highlighted cell per model row
    assert "Linear decomposition" in grid.text and "pediatric (Kermany)" in grid.text

    pid = case_id(r.headers["location"])
    second = next(v.model.id for v in views if v.model.name == SECOND_MODEL)
    page = reviewer.get(f"/cases/{pid}?model={second}")
    assert page.context["focus"].model.id == second
    assert "Linear decomposition" in page.text


# ------------------------------------------------------------------------------ verdicts
def post_verdict(client: TestClient, case: int, model_id: int, **fields: Any) -> Any:
    token = token_of(client, f"/cases/{case}")
    return client.post(f"/cases/{case}/verdicts", data={"csrf_token": token, "model_id": str(model_id), **fields})


def focus_model(client: TestClient, case: int) -> int:
    return client.get(f"/cases/{case}").context["focus"].model.id


def test_verdict_posted_through_the_form_is_stored_and_history_kept(env: Env, reviewer: TestClient, case: int) -> None:
    model_id = focus_model(reviewer, case)
    r = post_verdict(reviewer, case, model_id, verdict="approve")
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"/cases/{case}?model={model_id}&saved=")
    r = post_verdict(
        reviewer,
        case,
        model_id,
        verdict="reject",
        reasons=["outside_lungs", "text_or_marker"],
        comment="hot spot on the shoulder marker",
        diagnosis="normal",
    )
    assert r.status_code == 303
    with env.session() as s:
        rows = list(s.scalars(select(Verdict).where(Verdict.prediction_id == case).order_by(Verdict.id)))
    assert [v.verdict for v in rows] == ["approve", "reject"]  # the first one is not overwritten
    assert rows[1].reasons == ["outside_lungs", "text_or_marker"]
    assert rows[1].comment == "hot spot on the shoulder marker" and rows[1].diagnosis == "normal"
    assert {v.reviewer.username for v in rows} == {"reviewer"}

    page = reviewer.get(r.headers["location"])
    assert page.context["saved"] == rows[1].id
    history = page.context["history"]
    assert [h.verdict.id for h in history] == [rows[1].id, rows[0].id]  # newest first
    assert [h.counts for h in history] == [True, False]  # the latest per reviewer counts
    assert page.context["my_latest"].id == rows[1].id
    assert "superseded" in page.text and "hot spot on the shoulder marker" in page.text
    waiting = reviewer.get("/worklist").context["worklist"].items  # after a save: a link to the next one
    expected = f"/cases/{waiting[0].prediction.id}?model={waiting[0].model.id}" if waiting else None
    assert page.context["next_case"] == expected


def test_boxes_posted_with_the_form_are_stored_and_bad_ones_shown_back(
    env: Env, reviewer: TestClient, case: int
) -> None:
    model_id = focus_model(reviewer, case)
    boxes = [{"kind": "wrong_evidence", "box": [0.05, 0.05, 0.3, 0.2]}]
    r = post_verdict(reviewer, case, model_id, verdict="reject", reasons=["text_or_marker"], regions=json.dumps(boxes))
    assert r.status_code == 303
    with env.session() as s:
        latest = s.scalars(select(Verdict).where(Verdict.prediction_id == case).order_by(Verdict.id.desc())).first()
    assert latest is not None and latest.regions == boxes
    page = reviewer.get(r.headers["location"])
    assert "1 wrong evidence" in page.text
    before = env.count(Verdict)
    for bad, message in (
        ("{not json", "could not be read"),
        (json.dumps([{"kind": "wrong_evidence", "box": [0.5, 0.1, 0.2, 0.3]}]), "0 ≤ x0 < x1 ≤ 1"),
    ):
        r = post_verdict(reviewer, case, model_id, verdict="reject", reasons=["text_or_marker"], regions=bad)
        assert r.status_code == 422 and r.template.name == "case.html" and message in r.context["form_error"]
        assert r.context["form"]["regions"] == bad  # kept, so the page's script can draw them again
    r = post_verdict(reviewer, case, model_id, verdict="approve", regions=json.dumps(boxes))
    assert r.status_code == 422 and "go with a rejection" in r.context["form_error"]
    assert env.count(Verdict) == before


def test_verdicts_of_two_reviewers_both_count(env: Env, films: dict[str, Film]) -> None:
    first, second = login(env), login(env, "admin2")
    r = upload(first, films["cohen"].data, name="cohen.jpg")
    pid = case_id(r.headers["location"])
    mid = focus_model(first, pid)
    assert post_verdict(first, pid, mid, verdict="approve").status_code == 303
    assert post_verdict(second, pid, mid, verdict="reject", reasons=["device_or_line"]).status_code == 303
    history = second.get(f"/cases/{pid}").context["history"]
    assert [(h.verdict.reviewer.username, h.counts) for h in history] == [("admin2", True), ("reviewer", True)]


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_verdict_without_valid_csrf_token_is_refused(
    env: Env, reviewer: TestClient, case: int, token: str | None
) -> None:
    model_id = focus_model(reviewer, case)
    before = env.count(Verdict)
    data = {"model_id": str(model_id), "verdict": "approve"}
    if token:
        data["csrf_token"] = token
    r = reviewer.post(f"/cases/{case}/verdicts", data=data)
    assert r.status_code == 403 and r.template.name == "error.html"
    assert env.count(Verdict) == before


def test_invalid_verdict_values_keep_the_form_with_a_message(env: Env, reviewer: TestClient, case: int) -> None:
    model_id = focus_model(reviewer, case)
    before = env.count(Verdict)
    r = post_verdict(reviewer, case, model_id, verdict="maybe", comment="keep me")
    assert r.status_code == 422 and r.template.name == "case.html"
    assert "verdict must be one of" in r.context["form_error"]
    assert r.context["form"]["comment"] == "keep me" and "keep me" in r.text
    r = post_verdict(reviewer, case, model_id, verdict="reject", reasons=["lung_nodule"])
    assert r.status_code == 422 and "unknown reason tag" in r.context["form_error"]
    r = post_verdict(reviewer, case, 987654, verdict="approve")
    assert r.status_code == 404
    assert env.count(Verdict) == before


# ------------------------------------------------------------------------------ worklist
def test_worklist_filters_sorts_and_explains_priority(env: Env, reviewer: TestClient, films: dict[str, Film]) -> None:
    r = upload(reviewer, films["kermany"].data, name="worklist.jpg")
    pid = case_id(r.headers["location"])
    page = reviewer.get("/worklist")
    assert page.status_code == 200 and page.template.name == "worklist.html"
    assert page.context["filters"] == {
        "model": None,
        "cls": None,
        "reviewed": "no",
        "flagged": "any",
        "sort": "priority",
        "q": "",
        "mine": "",
    }
    assert "highest error risk first" in page.context["priority_explanation"]
    assert str(escape(page.context["priority_explanation"])) in page.text
    items = page.context["worklist"].items
    assert pid in [i.prediction.id for i in items]
    assert all(i.verdict_count == 0 for i in items)
    keys = [(i.risk.error_risk is None, -(i.risk.error_risk or 0.0), i.result.top_probability) for i in items]
    assert keys == sorted(keys)  # priority: highest error risk first, then least confident
    assert f"/cases/{pid}?model=" in page.text  # each row links to its case

    newest = reviewer.get("/worklist?sort=newest&reviewed=any").context["worklist"].items
    ids = [i.prediction.id for i in newest]
    assert ids == sorted(ids, reverse=True)

    item = next(i for i in items if i.prediction.id == pid)
    cls = item.result.predicted_class
    only = reviewer.get(f"/worklist?cls={cls}&model={item.model.id}").context["worklist"].items
    assert only and all(i.result.predicted_class == cls and i.model.id == item.model.id for i in only)

    assert post_verdict(reviewer, pid, item.model.id, verdict="approve").status_code == 303
    waiting = reviewer.get("/worklist").context["worklist"].items
    assert (pid, item.model.id) not in [(i.prediction.id, i.model.id) for i in waiting]
    done = reviewer.get("/worklist?reviewed=yes").context["worklist"].items
    reviewed = next(i for i in done if i.prediction.id == pid and i.model.id == item.model.id)
    assert reviewed.latest_verdict == "approve"

    lenient = reviewer.get("/worklist?cls=bogus&sort=bogus&reviewed=bogus&flagged=bogus&model=x&mine=bogus")
    assert lenient.status_code == 200
    assert lenient.context["filters"] == {
        "model": None,
        "cls": None,
        "reviewed": "no",
        "flagged": "any",
        "sort": "priority",
        "q": "",
        "mine": "",
    }


# ---------------------------------------------------------------------------- lung focus
def test_case_page_shows_lung_focus_outline_and_warning(env: Env, reviewer: TestClient, case: int) -> None:
    r = reviewer.get(f"/cases/{case}")
    focus = r.context["focus"]
    lf = focus.lung_focus
    assert lf is not None and lf.threshold == r.context["lung_focus_threshold"] == env.settings.lung_focus_threshold
    assert list(focus.lung_focus_by_class) == list(CLASSES)
    # The outline layer over the main overlay and every thumbnail, with its toggle (on by default).
    assert r.text.count(f'src="{focus.lung_outline_url}"') == 1 + len(CLASSES)
    assert 'id="outline-toggle" checked' in r.text and "Show lung outline" in r.text
    outline = reviewer.get(focus.lung_outline_url)
    overlay = reviewer.get(focus.overlays[focus.result.predicted_class])
    assert outline.status_code == 200 and png_size(outline.content) == png_size(overlay.content)
    # Each class's score next to the chance level (the film's lung area), as whole percentages.
    for f in focus.lung_focus_by_class.values():
        assert f'lungs {pct(f.score, 0)}</span> <span class="nowrap">· chance {pct(f.lung_area, 0)}' in r.text
    # A calibrated model's result: one box of plain warning lines instead of the lung-focus banner (which
    # marked most right calls too); the outside-lungs line exactly when the result has that warning.
    assert focus.risk.reason is None and 'id="lung-focus-warning"' not in r.text
    codes = [w["code"] for w in focus.risk.warnings]
    assert ('id="risk-warnings"' in r.text) is bool(codes)
    assert ('<li data-code="outside_lungs">Evidence mostly outside the lungs.</li>' in r.text) is (
        "outside_lungs" in codes
    )
    assert f'<strong>Error risk</strong>\n        <span class="num">{pct(focus.risk.error_risk, 0)}</span>' in r.text


def test_worklist_page_sorts_flagged_first_and_shows_the_badge(env: Env, reviewer: TestClient, case: int) -> None:
    page = reviewer.get("/worklist?sort=flagged&reviewed=any")
    assert page.status_code == 200 and page.context["filters"]["sort"] == "flagged"
    assert '<option value="flagged" selected' in page.text
    items = page.context["worklist"].items
    marks = [bool(i.lung_focus and i.lung_focus.flagged) for i in items]
    assert items and marks == sorted(marks, reverse=True)
    assert page.text.count('class="tag tag-warn"') == sum(marks)
    only = reviewer.get("/worklist?flagged=yes&reviewed=any").context["worklist"].items
    assert [i.result.id for i in only] == [i.result.id for i, m in zip(items, marks, strict=True) if m]


# -------------------------------------------------------------------------------- export
def test_export_page_links_csv_and_json_that_hold_the_verdicts(env: Env, reviewer: TestClient, case: int) -> None:
    model_id = focus_model(reviewer, case)
    post_verdict(reviewer, case, model_id, verdict="approve", comment="export me")
    page = reviewer.get("/export")
    assert page.template.name == "export.html"
    csv_r = reviewer.get(page.context["csv_url"])
    json_r = reviewer.get(page.context["json_url"])
    assert csv_r.status_code == 200 and json_r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(csv_r.text)))
    assert any(row["comment"] == "export me" and row["prediction_id"] == str(case) for row in rows)
    assert any(v["comment"] == "export me" for v in json_r.json()["verdicts"])


# -------------------------------------------------------------------------------- models
def test_models_page_lists_models_metrics_and_the_active_one(env: Env, reviewer: TestClient) -> None:
    r = reviewer.get("/models")
    assert r.template.name == "models.html"
    models = r.context["models"]
    assert [m.active for m in models].count(True) == 1
    bundled = next(m for m in models if m.active)
    metrics = r.context["metrics"][bundled.id]
    assert metrics and metrics[0].split == "val" and metrics[0].accuracy is not None
    assert f"{100 * metrics[0].accuracy:.1f} %" in r.text
    assert "No per-source figures recorded" in r.text  # the bundled model has validation figures only
    assert "Make active" not in r.text  # reviewers cannot switch models
    assert "pediatric (Kermany)" in r.text


def test_models_page_shows_per_source_metrics_when_recorded(env: Env, reviewer: TestClient) -> None:
    r = reviewer.get("/models")
    second = next(m for m in r.context["models"] if m.name == SECOND_MODEL)
    (test,) = r.context["metrics"][second.id]
    assert test.split == "test" and test.n == 465
    assert set(test.by_source) == {"hannover", "kermany"}
    assert test.by_source["hannover"].accuracy == 0.12
    section = r.text.split(f'id="model-{second.id}"')[1]
    assert "Per source" in section and "hannover" in section and "12.0 %" in section and "97.0 %" in section


def test_admin_switches_the_active_model(env: Env) -> None:
    admin = login(env, "admin2")
    page = admin.get("/models")
    assert "Make active" in page.text
    models = page.context["models"]
    active, other = models[0], models[1]
    token = page.context["csrf_token"]
    assert admin.post(f"/models/{other.id}/activate", data={}).status_code == 403
    try:  # unconfirmed below: the confirmation page first
        r = admin.post(f"/models/{other.id}/activate", data={"csrf_token": token})
        assert r.status_code == 303 and r.headers["location"].startswith(f"/models/{other.id}/activate?")
        assert admin.get("/models").context["models"][0].id == active.id
        r = admin.post(f"/models/{other.id}/activate", data={"csrf_token": token, "confirm": "yes", "reason": "x"})
        assert r.status_code == 303 and "done=1" in r.headers["location"]
        assert admin.get("/models").context["models"][0].id == other.id
        with env.session() as s:  # the switch is audited with the admin's name
            (entry,) = audit.list_entries(session=s, limit=1, action_prefix="model.")
            assert (entry.actor, entry.target_id) == ("admin2", other.id)
    finally:
        admin.post(f"/models/{active.id}/activate", data={"csrf_token": token, "confirm": "yes", "reason": "back"})
    assert admin.get("/models").context["models"][0].id == active.id
    reviewer = login(env)
    assert (
        reviewer.post(f"/models/{other.id}/activate", data={"csrf_token": token_of(reviewer, "/models")}).status_code
        == 403
    )


# --------------------------------------------------------------------------------- users
def test_admin_creates_and_deactivates_users(env: Env) -> None:
    admin = login(env, "admin2")
    page = admin.get("/admin/users")
    assert page.template.name == "users.html"
    token = page.context["csrf_token"]
    r = admin.post("/admin/users", data={"csrf_token": token, "username": "dr.new", "role": "reviewer"})
    assert r.status_code == 201
    password = r.context["created"]["password"]
    assert password and password in r.text  # generated, shown once

    newcomer = login(env, "dr.new", password)
    assert newcomer.get("/worklist").headers["location"] == "/account/password"  # own password first
    pw_token = token_of(newcomer, "/account/password")
    r = newcomer.post(
        "/account/password",
        data={"csrf_token": pw_token, "current": password, "new": "a new long secret", "repeat": "a new long secret"},
    )
    assert r.status_code == 303
    assert newcomer.get("/worklist").status_code == 200  # the fresh session works
    login(env, "dr.new", "a new long secret")

    dup = admin.post("/admin/users", data={"csrf_token": token, "username": "dr.new", "role": "reviewer"})
    assert dup.status_code == 409 and "already exists" in dup.context["error"]

    r = admin.post("/admin/users/dr.new/active", data={"csrf_token": token, "active": "false"})
    assert r.status_code == 303
    with env.session() as s:
        assert accounts.get_user_by_name(session=s, username="dr.new").active is False
    assert newcomer.get("/worklist").status_code == 303  # its session ended

    me = admin.post("/admin/users/admin2/active", data={"csrf_token": token, "active": "false"})
    assert me.status_code == 422 and "your own account" in me.context["error"]


def test_users_page_is_for_admins_only(env: Env, reviewer: TestClient) -> None:
    r = reviewer.get("/admin/users")
    assert r.status_code == 403 and r.template.name == "error.html"
    assert "Users" not in reviewer.get("/worklist").text.split("</nav>")[0]  # no admin link for reviewers
    token = token_of(reviewer, "/worklist")
    assert reviewer.post("/admin/users", data={"csrf_token": token, "username": "sneaky"}).status_code == 403
    with env.session() as s:
        assert s.scalar(select(User).where(User.username == "sneaky")) is None


def test_bootstrap_admin_must_choose_a_password_first(env: Env) -> None:
    line = next(a for a in env.announced if "one-time password" in a)
    password = line.split("one-time password: ")[1].split()[0]
    client = browser(env)
    token = client.get("/login").context["csrf_token"]
    r = client.post("/login", data={"username": "admin", "password": password, "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/account/password"
    page = client.get("/account/password")
    assert page.template.name == "password.html" and "one-time password" in page.text
    r = client.post(
        "/account/password",
        data={
            "csrf_token": page.context["csrf_token"],
            "current": password,
            "new": "long enough!",
            "repeat": "different!!",
        },
    )
    assert r.status_code == 422 and "differ" in r.context["error"]
