"""Training jobs without training: the API contract (422 before queueing, 403 for reviewers), cancel of
a queued job, atomic claiming by concurrent workers, the reaper, audited promotion/rollback, immutable
model versions and the append-only audit log, and the export of reviewed uploads without held-out films.
Real training runs are in test_training_worker.py."""

from __future__ import annotations

import csv
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.exc import DatabaseError

from app.models import AuditEntry, MLModel, TrainingJob, utcnow
from app.services import training, training_report
from app.services.training_data import export_reviewed_uploads
from ml import CLASSES
from ml.confound import confound_figures
from ml.data import read_manifest
from ml.metrics import classification_report
from tests.app.conftest import Env, start_env
from tests.support.checkpoints import write_untrained_cnnx
from tests.support.postgres import PostgresCluster
from tests.support.training import write_tiny_manifest

GOOD = {"architecture": "cnnx", "scenario": "s1", "epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, cxr_data_dir: Path) -> Path:
    return write_tiny_manifest(cxr_data_dir, tmp_path_factory.mktemp("tiny-cxr"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("data")
    write_untrained_cnnx(data_dir / "models" / "cnnx-untrained.pt")
    with ExitStack() as stack:
        yield start_env(stack, data_dir, dataset_dir=tiny_dataset)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def jobs_count(env: Env) -> int:
    return env.count(TrainingJob)


def audit_actions(env: Env) -> list[tuple[str, str, int | None]]:
    with env.session() as s:
        return [(e.actor, e.action, e.target_id) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"architecture": "resnet9000"}, "architecture"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": -3}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"scenario": "s4"}, "scenario"),
        ({"seed": -1}, "seed"),
        ({"max_steps_per_epoch": 0}, "max_steps_per_epoch"),
        ({"pretrained": True}, None),  # CNN-X has no ImageNet weights
        ({"input_mode": "lungs-only"}, "input_mode"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_parameters_are_422_and_nothing_is_queued(env: Env, change: dict, field: str | None) -> None:
    before = jobs_count(env)
    r = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json={**GOOD, **change})
    assert r.status_code == 422, r.text
    if field is not None:
        assert field in {e["loc"][-1] for e in r.json()["detail"]}
    else:
        assert "no ImageNet weights" in str(r.json()["detail"])
    assert jobs_count(env) == before


def test_unknown_architecture_message_lists_the_registry(env: Env) -> None:
    r = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json={**GOOD, "architecture": "vit"})
    assert r.status_code == 422
    assert (
        "unknown architecture 'vit'" in r.json()["detail"][0]["msg"] and "squeezenet1_1" in r.json()["detail"][0]["msg"]
    )


def test_reviewers_get_403_on_every_training_endpoint(env: Env) -> None:
    job = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=GOOD).json()
    for method, url, body in (
        ("POST", "/api/v1/training-jobs", GOOD),
        ("GET", "/api/v1/training-jobs", None),
        ("GET", f"/api/v1/training-jobs/{job['id']}", None),
        ("POST", f"/api/v1/training-jobs/{job['id']}/cancel", None),
        ("GET", f"/api/v1/training-jobs/{job['id']}/report", None),
        ("GET", f"/api/v1/training-jobs/{job['id']}/charts/curves.png", None),
        ("GET", "/api/v1/architectures", None),
        ("GET", "/api/v1/training-datasets", None),
        ("GET", "/api/v1/audit-log", None),
        ("POST", "/api/v1/models/1/activate", None),
    ):
        r = env.client.request(method, url, headers=env.auth("reviewer"), json=body)
        assert r.status_code == 403, (method, url, r.status_code)
    for url in ("/admin/training", f"/admin/training/{job['id']}", "/admin/audit"):
        assert env.client.get(url, headers=env.auth("reviewer")).status_code == 403
    env.client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=env.auth("admin"))


def test_queued_job_contract_cancel_and_audit(env: Env) -> None:
    r = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=GOOD)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["model_id"] is None and job["error"] is None
    assert job["params"] == {**GOOD, "learning_rate": 3e-4, "seed": 0, "pretrained": False,
                             "include_reviewed": False, "max_steps_per_epoch": None,
                             "input_mode": "full", "explanation_weight": 0.0,
                             "datasets": [env.settings.dataset_dir.name]}  # fmt: skip
    with env.session() as s:
        active = s.scalar(select(MLModel).where(MLModel.active.is_(True)))
    assert job["parent_model_id"] == active.id  # the version it would replace
    listed = env.client.get("/api/v1/training-jobs", headers=env.auth("admin")).json()
    assert listed[0]["id"] == job["id"]  # newest first

    cancelled = env.client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=env.auth("admin")).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    again = env.client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=env.auth("admin"))
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert env.client.get(f"/api/v1/training-jobs/{job['id']}/report", headers=env.auth("admin")).status_code == 409
    assert env.client.get("/api/v1/training-jobs/999999", headers=env.auth("admin")).status_code == 404
    actions = [a for a in audit_actions(env) if a[2] == job["id"] and a[1].startswith("training_job.")]
    assert actions == [("admin2", "training_job.create", job["id"]), ("admin2", "training_job.cancel", job["id"])]
    logged = env.client.get("/api/v1/audit-log?action=training_job.", headers=env.auth("admin")).json()
    assert {(e["actor"], e["action"]) for e in logged if e["target_id"] == job["id"]} == {
        ("admin2", "training_job.create"),
        ("admin2", "training_job.cancel"),
    }


def test_missing_dataset_is_409_not_queued(make_env: Callable[..., Env], tmp_path: Path) -> None:
    other = make_env(tmp_path / "d2", dataset_dir=tmp_path / "nowhere")
    r = other.client.post("/api/v1/training-jobs", headers=other.auth("admin"), json=GOOD)
    assert r.status_code == 409 and "CXR_DATASET_DIR" in r.json()["detail"]
    assert other.count(TrainingJob) == 0


def queue_jobs(env: Env, n: int) -> list[int]:
    return [
        env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=GOOD).json()["id"] for _ in range(n)
    ]


def claim_concurrently(session_factory: Any, n_workers: int) -> list[int]:
    """`n_workers` threads claim until the queue is empty; returns every claimed id (duplicates kept)."""
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(n_workers)

    def work(i: int) -> None:
        start.wait()
        while True:
            with session_factory() as s:
                job = training.claim_next_job(session=s, worker_id=f"test:{i}")
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return claimed


def cancel_all(env: Env) -> None:
    with env.session() as s:
        s.execute(update(TrainingJob).where(TrainingJob.status.in_(("queued", "running"))).values(status="cancelled"))
        s.commit()


def test_concurrent_workers_claim_each_job_exactly_once_sqlite(env: Env) -> None:
    cancel_all(env)
    ids = queue_jobs(env, 6)
    claimed = claim_concurrently(env.app.state.ctx.session_factory, 4)
    assert sorted(claimed) == ids  # every job once, none twice
    with env.session() as s:
        rows = list(s.scalars(select(TrainingJob).where(TrainingJob.id.in_(ids))))
    assert {r.status for r in rows} == {"running"} and all(r.attempts == 1 and r.heartbeat_at for r in rows)
    cancel_all(env)


def test_reaper_fails_jobs_without_heartbeat_and_their_worker_learns_it(env: Env) -> None:
    cancel_all(env)
    stale_id, cancelling_id, fresh_id = queue_jobs(env, 3)
    sf = env.app.state.ctx.session_factory
    with sf() as s:
        for _ in range(3):
            training.claim_next_job(session=s, worker_id="gone:1")
        old = utcnow() - timedelta(seconds=120)
        s.execute(update(TrainingJob).where(TrainingJob.id.in_((stale_id, cancelling_id))).values(heartbeat_at=old))
        s.execute(update(TrainingJob).where(TrainingJob.id == cancelling_id).values(cancel_requested=True))
        s.commit()
        assert sorted(training.reap_stale_jobs(session=s, stale_after_seconds=30)) == [stale_id, cancelling_id]
        assert training.reap_stale_jobs(session=s, stale_after_seconds=30) == []  # once only
        control = training.report_progress(session=s, job_id=stale_id, worker_id="gone:1", values={"progress": 0.5})
        assert control.owned is False  # a worker that was presumed dead stops
        assert training.report_progress(session=s, job_id=fresh_id, worker_id="gone:1", values={}).owned is True
    jobs = {j["id"]: j for j in env.client.get("/api/v1/training-jobs", headers=env.auth("admin")).json()}
    assert jobs[stale_id]["status"] == "failed" and "stopped responding" in jobs[stale_id]["error"]
    assert jobs[cancelling_id]["status"] == "cancelled"
    assert jobs[fresh_id]["status"] == "running"
    reaped = [a for a in audit_actions(env) if a[1] == "training_job.reaped"]
    assert {(a[0], a[2]) for a in reaped} >= {("system", stale_id), ("system", cancelling_id)}
    cancel_all(env)


def test_promotion_and_rollback_are_audited_and_refused_for_missing_checkpoints(env: Env) -> None:
    models = env.client.get("/api/v1/models", headers=env.auth("admin")).json()
    active = next(m for m in models if m["active"])
    other = next(m for m in models if not m["active"])
    forward, back = (other, active) if other["id"] > active["id"] else (active, other)
    # make the older one active first, so that activating the newer one is a promotion
    assert env.client.post(f"/api/v1/models/{back['id']}/activate", headers=env.auth("admin")).status_code == 200
    assert env.client.post(f"/api/v1/models/{forward['id']}/activate", headers=env.auth("admin")).status_code == 200
    assert env.client.post(f"/api/v1/models/{back['id']}/activate", headers=env.auth("admin")).status_code == 200
    listed = env.client.get("/api/v1/models", headers=env.auth("reviewer")).json()
    assert [m["id"] for m in listed if m["active"]] == [back["id"]]
    entries = env.client.get("/api/v1/audit-log?action=model.", headers=env.auth("admin")).json()
    assert [(e["actor"], e["action"], e["target_id"]) for e in entries[:2]] == [
        ("admin2", "model.rollback", back["id"]),
        ("admin2", "model.promote", forward["id"]),
    ]
    assert entries[0]["details"]["replaced"]["id"] == forward["id"]

    with env.session() as s:  # a checkpoint that vanished cannot be made active
        model = s.get(MLModel, forward["id"])
        path = Path(model.checkpoint_path)
    moved = path.with_suffix(".moved")
    path.rename(moved)
    try:
        r = env.client.post(f"/api/v1/models/{forward['id']}/activate", headers=env.auth("admin"))
        assert r.status_code == 409 and "missing or changed" in r.json()["detail"]
    finally:
        moved.rename(path)
    env.client.post(f"/api/v1/models/{active['id']}/activate", headers=env.auth("admin"))


def test_model_versions_are_immutable_and_the_audit_log_append_only(env: Env) -> None:
    with env.session() as s:
        model = s.scalars(select(MLModel)).first()
        with pytest.raises(DatabaseError, match="immutable"):
            s.execute(update(MLModel).where(MLModel.id == model.id).values(metrics={"test": {"accuracy": 1.0}}))
        s.rollback()
        with pytest.raises(DatabaseError, match="immutable"):
            s.execute(update(MLModel).where(MLModel.id == model.id).values(checkpoint_sha256="0" * 64))
        s.rollback()
        s.execute(update(MLModel).where(MLModel.id == model.id).values(active=model.active))  # allowed
        s.commit()
        with pytest.raises(DatabaseError, match="append-only"):
            s.execute(text("UPDATE audit_log SET actor = 'someone else'"))
        s.rollback()
        with pytest.raises(DatabaseError, match="append-only"):
            s.execute(text("DELETE FROM audit_log"))
        s.rollback()


def test_reviewed_uploads_export_leaves_out_held_out_films(env: Env, tiny_dataset: Path, tmp_path: Path) -> None:
    rows = read_csv(tiny_dataset / "manifest.csv")
    val_film = Path(next(r["path"] for r in rows if r["split"] == "val" and r["label"] == "normal"))
    train_film = Path(next(r["path"] for r in rows if r["split"] == "train" and r["label"] == "covid19"))
    diagnosed = {}
    for film, diagnosis in ((val_film, "normal"), (train_film, "viral")):
        case = env.upload(film.read_bytes()).json()
        for d in (None, "bacterial", diagnosis):  # the latest diagnosis counts; one without none is ignored
            r = env.client.post(
                f"/api/v1/predictions/{case['id']}/verdicts",
                headers=env.auth("reviewer"),
                json={"model_id": case["results"][0]["model_id"], "verdict": "approve", "diagnosis": d},
            )
            assert r.status_code == 201
        diagnosed[case["image_sha256"]] = diagnosis
    unreviewed = Path(next(r["path"] for r in rows if r["split"] == "train" and r["label"] == "normal"))
    env.upload(unreviewed.read_bytes())  # no verdict, no diagnosis: not exported

    out = tmp_path / "reviewed"
    with env.session() as s:
        info = export_reviewed_uploads(
            session=s, store=env.app.state.ctx.store, dataset_dirs=[tiny_dataset], out_dir=out, cache_dir=tmp_path / "c"
        )
    assert info["reviewed"] == 2 and info["added"] == 1 and info["excluded_holdout"] == 1
    exported = read_csv(out / "manifest.csv")
    assert len(exported) == 1
    (row,) = exported
    assert row["split"] == "train" and row["label"] == "viral" and row["source"] == "upload"
    assert Path(row["path"]).is_file() and Path(row["path"]).is_absolute()
    train_sha = next(sha for sha, d in diagnosed.items() if d == "viral")
    assert train_sha in row["path"]
    assert info["manifest_sha256"] is not None


def test_reviewed_uploads_export_carries_the_boxes_of_the_verdicts_that_count(
    env: Env, tiny_dataset: Path, tmp_path: Path
) -> None:
    rows = read_csv(tiny_dataset / "manifest.csv")
    film = Path([r["path"] for r in rows if r["split"] == "train" and r["label"] == "normal"][-1])
    case = env.upload(film.read_bytes()).json()
    first = {"kind": "wrong_evidence", "box": [0.0, 0.0, 0.2, 0.1]}
    second = {"kind": "wrong_evidence", "box": [0.7, 0.0, 1.0, 0.15]}
    finding = {"kind": "finding", "box": [0.2, 0.3, 0.45, 0.6]}
    for who, regions in (("reviewer", [first]), ("reviewer", [second]), ("admin", [finding, second])):
        body = {"model_id": case["results"][0]["model_id"], "verdict": "reject", "reasons": ["text_or_marker"],
                "diagnosis": "normal", "regions": regions}  # fmt: skip
        r = env.client.post(f"/api/v1/predictions/{case['id']}/verdicts", headers=env.auth(who), json=body)
        assert r.status_code == 201, r.text
    out = tmp_path / "reviewed"
    with env.session() as s:
        info = export_reviewed_uploads(
            session=s, store=env.app.state.ctx.store, dataset_dirs=[tiny_dataset], out_dir=out, cache_dir=tmp_path / "c"
        )
    # the reviewer's first box was superseded by their second verdict; the admin's repeat of it counts once
    assert info["regions"] == {"films": 1, "wrong_evidence": 1, "finding": 1}
    (row,) = [r for r in read_csv(out / "manifest.csv") if r["regions"]]
    assert case["image_sha256"] in row["path"] and json.loads(row["regions"]) == [second, finding]
    (record,) = [r for r in read_manifest(out) if r.regions]
    assert [g.kind for g in record.regions] == ["wrong_evidence", "finding"]


def test_training_page_shows_the_form_jobs_and_versions(env: Env) -> None:
    page = env.client.get("/admin/training", headers=env.auth("admin"))
    assert page.status_code == 200 and page.template.name == "training/index.html"
    assert "squeezenet1_1" in page.text and 'id="versions"' in page.text


@pytest.mark.postgres
def test_postgres_queue_skips_locked_rows_claims_once_and_keeps_versions_immutable(
    postgres_cluster: PostgresCluster, make_env: Callable[..., Env], tiny_dataset: Path, tmp_path: Path
) -> None:
    # unique name: make_env's engine parametrisation runs this test more than once per cluster
    url = postgres_cluster.create_database(f"cxr_training_queue_{uuid.uuid4().hex[:8]}")
    pg = make_env(tmp_path / "pg-data", database_url=url, dataset_dir=tiny_dataset)
    assert pg.app.state.ctx.engine.dialect.name == "postgresql"
    first, second, *rest = queue_jobs(pg, 6)
    sf = pg.app.state.ctx.session_factory

    # Another worker holds the oldest queued row locked: a claim skips it instead of waiting.
    with pg.app.state.ctx.engine.connect() as other:
        other.execute(text("SELECT id FROM training_jobs WHERE id = :id FOR UPDATE"), {"id": first})
        with sf() as s:
            job = training.claim_next_job(session=s, worker_id="pg:0")
        assert job is not None and job.id == second
        other.rollback()

    claimed = claim_concurrently(sf, 4)
    assert sorted(claimed) == sorted([first, *rest])  # each remaining job exactly once

    with sf() as s:
        s.execute(update(TrainingJob).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        s.commit()
        assert sorted(training.reap_stale_jobs(session=s, stale_after_seconds=30)) == sorted([first, second, *rest])
        model = s.scalars(select(MLModel)).first()
        with pytest.raises(DatabaseError, match="immutable"):
            s.execute(update(MLModel).where(MLModel.id == model.id).values(hparams={"lr": 1}))
        s.rollback()
        with pytest.raises(DatabaseError, match="append-only"):
            s.execute(text("DELETE FROM audit_log"))
        s.rollback()
    failed = pg.client.get("/api/v1/training-jobs", headers=pg.auth("admin")).json()
    assert {j["status"] for j in failed} == {"failed"}


def admin_browser(env: Env) -> TestClient:
    """A cookie session of admin2 on the module's app."""
    client = TestClient(env.app, follow_redirects=False)
    login = client.get("/login")
    form = {"username": "admin2", "password": "correct horse", "csrf_token": login.context["csrf_token"]}
    assert client.post("/login", data=form).status_code == 303
    return client


def test_training_form_refuses_bad_values_queues_good_ones_and_needs_csrf(env: Env) -> None:
    browser = admin_browser(env)
    token = browser.get("/admin/training").context["csrf_token"]
    form = {"csrf_token": token, "architecture": "cnnx", "scenario": "s1", "epochs": "0", "batch_size": "8",
            "learning_rate": "0.0003", "seed": "0", "max_steps_per_epoch": ""}  # fmt: skip
    before = jobs_count(env)
    bad = browser.post("/admin/training", data=form)
    assert bad.status_code == 422 and bad.template.name == "training/index.html"
    assert any(e.startswith("epochs:") for e in bad.context["errors"]) and "Nothing was queued" in bad.text
    assert bad.context["form"]["epochs"] == "0"  # the form keeps what was typed
    assert browser.post("/admin/training", data={**form, "epochs": "2", "csrf_token": ""}).status_code == 403
    assert jobs_count(env) == before

    good = browser.post("/admin/training", data={**form, "epochs": "2", "pretrained": "on"})
    assert good.status_code == 422 and "no ImageNet weights" in " ".join(good.context["errors"])
    good = browser.post("/admin/training", data={**form, "epochs": "2", "include_reviewed": "on"})
    assert good.status_code == 303
    job_page = browser.get(good.headers["location"])
    assert job_page.status_code == 200 and job_page.template.name == "training/job.html"
    job = job_page.context["job"]
    assert job.status == "queued" and job.params["include_reviewed"] is True and job.params["epochs"] == 2
    assert 'id="job-progress"' in job_page.text and "/static/training.js" in job_page.text
    cancel = browser.post(f"/admin/training/{job.id}/cancel", data={"csrf_token": token})
    assert cancel.status_code == 303 and get_status(env, job.id) == "cancelled"


def get_status(env: Env, job_id: int) -> str:
    return env.client.get(f"/api/v1/training-jobs/{job_id}", headers=env.auth("admin")).json()["status"]


def shortcut_report(labels: list[str], predicted: list[str], sources: list[str], ages: list[str]) -> dict[str, Any]:
    """An ml.evaluate-shaped report of hand-made predictions (4-class figures over the 4-class rows)."""
    full = [(CLASSES.index(t), CLASSES.index(p)) for t, p in zip(labels, predicted, strict=True) if t in CLASSES]
    report = classification_report([t for t, _ in full], [p for _, p in full])
    return {**report, "by_source": {}, **confound_figures(labels, predicted, sources=sources, age_groups=ages)}


def test_job_page_shows_the_shortcut_check_of_both_models(env: Env) -> None:
    # 2 Kermany children (normal, bacterial), 3 NIH adults (normal, 2 pneumonia), 2 Hannover COVID-19 adults
    labels = ["normal", "bacterial", "normal", "pneumonia", "pneumonia", "covid19", "covid19"]
    sources = ["kermany", "kermany", "nih", "nih", "nih", "hannover", "hannover"]
    ages = ["child", "child", "adult", "adult", "adult", "adult", "adult"]
    # the active model calls every adult film COVID-19; the new one one NIH pneumonia film, and misses a COVID-19 one
    active = shortcut_report(labels, ["normal", "bacterial", *["covid19"] * 5], sources, ages)
    new = shortcut_report(labels, ["normal", "viral", "normal", "viral", "covid19", "covid19", "normal"], sources, ages)
    assert training_report.summary(new)["confound"]["by_age_group"]["adult"] == {
        "non_covid": 3, "non_covid_called_covid19_share": 1 / 3, "covid19": 2, "covid19_sensitivity": 0.5,
    }  # fmt: skip
    report = {"split": "test", "model": {"id": 1, "name": "cnnx-s2", "version": 9, "report": new},
              "active": {"id": 2, "name": "resnet18-s2", "version": 1, "report": active}, "history": [],
              "dataset": {}, "charts": []}  # fmt: skip
    with env.session() as s:
        job = TrainingJob(params=GOOD, epochs=1, status="succeeded", report=report, finished_at=utcnow())
        before = {**report, "model": {**report["model"], "report": {"per_class": {}}}, "active": None}
        old = TrainingJob(params=GOOD, epochs=1, status="succeeded", finished_at=utcnow(), report=before)
        s.add_all([job, old])
        s.commit()
        job_id, old_id = job.id, old.id
    page = env.client.get(f"/admin/training/{job_id}", headers=env.auth("admin"))
    assert page.status_code == 200
    html = " ".join(page.text.split())
    # three-group matrix: new [[2,0,0],[0,2,1],[1,0,1]] beside the active [[1,0,1],[0,1,2],[0,0,2]]
    row = html[html.index('<th scope="row">non-COVID pneumonia</th>') :].split("</tr>")[0]
    assert [c.split("<")[0] for c in row.split('<td class="num">')[1:]] == ["0", "2", "1", "0", "1", "2"]
    rates = "COVID-19 sensitivity <strong>50.0 %</strong>, specificity <strong>80.0 %</strong> (new)"
    assert f"{rates}; 100.0 % and 40.0 % (active)" in html
    # confound rows: adults' non-COVID films called COVID-19, new 1 of 3, active 3 of 3
    adult = html[html.index("Age: adult") :]
    cells = [c.split("<")[0].strip() for c in adult.split('<td class="num')[1:7]]
    assert [c.split(">", 1)[1] for c in cells] == ["3", "33.3 %", "50.0 %", "3", "100.0 %", "100.0 %"]
    assert "Source: nih" in html and "Age: child" in html and 'id="by-age-group"' in html
    old_page = env.client.get(f"/admin/training/{old_id}", headers=env.auth("admin"))
    assert old_page.status_code == 200 and 'id="confound-missing"' in old_page.text
