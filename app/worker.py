"""The training worker (`cxr-review worker`): claims queued jobs and runs each in child processes.

One job, in the job's work dir (DATA_DIR/training/job-<id>):

1. prepare: export reviewed uploads as an extra train-only manifest (`training_data`), if asked;
2. train: the job's `ml.config.TrainConfig` written to `train-config.json`, then
   `python -m ml train --config train-config.json --events events.jsonl` — under `torchrun
   --standalone --nproc_per_node N` when CXR_TRAIN_NPROC > 1 (DDP: gloo on CPU, nccl on GPU);
3. evaluate: `python -m ml evaluate` of the new checkpoint and of the active model on the test split;
4. report: charts (PNG) and the report JSON; register the checkpoint as a new, immutable model
   version (copied into the models dir, read-only) whose parent is the model active at submission.

While a child runs, the worker tails its events file and writes progress plus a heartbeat to the
job row (at most once a second, at least every CXR_WORKER_HEARTBEAT_SECONDS). A cancel request,
or the discovery that the job is no longer this worker's (it was reaped), terminates the child's
process group. Children get SIGKILL if the worker dies (Linux parent-death signal), and the
reaper (here and in the web process, `app.reaper`) fails the job of a worker that stopped
heartbeating. SIGTERM/SIGINT stop the worker gracefully: a running job is put back in the queue.
Child processes are `app.processes`'s; progress events become job fields in `app.job_progress`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_session_factory, upgrade_database
from app.job_progress import EventTail, PhaseClock, Progress
from app.models import MLModel, TrainingJob
from app.processes import log_tail, spawn_child, stop_child
from app.services import model_registry, training, training_data, training_report
from app.services.errors import ServiceError
from app.services.storage import FileStore
from ml.config import TrainConfig
from ml.metrics import with_class_ci

log = logging.getLogger(__name__)

PROGRESS_WRITE_SECONDS = 1.0
CHILD_POLL_SECONDS = 0.25


class JobStopped(Exception):
    """The job must stop: `outcome` is 'cancelled', 'lost' (reaped meanwhile) or 'shutdown'."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class JobFailed(Exception):
    """The job failed with a message fit to show the admin."""


class Worker:
    """Claims and runs training jobs until stopped. One job at a time; run several workers for more."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        session_factory: sessionmaker[Session] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or training.default_worker_id()
        if session_factory is None:
            engine = make_engine(settings.resolved_database_url)
            upgrade_database(engine)
            session_factory = make_session_factory(engine)
        self.session_factory = session_factory
        self.stop = stop or threading.Event()
        self.store = FileStore(settings.data_dir)

    # ------------------------------------------------------------------------- loop
    def run(self, *, once: bool = False) -> int:
        """Process jobs until `stop` is set (`once`: at most one job, then return). Returns jobs run."""
        done = 0
        log.info("worker %s: waiting for training jobs", self.worker_id)
        while not self.stop.is_set():
            try:
                with self.session_factory() as session:
                    reaped = training.reap_stale_jobs(
                        session=session, stale_after_seconds=self.settings.worker_stale_seconds
                    )
                    if reaped:
                        log.warning("reaped abandoned training job(s) %s", reaped)
                    job = training.claim_next_job(session=session, worker_id=self.worker_id)
            except DBAPIError as exc:  # the database is briefly unreachable: wait, try again
                log.warning("worker %s: database unavailable (%s); retrying", self.worker_id, exc)
                self.stop.wait(self.settings.worker_poll_seconds)
                continue
            if job is not None:
                self.run_job(job)
                done += 1
                if once:
                    break
                continue
            if once:
                break
            self.stop.wait(self.settings.worker_poll_seconds)
        return done

    def run_job(self, job: TrainingJob) -> None:
        log.info("worker %s: training job %s %s", self.worker_id, job.id, job.params)
        runner = JobRun(self, job)
        try:
            values = runner.execute()
        except JobStopped as stopped:
            self._stopped(job, runner, stopped.outcome)
            return
        except JobFailed as exc:
            self._finish(job, "failed", {"error": str(exc), **runner.progress_values()})
            return
        except Exception as exc:  # a bug or an environment problem: the job says so, the worker lives on
            log.exception("training job %s failed", job.id)
            self._finish(job, "failed", {"error": f"{type(exc).__name__}: {exc}", **runner.progress_values()})
            return
        self._finish(job, "succeeded", values)

    def _stopped(self, job: TrainingJob, runner: JobRun, outcome: str) -> None:
        if outcome == "cancelled":
            self._finish(job, "cancelled", {"error": None, **runner.progress_values()})
        elif outcome == "shutdown":
            self._finish(job, "queued", {"error": "re-queued: the worker running it was stopped"})
        else:
            log.warning("training job %s is no longer this worker's (reaped); stopped it", job.id)

    def _finish(self, job: TrainingJob, status: Any, values: dict[str, Any]) -> None:
        with self.session_factory() as session:
            if not training.finish_job(
                session=session, job_id=job.id, worker_id=self.worker_id, status=status, values=values
            ):
                log.warning("training job %s was no longer this worker's when it ended (%s)", job.id, status)
        log.info("training job %s: %s", job.id, status)


class JobRun:
    """One attempt at one job (see the module docstring for the steps)."""

    def __init__(self, worker: Worker, job: TrainingJob) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.job = job
        self.params = training.TrainingParams.model_validate(job.params)
        self.options = self.params.train_options()  # TrainConfig's names: arch, scenario, lr, ...
        self.work_dir = self.settings.training_dir / f"job-{job.id}"
        self.progress = Progress()
        self.last_write = 0.0

    # ------------------------------------------------------------------- progress
    def progress_values(self) -> dict[str, Any]:
        keep = ("epoch", "step", "steps_per_epoch", "loss", "metrics")
        return {k: v for k, v in self.progress.values.items() if k in keep}

    def beat(self, *, force: bool = False) -> None:
        """Write progress/heartbeat when due; raise JobStopped on cancel, loss of the job, or shutdown."""
        now = time.monotonic()
        due = now - self.last_write >= self.settings.worker_heartbeat_seconds
        if force or due or (self.progress.dirty and now - self.last_write >= PROGRESS_WRITE_SECONDS):
            job_id, worker_id = self.job.id, self.worker.worker_id
            try:
                with self.worker.session_factory() as session:
                    control = training.report_progress(
                        session=session, job_id=job_id, worker_id=worker_id, values=self.progress.values
                    )
            except DBAPIError as exc:
                # A database hiccup: keep training and try again in a second. An outage longer than
                # CXR_WORKER_STALE_SECONDS gets the job reaped; the next beat then stops it.
                log.warning("job %s: heartbeat failed (%s)", job_id, exc)
                self.last_write = now - self.settings.worker_heartbeat_seconds + PROGRESS_WRITE_SECONDS
                return
            self.progress.dirty = False
            self.last_write = now
            if not control.owned:
                raise JobStopped("lost")
            if control.cancel_requested:
                raise JobStopped("cancelled")
        if self.worker.stop.is_set():
            raise JobStopped("shutdown")

    def run_child(self, command: list[str], *, log_name: str, events: Path | None = None) -> None:
        """Run a child to completion, tailing `events` and heartbeating; JobFailed on a non-zero exit."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.settings.train_threads:
            env["OMP_NUM_THREADS"] = str(self.settings.train_threads)
        if self.settings.pretrained_dir is not None:
            env["CXR_PRETRAINED_DIR"] = str(self.settings.pretrained_dir)
        if self.settings.cache_dir is not None:
            env["CXR_CACHE_DIR"] = str(self.settings.cache_dir)
        log_path = self.work_dir / log_name
        with log_path.open("ab") as fh:
            fh.write(("$ " + " ".join(command) + "\n").encode())
        proc = spawn_child(command, log_path=log_path, env=env)
        tail = EventTail(events) if events is not None else None
        try:
            while True:
                code = proc.poll()
                if tail is not None:
                    for event in tail.read():
                        self.progress.apply(event)
                        if event.get("type") == "epoch":  # each epoch's row and progress, however fast
                            self.beat(force=True)
                if code is not None:
                    break
                self.beat()
                time.sleep(CHILD_POLL_SECONDS)
        except BaseException:
            stop_child(proc)
            raise
        if code != 0:
            raise JobFailed(log_tail(log_path) or f"{' '.join(command[1:4])} exited with status {code}")
        self.beat()

    # ----------------------------------------------------------------------- steps
    def execute(self) -> dict[str, Any]:
        if self.work_dir.exists():  # an earlier attempt (re-queued): start clean
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        try:
            chosen = training_data.chosen_dataset_dirs(self.settings, self.params.datasets)
        except ServiceError as exc:  # the worker's configuration lacks a folder the job names
            raise JobFailed(f"{exc} on this worker") from exc
        datasets = {name: folder.resolve() for name, folder in chosen.items()}
        dataset_dirs = list(datasets.values())
        clock = PhaseClock()
        self.progress.set(work_dir=str(self.work_dir), phase="preparing")
        self.beat(force=True)

        dataset_info, extra_dirs = self.prepare_data(datasets)
        clock.lap("prepare")
        self.progress.set(dataset=dataset_info, phase="training")
        self.beat(force=True)

        train_dir, events = self.work_dir / "train", self.work_dir / "events.jsonl"
        config = job_train_config(self.params, self.settings, dataset_dirs=dataset_dirs, out=train_dir,
                                  extra_dirs=extra_dirs)  # fmt: skip
        try:
            config.validate()
        except (KeyError, ValueError) as exc:
            raise JobFailed(str(exc).strip("'\"")) from exc
        config_file = self.work_dir / "train-config.json"
        config_file.write_text(config.to_json())
        self.run_child(train_command(config_file, self.settings, events=events), log_name="train.log", events=events)
        best = train_dir / "best.pt"
        if not best.is_file():
            raise JobFailed("training finished without writing a checkpoint (see train.log)")
        clock.lap("train")

        self.progress.set(phase="evaluating", progress=1.0, eta_seconds=0.0)
        self.beat(force=True)
        report_dir = self.work_dir / "report"
        active = self.active_model()
        from ml.data import get_scenario

        same_films = training_data.write_comparison_manifest(
            dataset_dirs,
            self.work_dir / "comparison",
            split="test",
            classes=get_scenario(self.options["scenario"]).classes,
        )
        reports = self.evaluate(
            report_dir, {"test": (best, dataset_dirs), "active-test": (active_checkpoint(active), [same_films])}
        )
        new_report, active_report = reports["test"], reports.get("active-test")
        clock.lap("evaluate")

        self.progress.set(phase="registering")
        self.beat(force=True)
        history = json.loads((train_dir / "history.json").read_text())
        model = self.register(best, new_report)
        report = self.write_report(model, new_report, active, active_report, history, dataset_info, report_dir)
        clock.lap("register_and_report")
        report["timings_seconds"] = clock.laps
        metrics = {**self.progress.metrics(), "test": training_report.summary(new_report)}
        return {
            "model_id": model.id,
            "report": report,
            "metrics": metrics,
            "progress": 1.0,
            "eta_seconds": 0.0,
            "error": None,
            **{k: v for k, v in self.progress_values().items() if k != "metrics"},
        }

    def prepare_data(self, datasets: dict[str, Path]) -> tuple[dict[str, Any], list[Path]]:
        info = training_data.dataset_info(datasets)
        extra: list[Path] = []
        if self.params.include_reviewed:
            out = self.work_dir / "reviewed"
            with self.worker.session_factory() as session:
                reviewed = training_data.export_reviewed_uploads(
                    session=session,
                    store=self.worker.store,
                    dataset_dirs=list(datasets.values()),
                    out_dir=out,
                    cache_dir=self.settings.training_dir / "cache",
                    tick=self.beat,
                )
            # reviewers' boxes shape training only through the explanation loss (λ > 0)
            reviewed["regions"]["used"] = self.params.train_options()["explanation_weight"] > 0
            info["reviewed_uploads"] = reviewed
            if reviewed["added"]:
                extra.append(out)
        return info, extra

    def evaluate(
        self, out_dir: Path, checkpoints: dict[str, tuple[Path | None, list[Path]]]
    ) -> dict[str, dict[str, Any]]:
        """Evaluate (checkpoint, dataset folders) pairs on their test split in one child process; name → report."""
        pairs = [(name, path, os.pathsep.join(map(str, data))) for name, (path, data) in checkpoints.items()]
        arguments = [f"{name}={path}@{data}" for name, path, data in pairs if path is not None]
        self.run_child(
            [
                sys.executable,
                "-m",
                "app.training_eval",
                "--split",
                "test",
                "--out-dir",
                str(out_dir),
                "--lung-threshold",
                str(self.settings.lung_focus_threshold),
                *arguments,
            ],
            log_name="evaluate.log",
        )
        written = {name: out_dir / f"{name}.json" for name in checkpoints}
        return {name: json.loads(path.read_text()) for name, path in written.items() if path.is_file()}

    def active_model(self) -> MLModel | None:
        with self.worker.session_factory() as session:
            try:
                model = model_registry.get_active_model(session=session)
            except model_registry.ModelUnavailableError:
                return None
        return model if Path(model.checkpoint_path).is_file() else None

    def register(self, best: Path, test_report: dict[str, Any]) -> MLModel:
        """Copy the best checkpoint into the models dir with its test figures in `meta`, read-only, and
        register it as the next version of `<architecture>-<scenario>-<input mode>` (a lung-crop model is
        another line of versions than the whole-film one, not a newer version of it)."""
        from ml.checkpoints import read_checkpoint, write_checkpoint

        name = model_registry.model_name(
            self.options["arch"], self.options["scenario"], str(self.options.get("input_mode", "full"))
        )
        meta, state = read_checkpoint(best)
        meta = replace(
            meta,
            name=name,
            metrics=training.json_safe({**meta.metrics, "test": _without(test_report, "checkpoint")}),
            hparams=training.json_safe(
                {
                    **meta.hparams,
                    "include_reviewed": self.params.include_reviewed,
                    "reviewed_uploads_added": self._reviewed_added(),
                    "training_job_id": self.job.id,
                }
            ),
            training_job={"id": self.job.id, "parent_model_id": self.job.parent_model_id},
        )
        models_dir = self.settings.resolved_models_dir
        models_dir.mkdir(parents=True, exist_ok=True)
        target = models_dir / f"{name}-job{self.job.id}.pt"
        write_checkpoint(target, meta, state, read_only=True)  # versions are immutable: the file too
        with self.worker.session_factory() as session:
            model, _created = model_registry.register_checkpoint(
                session=session, path=target, name=name, parent_id=self.job.parent_model_id
            )
        return model

    def _reviewed_added(self) -> int:
        return int((self.progress.values.get("dataset") or {}).get("reviewed_uploads", {}).get("added", 0))

    def write_report(
        self,
        model: MLModel,
        new_report: dict[str, Any],
        active: MLModel | None,
        active_report: dict[str, Any] | None,
        history: list[dict[str, Any]],
        dataset_info: dict[str, Any],
        report_dir: Path,
    ) -> dict[str, Any]:
        new_label = f"{model.name} v{model.version} (new)"
        active_label = f"{active.name} v{active.version} (active)" if active is not None else ""
        # a heartbeat around each chart: matplotlib on a busy machine can take longer than the stale limit
        self.beat()
        training_report.render_curves(report_dir / "curves.png", history=history, step_losses=self.progress.step_losses)
        self.beat()
        training_report.render_confusion(
            report_dir / "confusion.png", report=new_report, title=f"{new_label}: test split, n = {new_report['n']}"
        )
        self.beat()
        training_report.render_comparison(report_dir / "comparison.png", new=new_report, active=active_report,
                                          new_label=new_label, active_label=active_label)  # fmt: skip
        return {
            "split": "test",
            "model": {
                "id": model.id,
                "name": model.name,
                "version": model.version,
                "report": with_class_ci(_without(new_report, "checkpoint")),
            },
            "active": None
            if active is None or active_report is None
            else {
                "id": active.id,
                "name": active.name,
                "version": active.version,
                "report": with_class_ci(_without(active_report, "checkpoint")),
            },
            "history": history,
            "dataset": dataset_info,
            "charts": list(training.CHART_NAMES),
        }


def job_train_config(
    params: training.TrainingParams,
    settings: Settings,
    *,
    dataset_dirs: Sequence[Path],
    out: Path,
    extra_dirs: Sequence[Path] = (),
) -> TrainConfig:
    """The job's training run: what the admin asked for, on this worker's dataset, device and threads.
    The steps per epoch are capped by the job's own cap and CXR_TRAIN_MAX_STEPS, whichever is lower."""
    caps = [c for c in (params.train_options()["max_steps_per_epoch"], settings.train_max_steps) if c is not None]
    return params.train_config(
        data_dirs=[str(d) for d in dataset_dirs],
        out_dir=str(out),
        extra_train_dirs=[str(d) for d in extra_dirs],
        device=settings.train_device,
        threads=settings.train_threads or None,
        max_steps_per_epoch=min(caps) if caps else None,
    )


def train_command(config_file: Path, settings: Settings, *, events: Path) -> list[str]:
    """The training child's command line: `python -m ml train --config FILE --events FILE`, under
    `torchrun --standalone --nproc_per_node N` (DistributedDataParallel) when CXR_TRAIN_NPROC = N > 1."""
    launcher = [sys.executable, "-m", "ml"]
    if settings.train_nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(settings.train_nproc), "-m", "ml"]  # fmt: skip
    return [*launcher, "train", "--config", str(config_file), "--events", str(events)]


def active_checkpoint(model: MLModel | None) -> Path | None:
    return Path(model.checkpoint_path) if model is not None else None


def _without(report: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in keys}


# ---------------------------------------------------------------------------- the process
def run_worker_process(settings: Settings, *, once: bool = False) -> int:
    """`cxr-review worker`: SIGTERM/SIGINT stop it after putting a running job back in the queue."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("worker: signal %s, stopping", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    worker = Worker(settings, stop=stop)
    worker.run(once=once)
    return 0
