"""Error risk and warnings through the real app: the bundled (calibrated) model on real films and on a
photograph, an uncalibrated CNN-X beside it, results stored before error risk existed.

What a reader relies on: every result carries `error_risk` and `warnings` (POST and GET, list and
detail, export), an uncalibrated model says why it has none, the worklist puts the riskiest first, and
the case page says in plain words why a result is flagged, one line per warning in one box.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.db import current_revision, downgrade_database, make_engine
from app.services.error_risk import STORED_BEFORE
from ml.risk import MESSAGES, NO_RISK_MODEL
from tests.app.conftest import Env, Film, new_database_url, png_bytes, start_env
from tests.support.checkpoints import UNTRAINED_CNNX, write_untrained_cnnx
from tests.support.non_chest import skimage_samples

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, database_engine: str
) -> Iterator[Env]:
    """The bundled model (active, calibrated) plus an inactive, uncalibrated CNN-X."""
    data_dir = tmp_path_factory.mktemp("error-risk")
    write_untrained_cnnx(data_dir / "models" / f"{UNTRAINED_CNNX}.pt")
    with ExitStack() as stack:
        yield start_env(stack, data_dir, database_url=new_database_url(request, database_engine))


def get(env: Env, url: str) -> Any:
    r = env.client.get(url, headers=env.auth("reviewer"))
    assert r.status_code == 200, r.text
    return r


def model_ids(env: Env) -> dict[str, int]:
    return {m["name"]: m["id"] for m in get(env, "/api/v1/models").json()}


def check_result(result: dict[str, Any]) -> None:
    assert 0.0 <= result["error_risk"] <= 1.0 and result["error_risk_reason"] is None
    assert all(w["message"] == MESSAGES[w["code"]] for w in result["warnings"])


def test_results_carry_error_risk_and_warnings_everywhere(env: Env, films: dict[str, Film]) -> None:
    posted = env.upload(films["kermany"].data, models="all")
    assert posted.status_code == 201, posted.text
    body = posted.json()
    ids = model_ids(env)
    by_model = {r["model_id"]: r for r in body["results"]}
    bundled = next(r for mid, r in by_model.items() if mid != ids[UNTRAINED_CNNX])
    check_result(bundled)
    old_style = by_model[ids[UNTRAINED_CNNX]]  # a checkpoint without calibration: null, with the reason
    assert old_style["error_risk"] is None and old_style["error_risk_reason"] == NO_RISK_MODEL
    # no warnings of its own; only the service's lung-focus flag, when it is flagged
    flagged = old_style["lung_focus"] is not None and old_style["lung_focus"]["flagged"]
    assert old_style["warnings"] == (
        [{"code": "outside_lungs", "message": MESSAGES["outside_lungs"]}] if flagged else []
    )

    detail = get(env, f"/api/v1/predictions/{body['id']}").json()
    assert {r["model_id"]: (r["error_risk"], r["warnings"]) for r in detail["results"]} == {
        mid: (r["error_risk"], r["warnings"]) for mid, r in by_model.items()
    }
    items = get(env, "/api/v1/predictions?reviewed=any").json()["items"]
    listed = next(i for i in items if i["prediction_id"] == body["id"] and i["model_id"] == bundled["model_id"])
    assert listed["error_risk"] == bundled["error_risk"] and listed["warnings"] == bundled["warnings"]

    verdict = env.client.post(
        f"/api/v1/predictions/{body['id']}/verdicts",
        headers=env.auth("reviewer"),
        json={"model_id": bundled["model_id"], "verdict": "approve"},
    )
    assert verdict.status_code == 201, verdict.text
    exported = get(env, "/api/v1/verdicts?format=json").json()["verdicts"][-1]
    assert exported["error_risk"] == pytest.approx(bundled["error_risk"])
    assert exported["warnings"] == [w["code"] for w in bundled["warnings"]]
    row = list(csv.DictReader(io.StringIO(get(env, "/api/v1/verdicts?format=csv").text)))[-1]
    assert float(row["error_risk"]) == pytest.approx(bundled["error_risk"])
    assert row["warnings"] == ";".join(w["code"] for w in bundled["warnings"])


def test_a_photograph_is_warned_as_not_a_chest_film_and_the_page_says_why(env: Env) -> None:
    photo = png_bytes(skimage_samples()["skimage:coffee"])
    body = env.upload(photo, name="coffee.png").json()
    (result,) = body["results"]
    codes = [w["code"] for w in result["warnings"]]
    assert "not_frontal_chest_xray" in codes and codes[0] == "not_frontal_chest_xray"  # most serious first

    client = env.client
    client.cookies.clear()
    login = client.get("/login")
    client.post(
        "/login", data={"username": "reviewer", "password": PASSWORD, "csrf_token": login.context["csrf_token"]}
    )
    page = client.get(f"/cases/{body['id']}")
    assert page.status_code == 200 and page.template.name == "case.html"
    assert page.text.count('id="risk-warnings"') == 1 and "lung-focus-warning" not in page.text  # one box
    for w in result["warnings"]:
        assert f'<li data-code="{w["code"]}">{w["message"][0].upper()}{w["message"][1:]}.</li>' in page.text
    worklist = client.get("/worklist?reviewed=any")
    assert worklist.status_code == 200 and "this does not look like a frontal chest X-ray" in worklist.text
    client.cookies.clear()


def test_the_worklist_puts_the_highest_error_risk_first(env: Env, films: dict[str, Film]) -> None:
    for film in films.values():
        env.upload(film.data)
    env.upload(png_bytes(np.random.default_rng(0).integers(0, 256, (300, 300)).astype(np.uint8)))
    items = get(env, "/api/v1/predictions?reviewed=any&limit=500").json()["items"]
    keys = [(i["error_risk"] is None, -(i["error_risk"] or 0.0), i["top_probability"]) for i in items]
    assert keys == sorted(keys)
    assert items[0]["error_risk"] is not None and items[0]["error_risk"] >= max(
        i["error_risk"] for i in items if i["error_risk"] is not None
    )


def test_results_stored_before_error_risk_read_as_not_available(
    make_env: Callable[..., Env], films: dict[str, Film]
) -> None:
    before = make_env()
    old = before.upload(films["cohen"].data).json()
    url = before.settings.resolved_database_url
    before.close()
    engine = make_engine(url)
    try:
        downgrade_database(engine, "0005")
        assert current_revision(engine) == "0005"
    finally:
        engine.dispose()
    env = make_env(users=False)  # the start migrates to 0006
    env.tokens = before.tokens
    (result,) = get(env, f"/api/v1/predictions/{old['id']}").json()["results"]
    assert result["error_risk"] is None and result["error_risk_reason"] == STORED_BEFORE and result["warnings"] == []
    new = env.upload(films["hannover"].data).json()
    order = [i["prediction_id"] for i in get(env, "/api/v1/predictions?reviewed=any").json()["items"]]
    assert order.index(new["id"]) < order.index(old["id"])  # results without a risk come last


def test_a_result_flagged_at_the_service_threshold_says_so_in_its_warnings(
    tmp_path: Path, films: dict[str, Film]
) -> None:
    """The lung-focus flag follows CXR_LUNG_FOCUS_THRESHOLD; whatever the model's own cut-off, a flagged
    result carries `outside_lungs`, in the API, the worklist and the export, and an unflagged one only
    when the model's cut-off put it there."""
    results = {}
    for threshold in (1.0, 0.0):
        with ExitStack() as stack:
            env = start_env(stack, tmp_path / str(threshold), lung_focus_threshold=threshold)
            body = env.upload(films["kermany"].data).json()
            (result,) = body["results"]
            results[threshold] = result
            assert result["lung_focus"]["flagged"] is (threshold == 1.0)
            (item,) = get(env, "/api/v1/predictions?reviewed=any").json()["items"]
            assert item["warnings"] == result["warnings"]
    flagged_codes = [w["code"] for w in results[1.0]["warnings"]]
    assert "outside_lungs" in flagged_codes
    stored = [w["code"] for w in results[0.0]["warnings"]]
    assert flagged_codes == stored + ([] if "outside_lungs" in stored else ["outside_lungs"])
