"""Real training jobs through the real API and a real `cxr-review worker` process, on a tiny manifest of
real films (CNN-X, scenario s1, steps per epoch capped by CXR_TRAIN_MAX_STEPS):

- a job runs to `succeeded`, its model appears with metrics and lineage, is promoted, the next
  prediction uses it, and a rollback puts the previous version back — all audited;
- reviewed uploads join the training split, except one identical to a test film;
- a worker stopped with SIGTERM puts its job back in the queue; another worker takes it up again;
- cancelling a running job stops its training process and registers nothing;
- a worker killed with SIGKILL mid-job leaves no trainer behind, the web process's reaper marks the
  job failed within the stale limit, and predictions keep working throughout.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Env, Film, png_size, start_env
from tests.support.training import write_tiny_manifest

ROOT = Path(__file__).resolve().parent.parent.parent
STALE_SECONDS = 8
MAX_STEPS = 3
JOB_TIMEOUT_S = 300
SHORT = {"architecture": "cnnx", "scenario": "s1", "epochs": 3, "batch_size": 4}  # 12 training films: 3 steps/epoch
LONG = {**SHORT, "epochs": 500}  # never finishes within a test: for cancel and kill


@dataclass
class WorkerProcess:
    env_vars: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=self.env_vars, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


ADULT_PLAN = {
    ("train", "normal", "nih"): 2, ("train", "covid19", "cxnet"): 2, ("val", "normal", "nih"): 1,
    ("val", "covid19", "cxnet"): 1, ("test", "normal", "nih"): 1, ("test", "covid19", "cxnet"): 1,
    ("test", "pneumonia", "nih"): 1,  # not a class of scenario s1: left out of its training and test
}  # fmt: skip
"""A second dataset folder of real adult films (cxr-adult), so that a job trains on two."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, cxr_data_dir: Path, cxr_adult_data_dir: Path) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("datasets")
    folders = [write_tiny_manifest(cxr_data_dir, root / "tiny-cxr"),
               write_tiny_manifest(cxr_adult_data_dir, root / "tiny-adult", ADULT_PLAN)]  # fmt: skip
    with ExitStack() as stack:
        yield start_env(
            stack, tmp_path_factory.mktemp("data"), dataset_dirs=folders, worker_stale_seconds=STALE_SECONDS
        )


@pytest.fixture(scope="module")
def worker(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    variables = {
        **os.environ,
        "CXR_ENV": "development",
        "CXR_DATA_DIR": str(env.settings.data_dir),
        "CXR_DATASET_DIRS": json.dumps([str(d) for d in env.settings.resolved_dataset_dirs.values()]),
        "CXR_TRAIN_MAX_STEPS": str(MAX_STEPS),
        "CXR_TRAIN_THREADS": "1",
        "CXR_WORKER_POLL_SECONDS": "0.3",
        "CXR_WORKER_HEARTBEAT_SECONDS": "1",
        "CXR_WORKER_STALE_SECONDS": str(STALE_SECONDS),
        "PYTHONUNBUFFERED": "1",
    }
    process = WorkerProcess(variables, tmp_path_factory.mktemp("worker") / "worker.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def get_job(env: Env, job_id: int) -> dict[str, Any]:
    r = env.client.get(f"/api/v1/training-jobs/{job_id}", headers=env.auth("admin"))
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(
    env: Env, worker: WorkerProcess, job_id: int, done: Callable[[dict[str, Any]], bool], timeout: float = JOB_TIMEOUT_S
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll the job until `done(job)`; returns the last reply and every reply seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(env, job_id)
        seen.append(job)
        if done(job):
            return job, seen
        time.sleep(0.3)
    pytest.fail(f"job {job_id} did not get there in {timeout} s: {seen[-1]}\nworker log:\n{worker.tail()}")


def processes_mentioning(fragment: str) -> list[int]:
    """Live processes whose command line contains `fragment` (the job's work dir names its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline:
                pids.append(int(entry.name))
    return pids


def wait_no_processes(fragment: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while processes_mentioning(fragment) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(fragment) == [], f"processes still running for {fragment}"


def training(job: dict[str, Any]) -> bool:
    return job["status"] == "running" and job["phase"] == "training" and job["progress"] > 0


def final(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def review(env: Env, film: Path, diagnosis: str) -> None:
    case = env.upload(film.read_bytes()).json()
    body = {"model_id": case["results"][0]["model_id"], "verdict": "approve", "diagnosis": diagnosis}
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=body)
    assert r.status_code == 201


def tiny_film(env: Env, split: str, label: str) -> Path:
    with (env.settings.resolved_dataset_dirs["tiny-cxr"] / "manifest.csv").open(newline="") as fh:
        return Path(next(r["path"] for r in csv.DictReader(fh) if r["split"] == split and r["label"] == label))


def test_job_succeeds_is_promoted_used_and_rolled_back(env: Env, worker: WorkerProcess, films: dict[str, Film]) -> None:
    review(env, tiny_film(env, "test", "covid19"), "covid19")  # a held-out film: must not reach training
    review(env, tiny_film(env, "train", "covid19"), "covid19")  # a training film: added again as an upload
    body = {**SHORT, "include_reviewed": True, "input_mode": "lung-crop"}
    r = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=body)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job, seen = wait_for(env, worker, r.json()["id"], final)
    assert job["status"] == "succeeded", f"{job['error']}\n{worker.tail()}"
    progress = [j["progress"] for j in seen if j["status"] == "running"]
    assert progress == sorted(progress), "progress went backwards"
    assert any(0 < p < 1 for p in progress), f"no intermediate progress seen: {progress}"
    assert job["progress"] == 1.0 and job["epoch"] == SHORT["epochs"] and job["steps_per_epoch"] == MAX_STEPS
    history = job["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and all(h["val_accuracy"] is not None for h in history)
    assert job["metrics"]["test"]["n"] == 6 + 2  # s1 on both test splits: 3 + 1 normal, 3 + 1 COVID-19
    reviewed = job["dataset"]["reviewed_uploads"]
    assert (reviewed["reviewed"], reviewed["added"], reviewed["excluded_holdout"]) == (2, 1, 1)
    assert job["metrics"]["train_images"] == 12 + 4 + 1  # both folders' s1 training films + the upload
    # both dataset folders (by default every configured one), recorded and handed to the trainer
    folders = env.settings.resolved_dataset_dirs
    assert job["params"]["datasets"] == ["tiny-cxr", "tiny-adult"]
    assert [(m["name"], m["data_dir"]) for m in job["dataset"]["manifests"]] == [
        (name, str(folder.resolve())) for name, folder in folders.items()
    ]
    config = json.loads((env.settings.training_dir / f"job-{job['id']}" / "train-config.json").read_text())
    assert config["data_dirs"] == [str(folder.resolve()) for folder in folders.values()]

    models = {m["id"]: m for m in env.client.get("/api/v1/models", headers=env.auth("reviewer")).json()}
    new, parent = models[job["model_id"]], models[job["parent_model_id"]]
    assert new["name"] == "cnnx-s1-lung-crop"  # its own line of versions, not a newer whole-film cnnx-s1
    assert new["version"] == 1 and new["active"] is False and parent["active"] is True
    assert new["parent_id"] == parent["id"]
    assert new["data_manifest_sha256"] == job["dataset"]["manifest_sha256"]
    assert new["hparams"]["epochs"] == 3 and new["hparams"]["max_steps_per_epoch"] == MAX_STEPS
    assert new["hparams"]["training_job_id"] == job["id"] and new["hparams"]["reviewed_uploads_added"] == 1
    assert set(new["metrics"]) == {"val", "test"} and new["metrics"]["test"]["n"] == 8
    assert new["hparams"]["input_mode"] == "lung-crop"
    headline = job["metrics"]["test"]["lung_focus"]
    assert headline["threshold"] == 0.5 and 0.0 <= headline["median"] <= 1.0
    assert 0.0 <= headline["right_for_right_reasons"] <= 1.0 - headline["flagged_share"] + 1e-9

    report = env.client.get(job["report_url"], headers=env.auth("admin")).json()
    assert report["model"]["id"] == new["id"] and report["active"]["id"] == parent["id"]
    assert report["model"]["report"]["accuracy"] == job["metrics"]["test"]["accuracy"]
    assert set(report["model"]["report"]["by_source"]) == {"kermany", "hannover", "nih", "cxnet"}
    assert report["active"]["report"]["n"] == report["model"]["report"]["n"]  # the same films
    # the shortcut check: children's and adults' films, both models on the same films
    for side in ("model", "active"):
        confound = report[side]["report"]["confound"]
        assert set(confound["by_age_group"]) == {"child", "adult"} and confound["by_source"]["nih"]["non_covid"] == 1
        assert report[side]["report"]["three_group"]["n"] == 8
    assert job["metrics"]["test"]["confound"]["by_age_group"]["child"]["non_covid"] == 3
    page = env.client.get(f"/admin/training/{job['id']}", headers=env.auth("admin"))
    assert page.status_code == 200 and 'id="confound"' in page.text and "Source: nih" in page.text
    assert "datasets tiny-cxr + tiny-adult" in " ".join(page.text.split())
    assert report["model"]["report"]["per_class"]["covid19"]["sensitivity_ci95"] is not None
    # lung focus of both models on the same films; the new one saw lung crops, the active one whole films
    new_focus, active_focus = report["model"]["report"]["lung_focus"], report["active"]["report"]["lung_focus"]
    assert new_focus["overall"]["n"] == active_focus["overall"]["n"] == 8
    assert report["model"]["report"]["input_mode"] == "lung-crop"
    assert report["active"]["report"]["input_mode"] == "full"
    assert new_focus["overall"]["median_lung_area"] > active_focus["overall"]["median_lung_area"]
    for url in job["charts"].values():
        png = env.client.get(url, headers=env.auth("admin"))
        assert png.status_code == 200 and png_size(png.content)[0] > 300

    # Promote without a restart: the next prediction uses the new version. Three tiny epochs find far fewer
    # films than the bundled model (test macro sensitivity, same split), so the promotion needs a reason.
    url = f"/api/v1/models/{new['id']}/activate"
    refused = env.client.post(url, headers=env.auth("admin"))
    assert refused.status_code == 422 and "give a reason" in refused.json()["detail"], refused.text
    r = env.client.post(url, headers=env.auth("admin"), json={"reason": "test run of the promotion path"})
    assert r.status_code == 200
    case = env.upload(films["kermany"].data).json()
    assert [(r["model_id"], r["model_version"]) for r in case["results"]] == [(new["id"], 1)]
    # Roll back to the parent: the next prediction uses it again.
    assert env.client.post(f"/api/v1/models/{parent['id']}/activate", headers=env.auth("admin")).status_code == 200
    case = env.upload(films["hannover"].data).json()
    assert [r["model_id"] for r in case["results"]] == [parent["id"]]

    audit = env.client.get("/api/v1/audit-log", headers=env.auth("admin")).json()
    trail = [(e["actor"], e["action"], e["target_id"]) for e in reversed(audit)]
    expected = [
        ("admin2", "training_job.create", job["id"]),
        ("system", "training_job.succeeded", job["id"]),
        ("admin2", "model.promote", new["id"]),
        ("admin2", "model.rollback", parent["id"]),
    ]
    assert [t for t in trail if t in expected] == expected


WRONG_BOX = {"kind": "wrong_evidence", "box": [0.02, 0.03, 0.3, 0.2]}


def test_a_job_on_reviewed_films_uses_the_reviewers_boxes(env: Env, worker: WorkerProcess, tmp_path: Path) -> None:
    """A rejection with a "wrong evidence" box on a reviewed upload: the retraining job exports the box with
    the film, trains with the explanation loss on it, and says so; the loss on that film depends on the box."""
    import dataclasses

    import torch

    from app.models import MLModel
    from ml.checkpoints import load_model, read_meta
    from ml.data import Region, load_images, read_manifest
    from ml.explanation import ExplanationLoss, FeaturesAndLogits, allowed_masks, class_maps
    from ml.lungseg import LungSegmenter
    from ml.registry import get_arch
    from ml.transforms import normalize_batch

    case = env.upload(tiny_film(env, "train", "normal").read_bytes()).json()
    body = {"model_id": case["results"][0]["model_id"], "verdict": "reject", "reasons": ["text_or_marker"],
            "diagnosis": "normal", "regions": [WRONG_BOX]}  # fmt: skip
    r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth("reviewer"), json=body)
    assert r.status_code == 201 and r.json()["regions"] == [WRONG_BOX]
    job_body = {**SHORT, "epochs": 1, "include_reviewed": True, "explanation_weight": 1.0}
    r = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=job_body)
    assert r.status_code == 202, r.text
    job, _ = wait_for(env, worker, r.json()["id"], final)
    assert job["status"] == "succeeded", f"{job['error']}\n{worker.tail()}"

    # the report counts the films and boxes, and says they entered the loss
    regions = job["dataset"]["reviewed_uploads"]["regions"]
    assert regions == {"films": 1, "wrong_evidence": 1, "finding": 0, "used": True}
    report = env.client.get(job["report_url"], headers=env.auth("admin")).json()
    assert report["dataset"]["reviewed_uploads"]["regions"] == regions
    page = env.client.get(f"/admin/training/{job['id']}", headers=env.auth("admin"))
    assert "1 reviewed film with boxes (1 wrong evidence, 0 finding): used in the explanation loss" in page.text
    # the trainer read the box (its checkpoint says so) and trained with the explanation loss
    with env.session() as s:
        path = s.get(MLModel, job["model_id"]).checkpoint_path
    meta = read_meta(path)
    assert meta.data is not None and meta.data.reviewer_regions == {"films": 1, "wrong_evidence": 1, "finding": 0}
    assert meta.train_config["explanation_weight"] == 1.0
    assert "train_evidence_outside" in job["metrics"]["history"][0]

    # the exported manifest holds the box with the film; the loss on that film changes when the box does
    records = read_manifest(env.settings.training_dir / f"job-{job['id']}" / "reviewed")
    (boxed,) = [rec for rec in records if rec.regions]
    assert boxed.regions == (Region("wrong_evidence", tuple(WRONG_BOX["box"])),)
    model, _ = load_model(path)
    spec = get_arch("cnnx")
    moved = dataclasses.replace(boxed, regions=(Region("wrong_evidence", (0.2, 0.2, 0.8, 0.8)),))
    shares = []
    for record in (boxed, moved):
        loaded = load_images([record], spec.input_size, segmenter=LungSegmenter.from_checkpoint(), cache_dir=tmp_path)
        allowed = torch.from_numpy(allowed_masks(loaded, 0.04)[:, None])
        x = normalize_batch(torch.from_numpy(loaded.images).unsqueeze(1), spec.mean, spec.std)
        with torch.no_grad():
            features, logits = FeaturesAndLogits(model)(x)
            maps = class_maps(model, spec, features, logits)
            shares.append(float(ExplanationLoss(("normal", "covid19"))(maps, allowed, torch.tensor([0]))))
    assert abs(shares[0] - shares[1]) > 1e-3, shares


def test_stopped_worker_requeues_its_job_and_cancel_stops_training(env: Env, worker: WorkerProcess) -> None:
    job_id = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=LONG).json()["id"]
    wait_for(env, worker, job_id, training)
    # SIGTERM (e.g. `cxr-review serve` shutting down): the job goes back to the queue, its trainer stops.
    assert worker.proc is not None
    worker.proc.terminate()
    assert worker.proc.wait(timeout=60) == 0, worker.tail()
    job = get_job(env, job_id)
    assert job["status"] == "queued" and job["progress"] == 0 and "re-queued" in job["error"]
    wait_no_processes(f"/training/job-{job_id}/")

    worker.start()  # another worker takes it up again
    job, _ = wait_for(env, worker, job_id, training)
    r = env.client.post(f"/api/v1/training-jobs/{job_id}/cancel", headers=env.auth("admin"))
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    job, _ = wait_for(env, worker, job_id, final, timeout=30)
    assert job["status"] == "cancelled" and job["model_id"] is None and job["error"] is None
    wait_no_processes(f"/training/job-{job_id}/")
    actions = [(e["actor"], e["action"]) for e in env.client.get("/api/v1/audit-log", headers=env.auth("admin")).json()
               if e["target_id"] == job_id and e["target_type"] == "training_job"]  # fmt: skip
    assert ("admin2", "training_job.cancel") in actions and ("system", "training_job.cancelled") in actions


def test_killed_worker_job_is_failed_by_the_reaper_and_serving_goes_on(
    env: Env, worker: WorkerProcess, films: dict[str, Film]
) -> None:
    job_id = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=LONG).json()["id"]
    wait_for(env, worker, job_id, training)
    assert processes_mentioning(f"/training/job-{job_id}/"), "no training process for the job"
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    killed_at = time.monotonic()
    wait_no_processes(f"/training/job-{job_id}/")  # the trainer died with its worker (parent-death signal)
    assert env.upload(films["kermany"].data).status_code == 201  # serving is unaffected
    job, _ = wait_for(env, worker, job_id, final, timeout=60)
    assert time.monotonic() - killed_at < 60
    assert job["status"] == "failed" and "stopped responding" in job["error"] and job["model_id"] is None
    assert env.upload(films["hannover"].data).status_code == 201
