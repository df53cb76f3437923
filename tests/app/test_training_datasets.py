"""A retraining job picks its datasets among the configured folders by name (`cxr`, `cxr-adult`): the
API lists them, a job records the names it uses (all by default), an unknown name is a 422 that lists
the configured ones, and the admin form offers one checkbox per folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.models import AuditEntry, TrainingJob
from tests.app.conftest import Env, start_env
from tests.app.test_training_jobs import admin_browser
from tests.support.training import write_tiny_manifest

GOOD = {"architecture": "cnnx", "scenario": "s1", "epochs": 1, "batch_size": 8}
ADULT_PLAN = {("train", "normal", "nih"): 2, ("train", "covid19", "cxnet"): 2, ("test", "normal", "nih"): 1}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, cxr_data_dir: Path, cxr_adult_data_dir: Path) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("datasets")
    folders = [
        write_tiny_manifest(cxr_data_dir, root / "cxr"),
        write_tiny_manifest(cxr_adult_data_dir, root / "cxr-adult", ADULT_PLAN),
    ]
    with ExitStack() as stack:
        yield start_env(stack, tmp_path_factory.mktemp("data"), dataset_dirs=folders)


def post_job(env: Env, **change: Any) -> Any:
    return env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json={**GOOD, **change})


def cancel(env: Env, job_id: int) -> None:
    assert env.client.post(f"/api/v1/training-jobs/{job_id}/cancel", headers=env.auth("admin")).status_code == 200


def test_the_api_lists_the_configured_datasets_by_name(env: Env) -> None:
    r = env.client.get("/api/v1/training-datasets", headers=env.auth("admin"))
    assert r.status_code == 200
    assert r.json() == [{"name": "cxr", "available": True}, {"name": "cxr-adult", "available": True}]
    assert env.client.get("/api/v1/training-datasets", headers=env.auth("reviewer")).status_code == 403


def test_a_job_records_the_datasets_it_uses_all_by_default(env: Env) -> None:
    every = post_job(env)
    assert every.status_code == 202 and every.json()["params"]["datasets"] == ["cxr", "cxr-adult"]
    one = post_job(env, datasets=["cxr-adult"])
    assert one.status_code == 202 and one.json()["params"]["datasets"] == ["cxr-adult"]
    with env.session() as s:
        created = s.scalars(select(AuditEntry).where(AuditEntry.action == "training_job.create")).all()
    assert [e.details["params"]["datasets"] for e in created[-2:]] == [["cxr", "cxr-adult"], ["cxr-adult"]]
    for job in (every, one):
        cancel(env, job.json()["id"])


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        (["cxr", "nih"], "unknown dataset(s) 'nih'; configured: cxr, cxr-adult (CXR_DATASET_DIRS)"),
        (["/data/cxr"], "unknown dataset(s) '/data/cxr'; configured: cxr, cxr-adult"),  # names, never paths
        ([], "choose at least one dataset"),
        (["cxr", "cxr"], "dataset(s) cxr named twice"),
    ],
)
def test_a_bad_dataset_choice_is_422_and_nothing_is_queued(env: Env, datasets: list[str], message: str) -> None:
    before = env.count(TrainingJob)
    r = post_job(env, datasets=datasets)
    assert r.status_code == 422 and message in str(r.json()["detail"])
    assert env.count(TrainingJob) == before


def test_the_schema_offers_datasets_as_a_list_of_names(env: Env) -> None:
    spec = env.client.get("/openapi.json", headers=env.auth("admin")).json()
    prop = spec["components"]["schemas"]["TrainingParams"]["properties"]["datasets"]
    array = next(b for b in prop["anyOf"] if b.get("type") == "array")
    assert array["items"] == {"type": "string"} and "by name" in prop["description"]


def test_the_form_has_one_checkbox_per_dataset_and_refuses_none(env: Env) -> None:
    browser = admin_browser(env)
    page = browser.get("/admin/training")
    for name in ("cxr", "cxr-adult"):
        assert f'name="datasets" value="{name}" id="f-datasets-{name}" checked' in page.text
    form = {"csrf_token": page.context["csrf_token"], "architecture": "cnnx", "scenario": "s1", "epochs": "1",
            "batch_size": "8", "learning_rate": "0.0003", "seed": "0", "max_steps_per_epoch": ""}  # fmt: skip
    before = env.count(TrainingJob)
    none = browser.post("/admin/training", data={**form, "datasets": [""]})  # the hidden blank only
    assert none.status_code == 422 and any("choose at least one dataset" in e for e in none.context["errors"])
    assert 'value="cxr-adult" id="f-datasets-cxr-adult" >' in none.text  # the form shows nothing ticked
    assert env.count(TrainingJob) == before
    good = browser.post("/admin/training", data={**form, "datasets": ["", "cxr-adult"]})
    assert good.status_code == 303
    job = browser.get(good.headers["location"]).context["job"]
    assert job.params["datasets"] == ["cxr-adult"]
    cancel(env, job.id)
