"""Several registered models: CXR_MODELS_DIR registration, comparing all models, activation, and a
checkpoint that changed on disk after registration."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from app.models import MLModel
from ml import CLASSES
from ml.checkpoints import base_meta, save_checkpoint
from ml.registry import get_arch
from tests.app.conftest import Env, Film, png_size


def small_checkpoint(path: Path, seed: int) -> Path:
    """A randomly initialised CNN-X (1.4 M parameters, linear-decomposition CAM) as a real checkpoint."""
    spec = get_arch("cnnx")
    torch.manual_seed(seed)
    model = spec.build(pretrained=False)
    meta = replace(
        base_meta(spec, input_size=spec.input_size, scenario_classes=CLASSES), metrics={"val": {"accuracy": 0.25}}
    )
    return save_checkpoint(path, model, meta)


@pytest.fixture
def two_model_env(make_env: Callable[..., Env], tmp_path: Path) -> Env:
    models_dir = tmp_path / "models"
    small_checkpoint(models_dir / "cnnx-random.pt", seed=1)
    return make_env(models_dir=models_dir)


def test_models_dir_checkpoints_are_registered_and_compared(two_model_env: Env, films: dict[str, Film]) -> None:
    env = two_model_env
    models = env.client.get("/api/v1/models", headers=env.auth("reviewer")).json()
    assert [(m["architecture"], m["active"]) for m in models] == [("resnet18", True), ("cnnx", False)]
    assert models[1]["name"] == "cnnx-random" and models[1]["metrics"] == {"val": {"accuracy": 0.25}}

    default = env.upload(films["hannover"].data).json()
    assert [r["architecture"] for r in default["results"]] == ["resnet18"]  # default: the active model only

    both = env.upload(films["hannover"].data, models="all").json()
    assert [r["model_id"] for r in both["results"]] == [m["id"] for m in models]
    assert [r["cam_method"] for r in both["results"]] == ["cam", "linear-decomposition"]
    w, h = films["hannover"].size
    for result in both["results"]:
        assert math.isclose(sum(result["probabilities"].values()), 1.0, abs_tol=1e-5)
        for url in result["overlays"].values():
            ow, oh = png_size(env.client.get(url, headers=env.auth("reviewer")).content)
            assert abs(ow / oh - w / h) < 0.01

    # Verdicts are per (prediction, model); the worklist filters by model.
    cnnx_id = models[1]["id"]
    r = env.client.post(
        f"/api/v1/predictions/{both['id']}/verdicts",
        headers=env.auth("reviewer"),
        json={"model_id": cnnx_id, "verdict": "reject", "reasons": ["image_border"]},
    )
    assert r.status_code == 201
    pending = env.client.get("/api/v1/predictions", headers=env.auth("reviewer"), params={"model_id": cnnx_id}).json()[
        "items"
    ]
    assert pending == []  # its only cnnx result is reviewed
    resnet_pending = env.client.get(
        "/api/v1/predictions", headers=env.auth("reviewer"), params={"model_id": models[0]["id"]}
    ).json()["items"]
    assert {i["prediction_id"] for i in resnet_pending} == {default["id"], both["id"]}

    # An admin makes the other model the default.
    assert env.client.post(f"/api/v1/models/{cnnx_id}/activate", headers=env.auth("admin")).status_code == 200
    after = env.upload(films["kermany"].data).json()
    assert [r["model_id"] for r in after["results"]] == [cnnx_id]


def test_checkpoint_changed_after_registration_is_refused_then_registered_as_new_version(
    make_env: Callable[..., Env], films: dict[str, Film], tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    path = small_checkpoint(models_dir / "cnnx-random.pt", seed=1)
    env = make_env(tmp_path / "data", models_dir=models_dir)
    cnnx_id = env.client.get("/api/v1/models", headers=env.auth("reviewer")).json()[1]["id"]
    small_checkpoint(path, seed=2)  # overwritten in place before it was ever loaded
    r = env.upload(films["cohen"].data, models=str(cnnx_id))
    assert r.status_code == 503 and "changed since it was registered" in r.json()["detail"]
    env.close()

    env = make_env(tmp_path / "data", models_dir=models_dir, users=False)  # restart: the new file is registered
    with env.session() as s:
        rows = list(s.scalars(select(MLModel).where(MLModel.name == "cnnx-random").order_by(MLModel.version)))
    assert [m.version for m in rows] == [1, 2] and rows[0].checkpoint_sha256 != rows[1].checkpoint_sha256
