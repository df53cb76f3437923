"""A restart on the same data dir (new create_app) keeps users, tokens, predictions, files and verdicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.models import MLModel
from tests.app.conftest import Env, Film


def test_everything_survives_a_restart(make_env: Callable[..., Env], films: dict[str, Film], tmp_path: Path) -> None:
    data_dir = tmp_path / "persist"
    first = make_env(data_dir)
    assert len(first.announced) == 1 and "one-time password" in first.announced[0]  # first start: admin created
    case = first.upload(films["cohen"].data).json()
    overlay_url = next(iter(case["results"][0]["overlays"].values()))
    overlay = first.client.get(overlay_url, headers=first.auth("reviewer")).content
    verdict = first.client.post(
        f"/api/v1/predictions/{case['id']}/verdicts",
        headers=first.auth("reviewer"),
        json={"model_id": case["results"][0]["model_id"], "verdict": "reject", "reasons": ["outside_lungs"]},
    ).json()
    secret = (data_dir / "secret_key").read_text()
    first.close()

    second = make_env(data_dir, users=False)
    second.tokens = first.tokens  # the same tokens must still work after the restart
    assert second.announced == []  # the one-time password is never shown again
    assert (data_dir / "secret_key").read_text() == secret
    assert second.count(MLModel) == 1  # the bundled model is not registered twice
    detail = second.client.get(f"/api/v1/predictions/{case['id']}", headers=second.auth("reviewer")).json()
    for result in detail["results"]:
        result.pop("lung_focus_by_class")  # only in the detail
    assert detail["results"] == case["results"] and detail["image_sha256"] == case["image_sha256"]
    assert [v["id"] for v in detail["verdicts"]] == [verdict["id"]]
    assert second.client.get(overlay_url, headers=second.auth("reviewer")).content == overlay
    assert second.client.get(case["image_url"], headers=second.auth("reviewer")).status_code == 200
    export = second.client.get("/api/v1/verdicts?format=json", headers=second.auth("admin")).json()["verdicts"]
    assert [row["verdict_id"] for row in export] == [verdict["id"]]
