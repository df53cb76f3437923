"""Reading modes, blind reading in the API and the export, export filters, worklist search, the
promotion reason rule and the review analytics, through the real app (bundled model, SQLite, a real
film). The analytics figures are checked against values worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.models import MLModel, PredictionResult, User
from app.services import accounts, audit, reading
from app.services.errors import InvalidInputError
from tests.app.conftest import Env, Film, start_env
from tests.support.checkpoints import write_untrained_cnnx

SECRET = "s" * 40
T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with ExitStack() as stack:
        data_dir = tmp_path_factory.mktemp("reading-modes")
        write_untrained_cnnx(data_dir / "models" / "cnnx-worse.pt", metrics={"val": {"macro_sensitivity": 0.5}})
        e = start_env(stack, data_dir)
        with e.session() as s:
            for name in ("reader2", "reader3"):
                user = accounts.create_user(session=s, username=name, password="correct horse", role="reviewer")
                e.tokens[name] = accounts.create_api_token(session=s, user=user).token
        yield e


@pytest.fixture(scope="module")
def cases(env: Env, films: dict[str, Film]) -> list[dict[str, Any]]:
    """The same Hannover film uploaded four times with the active model: four results to read."""
    film = films["hannover"]
    out = []
    for i in range(4):
        r = env.upload(film.data, name=f"reading-{i}.png")
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


def user(uid: int = 7) -> User:
    return User(id=uid, username=f"u{uid}", role="reviewer")


# ----------------------------------------------------------------------------- reading tokens
def test_timing_comes_from_the_signed_token_and_the_server_clock() -> None:
    token = reading.issue_token(secret=SECRET, user_id=7, prediction_id=3, mode="film_first", now=T0)
    rec = reading.record(
        token=token,
        ai_revealed_after_ms="12000",
        secret=SECRET,
        user=user(),
        prediction_id=3,
        max_age_s=3600,
        now=T0 + timedelta(seconds=42),
    )
    assert (rec.reading_mode, rec.opened_at, rec.seconds_to_verdict) == ("film_first", T0, 42.0)
    assert (rec.ai_revealed, rec.ai_revealed_after_s) == (True, 12.0)
    hidden = reading.record(
        token=token, ai_revealed_after_ms="none", secret=SECRET, user=user(), prediction_id=3, max_age_s=3600, now=T0
    )
    assert (hidden.ai_revealed, hidden.ai_revealed_after_s) == (False, None)
    no_script = reading.record(
        token=token, ai_revealed_after_ms="", secret=SECRET, user=user(), prediction_id=3, max_age_s=3600, now=T0
    )
    assert no_script.ai_revealed is None and no_script.seconds_to_verdict == 0.0
    ai_first = reading.issue_token(secret=SECRET, user_id=7, prediction_id=3, mode="ai_first", now=T0)
    rec = reading.record(
        token=ai_first,
        ai_revealed_after_ms=None,
        secret=SECRET,
        user=user(),
        prediction_id=3,
        max_age_s=3600,
        now=T0 + timedelta(seconds=5),
    )
    assert (rec.reading_mode, rec.seconds_to_verdict, rec.ai_revealed, rec.ai_revealed_after_s) == (
        "ai_first",
        5.0,
        True,
        0.0,
    )


def test_bad_tokens_and_absurd_reveal_times_are_refused_and_stale_ones_untimed() -> None:
    token = reading.issue_token(secret=SECRET, user_id=7, prediction_id=3, mode="film_first", now=T0)
    later = T0 + timedelta(seconds=10)

    def rec(tok: str, revealed: str = "none", **kw: Any) -> reading.ReadingRecord:
        args: dict[str, Any] = {"secret": SECRET, "user": user(), "prediction_id": 3, "max_age_s": 3600, "now": later}
        return reading.record(token=tok, ai_revealed_after_ms=revealed, **(args | kw))

    forged = token.replace("film_first", "ai_first")
    for bad in (forged, token + "0", "garbage", "4" + token[1:]):  # forged mode, signature, case
        with pytest.raises(InvalidInputError, match="reading token"):
            rec(bad)
    with pytest.raises(InvalidInputError, match="reading token"):
        rec(token, user=user(8))  # another reviewer's page
    with pytest.raises(InvalidInputError, match="reading token"):
        rec(token, secret="t" * 40)
    for absurd in ("-1", "nan", "inf", "soon"):
        with pytest.raises(InvalidInputError, match="ai_revealed_after_ms"):
            rec(token, absurd)
    with pytest.raises(InvalidInputError, match="cannot have been shown"):
        rec(token, "60000")  # a minute into a case open for 10 s
    assert rec(token, "11000").ai_revealed_after_s == 10.0  # the page's load time: within the margin, clamped
    with pytest.raises(InvalidInputError, match="reading token"):
        rec(token, now=T0 - timedelta(minutes=5))  # opened in the future
    stale = rec(token, "1000", now=T0 + timedelta(hours=2))
    assert stale == reading.ReadingRecord(reading_mode="film_first")  # saved, without timing


# --------------------------------------------------------------------------- API and export
def test_the_api_records_the_read_and_the_export_carries_it(env: Env, cases: list[dict[str, Any]]) -> None:
    case = cases[0]
    mid = case["results"][0]["model_id"]
    detail = env.client.get(f"/api/v1/predictions/{case['id']}", headers=env.auth("reviewer")).json()
    assert detail["reading_mode"] == "film_first"  # the service's default
    body = {"model_id": mid, "verdict": "approve", "reading_token": detail["reading_token"], "ai_revealed_after_ms": 0}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=body)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["reading_mode"] == "film_first" and v["ai_revealed"] is True and v["ai_revealed_after_s"] == 0.0
    assert 0.0 <= v["seconds_to_verdict"] < 60
    # Another reviewer cannot send this reviewer's token; a reveal after the verdict is refused.
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reader3"), json=body)
    assert r.status_code == 422 and "reading token" in r.json()["detail"]
    late = body | {"ai_revealed_after_ms": 3_600_000}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=late)
    assert r.status_code == 422 and "cannot have been shown" in r.json()["detail"]
    # No reveal time sent: the AI was not shown before the verdict.
    body.pop("ai_revealed_after_ms")
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=body)
    assert r.status_code == 201 and r.json()["ai_revealed"] is False

    rows = env.client.get("/api/v1/verdicts", headers=env.auth("admin")).json()["verdicts"]
    mine = [row for row in rows if row["prediction_id"] == case["id"]]
    assert [(row["reading_mode"], row["ai_revealed"]) for row in mine] == [("film_first", True), ("film_first", False)]
    assert all(row["seconds_to_verdict"] is not None and row["opened_at"] for row in mine)
    text = env.client.get("/api/v1/verdicts?format=csv", headers=env.auth("admin")).text
    csv_rows = [row for row in csv.DictReader(io.StringIO(text)) if row["prediction_id"] == str(case["id"])]
    assert [(row["reading_mode"], row["ai_revealed"]) for row in csv_rows] == [
        ("film_first", "true"),
        ("film_first", "false"),
    ]
    assert float(csv_rows[0]["seconds_to_verdict"]) >= 0 and csv_rows[0]["ai_revealed_after_s"] == "0.0"


def test_blind_reading_in_the_api_worklist_and_export(env: Env, cases: list[dict[str, Any]]) -> None:
    case = cases[1]
    mid = case["results"][0]["model_id"]
    url = f"/api/v1/predictions/{case['id']}"
    verdict = {"model_id": mid, "verdict": "reject", "reasons": ["outside_lungs"]}
    assert env.client.post(f"{url}/verdicts", headers=env.auth("reviewer"), json=verdict).status_code == 201

    def export_ids(who: str) -> set[int]:
        rows = env.client.get("/api/v1/verdicts", headers=env.auth(who)).json()["verdicts"]
        return {row["prediction_id"] for row in rows}

    second = env.client.get(url, headers=env.auth("reader2")).json()
    assert second["verdicts"] == [] and second["hidden_verdicts"] == 1  # not before one's own
    items = env.client.get("/api/v1/predictions?reviewed=any", headers=env.auth("reader2")).json()["items"]
    row = next(i for i in items if i["prediction_id"] == case["id"])
    assert row["verdict_count"] == 1 and row["latest_verdict"] is None
    assert case["id"] not in export_ids("reader2")
    admin = env.client.get(url, headers=env.auth("admin")).json()
    assert [v["reviewer"] for v in admin["verdicts"]] == ["reviewer"] and admin["hidden_verdicts"] == 0
    assert case["id"] in export_ids("admin")

    own = {"model_id": mid, "verdict": "approve"}
    assert env.client.post(f"{url}/verdicts", headers=env.auth("reader2"), json=own).status_code == 201
    after = env.client.get(url, headers=env.auth("reader2")).json()
    assert sorted(v["reviewer"] for v in after["verdicts"]) == ["reader2", "reviewer"] and after["hidden_verdicts"] == 0
    assert case["id"] in export_ids("reader2")


def test_the_compare_page_holds_the_ai_back_until_ones_own_read_in_film_first(
    env: Env, cases: list[dict[str, Any]]
) -> None:
    with env.session() as s:
        reader = accounts.create_user(session=s, username="reader4", password="correct horse", role="reviewer")
        token = accounts.create_api_token(session=s, user=reader).token
    client = TestClient(env.app, follow_redirects=False)
    login = client.get("/login")
    r = client.post(
        "/login", data={"username": "reader4", "password": "correct horse", "csrf_token": login.context["csrf_token"]}
    )
    assert r.status_code == 303, r.text
    case = cases[3]
    url = f"/cases/{case['id']}/compare"

    held = client.get(url)  # opened by URL in film-first mode, before any read of one's own
    assert held.status_code == 200 and held.context["ai_held_back"] is True
    assert 'id="ai-held-back"' in held.text and case["image_url"] in held.text  # the plain film only
    assert "/overlays/" not in held.text and 'id="compare-grid"' not in held.text
    assert not re.search(r"\d(\.\d)? ?%", held.text)  # no probability, no lung focus

    shown = client.get(f"{url}?ai=shown")  # Show AI (the case page's link carries it once the AI is shown)
    assert shown.context["ai_held_back"] is False and 'id="compare-grid"' in shown.text
    assert re.search(r"\d(\.\d)? ?%", shown.text)  # the probabilities the held-back page lacks
    assert case["results"][0]["overlays"][case["results"][0]["predicted_class"]] in shown.text

    verdict = {"model_id": case["results"][0]["model_id"], "verdict": "approve"}
    r = env.client.post(
        f"/api/v1/predictions/{case['id']}/verdicts", headers={"Authorization": f"Bearer {token}"}, json=verdict
    )
    assert r.status_code == 201, r.text
    after = client.get(url)  # read: nothing is held back any more
    assert after.context["ai_held_back"] is False and 'id="compare-grid"' in after.text

    with env.session() as s:
        reading.set_preference(session=s, user=s.get(User, reader.id), mode="ai_first")  # type: ignore[arg-type]
    other = cases[0]
    assert client.get(f"/cases/{other['id']}/compare").context["ai_held_back"] is False


def test_export_filters(env: Env, cases: list[dict[str, Any]]) -> None:
    case = cases[2]
    mid = case["results"][0]["model_id"]
    for verdict in ("approve", "approve"):  # the second supersedes the first
        body = {"model_id": mid, "verdict": verdict}
        r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reader3"), json=body)
        assert r.status_code == 201

    def rows(**params: Any) -> list[dict[str, Any]]:
        r = env.client.get("/api/v1/verdicts", headers=env.auth("admin"), params=params)
        assert r.status_code == 200, r.text
        return [row for row in r.json()["verdicts"] if row["prediction_id"] == case["id"]]

    assert len(rows()) == 2 and len(rows(latest_only="true")) == 1 and rows(latest_only="true")[0]["is_latest"]
    assert len(rows(reviewer="reader3")) == 2 and rows(reviewer="reader2") == []
    assert len(rows(model=mid)) == 2 and rows(model=mid + 1000) == []
    today = datetime.now(UTC).date()
    assert len(rows(since=str(today), until=str(today))) == 2
    assert rows(until=str(today - timedelta(days=1))) == [] and rows(since=str(today + timedelta(days=1))) == []
    assert len(rows(since="", reviewer="", model="")) == 2  # the page's blank fields: no filter
    r = env.client.get(
        "/api/v1/verdicts", headers=env.auth("admin"), params={"since": "2026-12-05", "until": "2026-12-01"}
    )
    assert r.status_code == 422 and "date range" in r.json()["detail"]
    assert env.client.get("/api/v1/verdicts?since=yesterday", headers=env.auth("admin")).status_code == 422


def test_worklist_search_by_case_id_file_name_and_sha_prefix(env: Env, cases: list[dict[str, Any]]) -> None:
    def found(q: str) -> set[int]:
        r = env.client.get("/api/v1/predictions", headers=env.auth("admin"), params={"q": q, "reviewed": "any"})
        assert r.status_code == 200, r.text
        return {i["prediction_id"] for i in r.json()["items"]}

    ids = {c["id"] for c in cases}
    assert cases[3]["id"] in found(str(cases[3]["id"]))
    assert found("READING-3") == {cases[3]["id"]}  # part of the file name, any case
    assert found(cases[0]["image_sha256"][:8]) >= ids  # the same film: every upload of it
    assert found("zz-no-such-film") == set()
    assert found("50%_") == set()  # LIKE wildcards are plain characters


# ------------------------------------------------------------------------------ promotion
def test_activating_a_clearly_worse_model_needs_a_reason_in_the_api(env: Env) -> None:
    with env.session() as s:
        models = {m.name: m for m in s.query(MLModel).all()}
    worse = next(m for m in models.values() if m.architecture == "cnnx")
    active = next(m for m in models.values() if m.active)
    url = f"/api/v1/models/{worse.id}/activate"
    r = env.client.post(url, headers=env.auth("admin"))
    assert r.status_code == 422 and "points below the active model" in r.json()["detail"]
    r = env.client.post(url, headers=env.auth("admin"), json={"reason": "   "})
    assert r.status_code == 422
    try:
        r = env.client.post(url, headers=env.auth("admin"), json={"reason": "A/B test on one ward"})
        assert r.status_code == 200 and r.json()["active"] is True
        with env.session() as s:
            (entry,) = audit.list_entries(session=s, limit=1, action_prefix="model.")
        assert entry.details["reason"] == "A/B test on one ward" and entry.details["reason_required"] is True
        assert entry.details["macro_sensitivity_drop"] == pytest.approx(
            active.metrics["val"]["macro_sensitivity"] - 0.5
        )
    finally:  # back to the better model: no reason needed
        r = env.client.post(f"/api/v1/models/{active.id}/activate", headers=env.auth("admin"))
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------ analytics
def test_analytics_kappa_and_warning_auroc_match_hand_computed_values(env: Env, cases: list[dict[str, Any]]) -> None:
    """Seeded: four results whose predicted class's lung focus is 0.2, 0.3 (flagged below 0.5), 0.8, 0.9,
    read by reader A (approve, reject, approve, approve) and reader B (approve, reject, reject, approve),
    on a fresh model version so earlier tests' verdicts do not count.

    κ: p_o = 3/4; p_A(approve) = 3/4, p_B = 2/4; p_e = 3/4·2/4 + 1/4·2/4 = 1/2; κ = (3/4 − 1/2)/(1/2) = 0.5;
    SE = √(0.75·0.25 / (4·0.25)) = 0.4330; 95 % CI 0.5 ± 1.96·0.4330 = (−0.349, 1.349 → 1).
    Warning vs reject over the 8 verdicts: rejects (flag): r2 ×2 (1, 1), r3 ×1 (0); approvals: r1 ×2 (1, 1),
    r3 ×1 (0), r4 ×2 (0, 0). AUROC of the flag = (2·(2·½ + 3) + (2·0 + 3·½)) / (3·5) = 9.5/15 = 0.6333.
    Score 1 − focus: rejects 0.7, 0.7, 0.2; approvals 0.8, 0.8, 0.2, 0.1, 0.1 →
    (2·(0 + 0 + 1 + 1 + 1) + (0 + 0 + ½ + 1 + 1)) / 15 = 8.5/15 = 0.5667. Rejects warned: 2 of 3.
    """
    from app.services import reviews

    with env.session() as s:
        model = MLModel(
            name="seeded",
            architecture="resnet18",
            version=1,
            checkpoint_path="/nonexistent.pt",
            checkpoint_sha256="f" * 64,
            input_size=224,
            cam_method="cam",
        )
        s.add(model)
        s.flush()
        a = accounts.create_user(session=s, username="seed-a", password="correct horse", role="reviewer")
        b = accounts.create_user(session=s, username="seed-b", password="correct horse", role="reviewer")
        calls = [("approve", "approve"), ("reject", "reject"), ("approve", "reject"), ("approve", "approve")]
        for case, score, (call_a, call_b) in zip(cases, (0.2, 0.3, 0.8, 0.9), calls, strict=True):
            base = s.get(PredictionResult, _result_id(s, case))
            assert base is not None
            seeded = PredictionResult(
                prediction_id=case["id"],
                model_id=model.id,
                model_version=1,
                checkpoint_sha256=model.checkpoint_sha256,
                architecture="resnet18",
                probabilities=base.probabilities,
                predicted_class=base.predicted_class,
                top_probability=base.top_probability,
                cam_method="cam",
                cam_sha256=base.cam_sha256,
                lung_focus={base.predicted_class: {"score": score, "lung_area": 0.3, "reason": None}},
                lung_focus_score=score,
                lung_mask_sha256=base.lung_mask_sha256,
            )
            s.add(seeded)
            s.commit()
            for reviewer, call in ((a, call_a), (b, call_b)):
                reasons = ["outside_lungs"] if call == "reject" else []
                if reviewer is a and call == "approve":  # a superseded verdict: given, but not counted
                    reviews.add_verdict(
                        session=s,
                        prediction_id=case["id"],
                        model_id=model.id,
                        reviewer=reviewer,
                        verdict="reject",
                        reasons=["other"],
                        comment="first look",
                    )
                reviews.add_verdict(
                    session=s,
                    prediction_id=case["id"],
                    model_id=model.id,
                    reviewer=reviewer,
                    verdict=call,
                    reasons=reasons,
                )
        model_id = model.id

    r = env.client.get("/api/v1/analytics", headers=env.auth("admin"))
    assert r.status_code == 200, r.text
    assert env.client.get("/api/v1/analytics", headers=env.auth("reviewer")).status_code == 403
    m = next(x for x in r.json()["models"] if x["model_id"] == model_id)
    assert (m["verdicts"], m["counted"], m["approvals"], m["rejects"]) == (11, 8, 5, 3)
    assert m["reject_share"] == pytest.approx(3 / 8) and m["reject_reasons"]["outside_lungs"] == 3
    assert m["reject_reasons"]["other"] == 0  # the superseded rejects do not count
    g = m["agreement"]
    assert (g["pairs"], g["both_approve"], g["both_reject"], g["differ"]) == (4, 2, 1, 1)
    assert g["observed_agreement"] == pytest.approx(0.75) and g["kappa"] == pytest.approx(0.5)
    assert g["kappa_ci95"] == pytest.approx([0.5 - 1.959964 * 0.4330127, 1.0], abs=1e-6)
    w = m["lung_focus_warning"]
    assert (w["n"], w["rejects"], w["warned"], w["warned_rejects"]) == (8, 3, 4, 2)
    assert w["auroc_flag"] == pytest.approx(9.5 / 15) and w["auroc_score"] == pytest.approx(8.5 / 15)
    assert w["share_of_rejects_warned"] == pytest.approx(2 / 3) and w["share_of_warned_rejected"] == pytest.approx(0.5)

    admin = TestClient(env.app, follow_redirects=False)
    form = admin.get("/login")
    login = {"username": "admin2", "password": "correct horse", "csrf_token": form.context["csrf_token"]}
    assert admin.post("/login", data=login).status_code == 303
    page = admin.get("/admin/analytics")
    assert page.status_code == 200 and page.template.name == "analytics.html"
    card = page.text.split(f'id="analytics-{model_id}"')[1].split("</section>")[0]
    assert 'κ = <strong class="num">0.50</strong>' in card and 'AUROC of the flag <strong class="num">0.63' in card


def _result_id(s: Any, case: dict[str, Any]) -> int:
    from sqlalchemy import select

    mid = case["results"][0]["model_id"]
    rid = s.scalar(
        select(PredictionResult.id).where(
            PredictionResult.prediction_id == case["id"], PredictionResult.model_id == mid
        )
    )
    assert rid is not None
    return int(rid)
