"""Verdicts (append-only history, latest per reviewer), the worklist and the CSV/JSON export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from ml.checkpoints import DEFAULT_CHECKPOINT, file_sha256
from tests.app.conftest import Env, Film


@pytest.fixture(scope="module")
def cases(env: Env, films: dict[str, Film]) -> dict[str, dict]:
    out = {}
    for source, film in films.items():
        r = env.upload(film.data, name=film.path.name)
        assert r.status_code == 201
        out[source] = r.json()
    return out


def post_verdict(env: Env, case: dict, who: str = "reviewer", **fields: object) -> dict:
    body = {"model_id": case["results"][0]["model_id"], "verdict": "approve", **fields}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth(who), json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_verdict_is_stored_with_reviewer_and_time(env: Env, cases: dict) -> None:
    v = post_verdict(
        env,
        cases["cohen"],
        verdict="reject",
        reasons=["text_or_marker", "image_border"],
        comment="heat on the L marker",
        diagnosis="covid19",
    )
    assert v["reviewer"] == "reviewer" and v["verdict"] == "reject" and v["is_latest"] is True
    assert v["reasons"] == ["text_or_marker", "image_border"] and v["diagnosis"] == "covid19"
    assert v["comment"] == "heat on the L marker" and v["created_at"]
    detail = env.client.get(f"/api/v1/predictions/{cases['cohen']['id']}", headers=env.auth("reviewer")).json()
    assert [x["id"] for x in detail["verdicts"]] == [v["id"]]


def test_new_verdict_keeps_history_and_latest_per_reviewer_counts(env: Env, cases: dict) -> None:
    case = cases["kermany"]
    first = post_verdict(env, case, verdict="reject", reasons=["outside_lungs"])
    second = post_verdict(env, case, verdict="approve")
    other = post_verdict(env, case, who="admin", verdict="reject", reasons=["other"], comment="disagree")
    history = env.client.get(f"/api/v1/predictions/{case['id']}", headers=env.auth("reviewer")).json()["verdicts"]
    assert [v["id"] for v in history] == [first["id"], second["id"], other["id"]]
    latest = {v["id"]: v["is_latest"] for v in history}
    assert latest == {first["id"]: False, second["id"]: True, other["id"]: True}
    assert history[0]["verdict"] == "reject" and history[0]["reasons"] == ["outside_lungs"]  # never overwritten


def test_database_refuses_to_rewrite_verdicts(env: Env, cases: dict) -> None:
    post_verdict(env, cases["hannover"])
    with env.session() as s:
        for statement in ("UPDATE verdicts SET verdict = 'reject'", "DELETE FROM verdicts"):
            with pytest.raises(DatabaseError, match="append-only"):
                s.execute(text(statement))
            s.rollback()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"verdict": "maybe"}, "verdict"),
        ({"reasons": ["bad_tag"]}, "reasons"),
        ({"diagnosis": "flu"}, "diagnosis"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_verdicts_are_422_with_detail(env: Env, cases: dict, body: dict, fragment: str) -> None:
    case = cases["cohen"]
    payload = {"model_id": case["results"][0]["model_id"], "verdict": "approve", **body}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=payload)
    assert r.status_code == 422
    assert any(fragment in str(err["loc"]) for err in r.json()["detail"])


def test_malformed_json_is_422_and_unknown_ids_404(env: Env, cases: dict) -> None:
    case = cases["cohen"]
    headers = {**env.auth("reviewer"), "Content-Type": "application/json"}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=headers, content=b'{"verdict": ')
    assert r.status_code == 422 and r.json()["detail"]
    r = env.client.post(
        "/api/v1/predictions/424242/verdicts", headers=env.auth("reviewer"), json={"model_id": 1, "verdict": "approve"}
    )
    assert r.status_code == 404 and "424242" in r.json()["detail"]
    r = env.client.post(
        f"/api/v1/predictions/{case['id']}/verdicts",
        headers=env.auth("reviewer"),
        json={"model_id": 4242, "verdict": "approve"},
    )
    assert r.status_code == 404 and "4242" in r.json()["detail"]


def test_export_contains_every_verdict_with_hashes(env: Env, cases: dict) -> None:
    marker = post_verdict(
        env,
        cases["hannover"],
        verdict="reject",
        reasons=["device_or_line"],
        comment='=HYPERLINK("x")',
        diagnosis="normal",
    )
    checkpoint = file_sha256(DEFAULT_CHECKPOINT)

    r = env.client.get("/api/v1/verdicts?format=json", headers=env.auth("reviewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    rows = {row["verdict_id"]: row for row in r.json()["verdicts"]}
    row = rows[marker["id"]]
    assert row["image_sha256"] == cases["hannover"]["image_sha256"]
    assert row["checkpoint_sha256"] == checkpoint and row["model_version"] == 1
    assert row["reasons"] == ["device_or_line"] and row["diagnosis"] == "normal" and row["reviewer"] == "reviewer"
    assert row["p_covid19"] == cases["hannover"]["results"][0]["probabilities"]["covid19"]

    r = env.client.get("/api/v1/verdicts?format=csv", headers=env.auth("reviewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    csv_rows = {int(x["verdict_id"]): x for x in csv.DictReader(io.StringIO(r.text))}
    assert set(csv_rows) == set(rows)
    crow = csv_rows[marker["id"]]
    assert crow["image_sha256"] == cases["hannover"]["image_sha256"] and crow["checkpoint_sha256"] == checkpoint
    assert crow["reasons"] == "device_or_line" and crow["is_latest"] == "true"
    assert crow["comment"] == '\'=HYPERLINK("x")'  # a spreadsheet shows it, does not run it
    assert env.client.get("/api/v1/verdicts?format=xml", headers=env.auth("reviewer")).status_code == 422


def test_worklist_filters_and_priority_order(env: Env, cases: dict, films: dict[str, Film]) -> None:
    fresh = env.upload(films["cohen"].data).json()  # unreviewed
    r = env.client.get("/api/v1/predictions", headers=env.auth("reviewer"), params={"reviewed": "no"})
    assert r.status_code == 200
    body = r.json()
    ids = [item["prediction_id"] for item in body["items"]]
    assert fresh["id"] in ids and cases["kermany"]["id"] not in ids  # reviewed cases drop off
    keys = [(i["error_risk"] is None, -(i["error_risk"] or 0.0), i["top_probability"]) for i in body["items"]]
    assert keys == sorted(keys) and "highest error risk first" in body["priority"]

    reviewed = env.client.get(
        "/api/v1/predictions", headers=env.auth("reviewer"), params={"reviewed": "yes", "sort": "newest"}
    ).json()["items"]
    assert {i["prediction_id"] for i in reviewed} >= {cases["kermany"]["id"], cases["cohen"]["id"]}
    assert [i["prediction_id"] for i in reviewed] == sorted((i["prediction_id"] for i in reviewed), reverse=True)
    assert all(i["verdict_count"] >= 1 and i["latest_verdict"] in ("approve", "reject") for i in reviewed)

    cls = fresh["results"][0]["predicted_class"]
    same_class = env.client.get(
        "/api/v1/predictions", headers=env.auth("reviewer"), params={"predicted_class": cls, "reviewed": "any"}
    ).json()["items"]
    assert same_class and all(i["predicted_class"] == cls for i in same_class)
    none = env.client.get("/api/v1/predictions", headers=env.auth("reviewer"), params={"model_id": 999}).json()
    assert none["items"] == [] and none["total"] == 0


# ------------------------------------------------------------------------------- reviewer boxes
WRONG = {"kind": "wrong_evidence", "box": [0.02, 0.03, 0.25, 0.15]}
FINDING = {"kind": "finding", "box": [0.55, 0.4, 0.8, 0.7]}


def test_a_rejection_stores_its_boxes_returns_and_exports_them(env: Env, cases: dict) -> None:
    v = post_verdict(env, cases["cohen"], verdict="reject", reasons=["text_or_marker"], regions=[WRONG, FINDING])
    assert v["regions"] == [WRONG, FINDING]
    detail = env.client.get(f"/api/v1/predictions/{cases['cohen']['id']}", headers=env.auth("reviewer")).json()
    assert next(x for x in detail["verdicts"] if x["id"] == v["id"])["regions"] == [WRONG, FINDING]
    assert post_verdict(env, cases["cohen"], verdict="approve")["regions"] == []  # none unless drawn
    assert post_verdict(env, cases["cohen"], verdict="approve", regions=[FINDING])["regions"] == [FINDING]

    exported = env.client.get("/api/v1/verdicts?format=json", headers=env.auth("reviewer")).json()["verdicts"]
    rows = {r["verdict_id"]: r for r in exported}
    assert rows[v["id"]]["regions"] == [WRONG, FINDING]
    as_csv = env.client.get("/api/v1/verdicts?format=csv", headers=env.auth("reviewer")).text
    csv_rows = {int(r["verdict_id"]): r for r in csv.DictReader(io.StringIO(as_csv))}
    assert json.loads(csv_rows[v["id"]]["regions"]) == [WRONG, FINDING]
    assert csv_rows[v["id"] + 1]["regions"] == ""


@pytest.mark.parametrize(
    ("regions", "verdict", "fragment"),
    [
        ([{"kind": "lesion", "box": [0.1, 0.1, 0.2, 0.2]}], "reject", "kind"),
        ([{"kind": "finding", "box": [0.3, 0.1, 0.2, 0.2]}], "reject", "0 ≤ x0 < x1 ≤ 1"),
        ([{"kind": "finding", "box": [0.1, 0.1, 0.2, 1.5]}], "reject", "0 ≤ y0 < y1 ≤ 1"),
        ([{"kind": "finding", "box": [-0.1, 0.1, 0.2, 0.2]}], "reject", "0 ≤ x0 < x1 ≤ 1"),
        ([{"kind": "finding", "box": [0.1, 0.1, 0.2]}], "reject", "box"),
        ([{"kind": "finding", "box": [0.1, 0.1, 0.2, 0.2], "note": "x"}], "reject", "note"),
        ([FINDING] * 21, "reject", "regions"),
        ([WRONG], "approve", "go with a rejection"),
    ],
)
def test_bad_boxes_are_422_and_store_nothing(env: Env, cases: dict, regions: list, verdict: str, fragment: str) -> None:
    case = cases["kermany"]
    before = len(env.client.get(f"/api/v1/predictions/{case['id']}", headers=env.auth("reviewer")).json()["verdicts"])
    body = {"model_id": case["results"][0]["model_id"], "verdict": verdict, "regions": regions}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=body)
    assert r.status_code == 422, r.text
    assert fragment in json.dumps(r.json()["detail"], ensure_ascii=False)
    after = env.client.get(f"/api/v1/predictions/{case['id']}", headers=env.auth("reviewer")).json()["verdicts"]
    assert len(after) == before
