"""Lung focus through the real app: the bundled model and lung segmenter on real films, a lung-crop
CNN-X beside it, SQLite and PostgreSQL.

What a reader relies on: every result carries its predicted class's lung focus (score, chance level,
flagged at the configured threshold, which it echoes), the detail adds every class's, the outline
layer fits the overlays pixel for pixel, the threshold setting re-flags stored results, the worklist
can put flagged results first, and results stored before lung focus existed read as "not computed".
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from app.config import Settings, SettingsError
from app.db import current_revision, downgrade_database, make_engine
from app.main import create_app
from app.models import PredictionResult
from app.schemas import LungFocusOut
from app.services import predictions
from ml import CLASSES
from ml.cam.overlay import BOX_RGBA, OUTLINE_RGBA
from ml.checkpoints import base_meta, file_sha256, save_checkpoint
from ml.lung_crop import Box
from ml.lung_focus import NO_POSITIVE_MASS, LungFocus, LungFocusScore, lung_focus_by_class
from ml.lungseg import BUNDLED_LUNGSEG
from ml.registry import get_arch
from tests.app.conftest import Env, Film, new_database_url, png_size, start_env

LUNG_CROP_MODEL = "cnnx-lung-crop"


def write_lung_crop_cnnx(path: Path) -> Path:
    """A random-weight CNN-X that, like a model trained with `--input-mode lung-crop`, sees only the lungs' box."""
    spec = get_arch("cnnx")
    torch.manual_seed(0)
    meta = replace(
        base_meta(spec, input_size=spec.input_size, scenario_classes=CLASSES),
        name=LUNG_CROP_MODEL,
        input_mode="lung-crop",
        crop_margin=0.1,
    )
    return save_checkpoint(path, spec.builder(False), meta)


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, database_engine: str
) -> Iterator[Env]:
    """The bundled model (active) plus an inactive lung-crop CNN-X; SQLite or a fresh PostgreSQL database."""
    data_dir = tmp_path_factory.mktemp("lung-focus")
    write_lung_crop_cnnx(data_dir / "models" / f"{LUNG_CROP_MODEL}.pt")
    with ExitStack() as stack:
        yield start_env(stack, data_dir, database_url=new_database_url(request, database_engine))


def get(env: Env, url: str, who: str = "reviewer") -> Any:
    return env.client.get(url, headers=env.auth(who))


def stored_result(env: Env, prediction_id: int, model_id: int) -> PredictionResult:
    with env.session() as s:
        return s.scalars(
            select(PredictionResult).where(
                PredictionResult.prediction_id == prediction_id, PredictionResult.model_id == model_id
            )
        ).one()


def rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGBA"
        return np.asarray(img)


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).astype(int)


# ------------------------------------------------------------------------ reply fields
@pytest.mark.parametrize("source", ["kermany", "cohen", "hannover"])
def test_upload_and_detail_carry_the_predicted_class_lung_focus(env: Env, uploaded: dict, source: str) -> None:
    body = uploaded[source]
    (result,) = body["results"]
    focus = result["lung_focus"]
    assert set(focus) == {"score", "lung_area", "flagged", "threshold", "reason"}
    assert 0.0 <= focus["score"] <= 1.0 and focus["reason"] is None
    assert 0.05 < focus["lung_area"] < 0.8  # a real chest film: the lungs are a good part of it, not all
    assert focus["threshold"] == env.settings.lung_focus_threshold == 0.5  # the default, echoed
    assert focus["flagged"] is (focus["score"] < 0.5)
    assert result["input_box"] is None  # the bundled model sees the whole film
    assert result["lung_outline_url"] == f"/api/v1/predictions/{body['id']}/lung-outline/{result['model_id']}.png"
    assert result["lungseg_sha256"] == file_sha256(BUNDLED_LUNGSEG)

    detail = get(env, f"/api/v1/predictions/{body['id']}").json()
    (full,) = detail["results"]
    by_class = full.pop("lung_focus_by_class")
    assert full == result  # the detail repeats the upload's reply and adds every class's lung focus
    assert list(by_class) == list(CLASSES)
    assert by_class[result["predicted_class"]] == focus
    assert {f["lung_area"] for f in by_class.values()} == {focus["lung_area"]}  # one mask per film
    assert all(0.0 <= f["score"] <= 1.0 and f["threshold"] == 0.5 for f in by_class.values())


def test_stored_mask_and_maps_reproduce_the_scores(env: Env, uploaded: dict) -> None:
    """lung_area is the share of the stored mask that is lung; the scores recompute from the stored files."""
    store = env.app.state.ctx.store
    for body in uploaded.values():
        (result,) = body["results"]
        row = stored_result(env, body["id"], result["model_id"])
        mask = store.read_mask(row.lung_mask_sha256)
        assert mask.shape == (256, 256) and mask.dtype == bool
        assert result["lung_focus"]["lung_area"] == pytest.approx(mask.mean(), abs=1e-9)
        again = lung_focus_by_class(store.read_cam(row.cam_sha256), mask)
        assert row.lung_focus == {
            c: {"score": pytest.approx(f.score), "lung_area": pytest.approx(f.lung_area), "reason": None}
            for c, f in again.items()
        }
        assert row.lung_focus_score == pytest.approx(again[row.predicted_class].score)
    assert len(env.files("masks")) == len(uploaded)  # content-addressed PNGs, one per distinct film


def test_outline_layer_has_the_overlay_size_and_a_cyan_outline(env: Env, uploaded: dict) -> None:
    (result,) = uploaded["hannover"]["results"]
    overlay = get(env, result["overlays"][result["predicted_class"]])
    r = get(env, result["lung_outline_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == overlay.headers["cache-control"]  # cached like overlays
    assert png_size(r.content) == png_size(overlay.content)
    layer = rgba(r.content)
    cyan = np.all(layer == OUTLINE_RGBA, axis=-1).mean()
    transparent = (layer[..., 3] == 0).mean()
    assert 0.005 < cyan < 0.15 and transparent > 0.8  # a line around the lungs, the rest see-through
    assert not np.any(np.all(layer == BOX_RGBA, axis=-1))  # no crop box for a whole-film model
    assert get(env, result["lung_outline_url"]).content == r.content  # served from the cache


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/predictions/999999/lung-outline/1.png", 404),
        ("/api/v1/predictions/{id}/lung-outline/999999.png", 404),
        (f"/api/v1/predictions/{2**70}/lung-outline/{2**70}.png", 404),
        ("/api/v1/predictions/{id}/lung-outline/abc.png", 422),
    ],
)
def test_outline_route_refuses_unknown_ids_like_overlays(env: Env, uploaded: dict, path: str, status: int) -> None:
    r = get(env, path.format(id=uploaded["cohen"]["id"]))
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    (result,) = uploaded["cohen"]["results"]
    assert env.client.get(result["lung_outline_url"]).status_code == 401  # anonymous: nothing


# ------------------------------------------------------------- one mask, several models
def test_one_segmentation_per_upload_is_shared_by_every_model(
    env: Env, films: dict[str, Film], monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = env.app.state.ctx.models
    segmenter = manager.segmenter()
    calls = []
    real = segmenter.predict_small
    monkeypatch.setattr(segmenter, "predict_small", lambda gray: calls.append(gray.shape) or real(gray))
    r = env.upload(films["kermany"].data, models="all")
    assert r.status_code == 201, r.text
    assert len(calls) == 1  # the mask is computed once and passed to both models
    results = {res["model_name"]: res for res in r.json()["results"]}
    assert set(results) == {"cxr_default", LUNG_CROP_MODEL}
    rows = [stored_result(env, r.json()["id"], res["model_id"]) for res in results.values()]
    assert len({row.lung_mask_sha256 for row in rows}) == 1
    for row in rows:
        predictor = manager.get(row.model)
        assert predictor.segmenter is segmenter  # lung-crop models crop with the same segmenter


def test_lung_crop_model_reports_its_box_and_draws_only_inside_it(env: Env, films: dict[str, Film]) -> None:
    models = {m["name"]: m["id"] for m in get(env, "/api/v1/models").json()}
    r = env.upload(films["cohen"].data, models=str(models[LUNG_CROP_MODEL]))
    assert r.status_code == 201, r.text
    (result,) = r.json()["results"]
    box = Box.from_dict(result["input_box"])  # valid fractions, or this raises
    assert (box.bottom - box.top) * (box.right - box.left) < 0.95  # a real crop, not the whole film
    assert 0.0 <= result["lung_focus"]["score"] <= 1.0
    # The lung area is the crop's share of lung (the chance level of a map that can only spread there).
    assert result["lung_focus"]["lung_area"] > 0.2

    layer = rgba(get(env, result["lung_outline_url"]).content)
    assert np.any(np.all(layer == BOX_RGBA, axis=-1)) and np.any(np.all(layer == OUTLINE_RGBA, axis=-1))
    overlay = rgb(get(env, result["overlays"][result["predicted_class"]]).content)
    assert overlay.shape[:2] == layer.shape[:2]
    y0, x0, y1, x1 = box.pixels(*overlay.shape[:2])
    outside = np.ones(overlay.shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any()
    gray_outside = overlay[outside]
    assert np.abs(gray_outside[:, 0] - gray_outside[:, 1]).max() <= 1  # no heat outside the crop
    assert np.abs(gray_outside[:, 1] - gray_outside[:, 2]).max() <= 1


# ----------------------------------------------------------------------- failed uploads
def test_failed_upload_leaves_no_mask_behind(env: Env, films: dict[str, Film], monkeypatch: pytest.MonkeyPatch) -> None:
    flipped = Image.open(films["hannover"].path).convert("L").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    flipped.save(buf, format="PNG")
    before = env.files("images", "cams", "masks")

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(predictions, "_get_or_create_image", refuse)
    with pytest.raises(RuntimeError, match="database went away"):
        env.upload(buf.getvalue(), name="flipped.png")
    assert env.files("images", "cams", "masks") == before


# ------------------------------------------------------------------- invalid parameters
@pytest.mark.parametrize(
    ("query", "field", "fragment"),
    [("sort=worst", "sort", "'flagged'"), ("flagged=maybe", "flagged", "boolean"), ("flagged=", "flagged", "boolean")],
)
def test_bad_worklist_parameters_are_422_with_a_message(env: Env, query: str, field: str, fragment: str) -> None:
    r = get(env, f"/api/v1/predictions?{query}")
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", field] and fragment in error["msg"]


def test_threshold_outside_0_to_1_is_a_clear_settings_error(tmp_path: Path) -> None:
    for value in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="CXR_LUNG_FOCUS_THRESHOLD must be a number from 0 to 1"):
            Settings(data_dir=tmp_path, lung_focus_threshold=value)


def test_missing_lung_segmenter_refuses_to_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, lungseg_checkpoint=tmp_path / "nowhere.pt")
    with pytest.raises(SettingsError, match=r"CXR_LUNGSEG_CHECKPOINT.*nowhere\.pt"):
        create_app(settings, announce=lambda _line: None)
    assert not (tmp_path / "cxr-review.sqlite3").exists()  # refused before touching the database


# --------------------------------------------------------------- threshold and worklist
def worklist(env: Env, **query: str) -> list[dict[str, Any]]:
    r = get(env, "/api/v1/predictions?" + "&".join(f"{k}={v}" for k, v in {"reviewed": "any", **query}.items()))
    assert r.status_code == 200, r.text
    assert r.json()["lung_focus_threshold"] == env.settings.lung_focus_threshold
    return r.json()["items"]


def test_threshold_setting_reflags_stored_results(make_env: Callable[..., Env], films: dict[str, Film]) -> None:
    lenient = make_env(lung_focus_threshold=0.0)
    case = lenient.upload(films["cohen"].data).json()
    (result,) = case["results"]
    assert result["lung_focus"]["flagged"] is False and result["lung_focus"]["threshold"] == 0.0
    assert [i["prediction_id"] for i in worklist(lenient, flagged="false")] == [case["id"]]
    assert worklist(lenient, flagged="true") == []
    verdict = {"model_id": result["model_id"], "verdict": "approve"}
    assert (
        lenient.client.post(
            f"/api/v1/predictions/{case['id']}/verdicts", headers=lenient.auth("reviewer"), json=verdict
        ).status_code
        == 201
    )
    lenient.close()

    strict = make_env(lung_focus_threshold=1.0, users=False)
    strict.tokens = lenient.tokens
    detail = get(strict, f"/api/v1/predictions/{case['id']}").json()
    (again,) = detail["results"]
    assert again["lung_focus"] == {**result["lung_focus"], "flagged": True, "threshold": 1.0}
    assert all(f["flagged"] and f["threshold"] == 1.0 for f in again["lung_focus_by_class"].values())
    assert [i["lung_focus"]["flagged"] for i in worklist(strict, flagged="true")] == [True]
    assert worklist(strict, flagged="false") == []
    (row,) = csv.DictReader(io.StringIO(get(strict, "/api/v1/verdicts?format=csv").text))
    assert row["lung_focus_flagged"] == "true" and float(row["lung_focus_threshold"]) == 1.0
    assert float(row["lung_focus_score"]) == pytest.approx(result["lung_focus"]["score"])
    (exported,) = get(strict, "/api/v1/verdicts?format=json").json()["verdicts"]
    assert exported["lung_focus_flagged"] is True and exported["lung_focus_score"] == pytest.approx(
        result["lung_focus"]["score"]
    )


def priority_key(result: dict) -> tuple[bool, float, float]:
    """The worklist's priority as a sort key: highest error risk first, results without one last by
    ascending top probability."""
    top = result.get("top_probability") or result["probabilities"][result["predicted_class"]]
    return (result["error_risk"] is None, -(result["error_risk"] or 0.0), top)


def adult_films(data_dir: Path, per_label: int = 2) -> dict[str, Film]:
    """The first `per_label` films of each label of the adult folder (manifest order)."""
    chosen: dict[str, Film] = {}
    counts: dict[str, int] = {}
    with open(data_dir / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if counts.get(row["label"], 0) < per_label:
                counts[row["label"]] = counts.get(row["label"], 0) + 1
                name = f"{row['source']}-{row['label']}-{counts[row['label']]}"
                chosen[name] = Film(row["source"], row["label"], data_dir / row["path"])
    return chosen


def test_flagged_first_puts_flagged_results_ahead_of_the_priority_order(
    make_env: Callable[..., Env], films: dict[str, Film], cxr_adult_data_dir: Path
) -> None:
    """Two real films with lung-focus scores on either side of a threshold placed between them, where the
    one with the lower score (flagged) comes second in priority order (lower error risk). The films: one
    of each source of the paper-style folder and two of each label of the adult one (a model whose maps
    are all in the lungs needs several films for such a pair)."""
    first = make_env()
    results = {}
    for source, film in {**films, **adult_films(cxr_adult_data_dir)}.items():
        body = first.upload(film.data, name=film.path.name).json()
        (res,) = body["results"]
        results[source] = (body["id"], priority_key(res), res["lung_focus"]["score"])
    pairs = [
        (a, b) for a in results for b in results if results[a][1] > results[b][1] and results[a][2] < results[b][2]
    ]
    assert pairs, f"no two of the films have confidence and lung focus in opposite order: {results}"
    flagged, clean = pairs[0]
    threshold = (results[flagged][2] + results[clean][2]) / 2
    first.close()

    env = make_env(lung_focus_threshold=threshold, users=False)
    env.tokens = first.tokens
    ids = {source: pid for source, (pid, _top, _score) in results.items()}

    by_priority = [i["prediction_id"] for i in worklist(env)]
    assert by_priority.index(ids[clean]) < by_priority.index(ids[flagged])  # the default order

    items = worklist(env, sort="flagged")
    order = [i["prediction_id"] for i in items]
    assert order.index(ids[flagged]) < order.index(ids[clean])
    marks = [i["lung_focus"]["flagged"] for i in items]
    assert marks == sorted(marks, reverse=True)  # every flagged result before every other one
    for group in (True, False):  # each group keeps the priority order
        keys = [priority_key(i) for i in items if i["lung_focus"]["flagged"] is group]
        assert keys == sorted(keys)
    assert {i["prediction_id"] for i in worklist(env, flagged="true")} == {
        pid for pid, _top, score in results.values() if score < threshold
    }


# ---------------------------------------------------------------- before lung focus existed
def test_results_stored_before_lung_focus_read_as_not_computed(
    make_env: Callable[..., Env], films: dict[str, Film], tmp_path: Path
) -> None:
    """A data dir at revision 0002 with a prediction and a verdict, upgraded by the next start: the old
    result has no lung focus (null, never a crash), sorts after flagged ones and matches neither filter."""
    before = make_env(lung_focus_threshold=1.0)
    old = before.upload(films["kermany"].data).json()
    (old_result,) = old["results"]
    assert (
        before.client.post(
            f"/api/v1/predictions/{old['id']}/verdicts",
            headers=before.auth("reviewer"),
            json={"model_id": old_result["model_id"], "verdict": "approve"},
        ).status_code
        == 201
    )
    url = before.settings.resolved_database_url
    before.close()
    engine = make_engine(url)
    try:
        downgrade_database(engine, "0002")  # the schema (and rows) as the previous release left them
        assert current_revision(engine) == "0002"
    finally:
        engine.dispose()

    env = make_env(lung_focus_threshold=1.0, users=False)  # the start migrates to 0003
    env.tokens = before.tokens
    detail = get(env, f"/api/v1/predictions/{old['id']}").json()
    (result,) = detail["results"]
    assert result["lung_focus"] is None and result["lung_focus_by_class"] is None
    assert result["lung_outline_url"] is None and result["input_box"] is None and result["lungseg_sha256"] is None
    assert result["probabilities"] == old_result["probabilities"]  # everything else as stored
    r = get(env, old_result["lung_outline_url"])
    assert r.status_code == 404 and "not computed" in r.json()["detail"]

    new = env.upload(films["hannover"].data).json()
    assert new["results"][0]["lung_focus"]["flagged"] is True  # threshold 1.0
    order = [(i["prediction_id"], i["lung_focus"]) for i in worklist(env, sort="flagged")]
    assert order[0][0] == new["id"] and (old["id"], None) in order
    assert old["id"] not in {i["prediction_id"] for i in worklist(env, flagged="true")}
    assert old["id"] not in {i["prediction_id"] for i in worklist(env, flagged="false")}
    (row,) = csv.DictReader(io.StringIO(get(env, "/api/v1/verdicts?format=csv").text))
    assert row["lung_focus_score"] == row["lung_focus_flagged"] == row["lung_focus_threshold"] == ""

    page_client = env.client
    page_client.cookies.clear()
    login = page_client.get("/login")
    assert (
        page_client.post(
            "/login",
            data={"username": "reviewer", "password": "correct horse", "csrf_token": login.context["csrf_token"]},
            follow_redirects=False,
        ).status_code
        == 303
    )
    page = page_client.get(f"/cases/{old['id']}")
    assert page.status_code == 200 and "not computed" in page.text and "lung-focus-warning" not in page.text
    assert page_client.get("/worklist?sort=flagged&reviewed=any").status_code == 200
    assert page_client.get(f"/cases/{old['id']}/compare").status_code == 200


def test_the_api_lung_focus_object_mirrors_the_one_record() -> None:
    """`LungFocusOut` is the pydantic mirror of `ml.lung_focus.LungFocus`: the same fields, in the same order, and
    a record converts to it and back unchanged."""
    assert list(LungFocusOut.model_fields) == [f.name for f in dataclasses.fields(LungFocus)]
    for focus in (LungFocusScore(0.4, 0.3).at(0.5), LungFocusScore(None, 0.3, NO_POSITIVE_MASS).at(0.2)):
        assert LungFocusOut(**dataclasses.asdict(focus)).model_dump() == dataclasses.asdict(focus)
