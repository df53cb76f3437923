"""Training jobs: the queue in the database, shared by the web process (create, cancel, read) and the
workers (`app.worker`: claim, report progress, finish). The web process never trains.

Lifecycle: queued → running → succeeded | failed | cancelled.

- Claiming is atomic. On PostgreSQL the next queued row is locked with `SELECT ... FOR UPDATE SKIP
  LOCKED`, so workers on several machines share one queue without waiting on each other; on
  SQLite a conditional `UPDATE ... WHERE id = ? AND status = 'queued'` succeeds for one worker only.
- A running job carries its worker's id (`host:pid`) and a heartbeat. Every progress write is
  conditional on the job still being this worker's and running, so a worker that was presumed
  dead learns it lost the job and stops.
- The reaper (`reap_stale_jobs`, run by workers and by the web process) fails running jobs whose
  heartbeat is older than `worker_stale_seconds` (cancelled if a cancel was pending), so a worker
  killed with SIGKILL never leaves a job "running" forever.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import MAX_ROW_ID, is_row_id
from app.models import TrainingJob, User, utcnow
from app.services import audit
from app.services.errors import (
    ConflictError,
    InvalidInputError,
    ModelUnavailableError,
    NotFoundError,
    ServiceError,
)
from app.services.model_registry import get_active_model
from app.services.training_data import chosen_dataset_dirs
from app.services.training_params import TrainingParams
from ml.data import SCENARIOS

CHART_NAMES = ("curves", "confusion", "comparison")


class TrainingUnavailableError(ServiceError):
    """The service cannot train now (e.g. the training dataset is not where the settings say)."""

    status_code = 409


def architecture_choices() -> list[dict[str, Any]]:
    """The registry as the training form and GET /api/v1/architectures show it."""
    from ml.pretrained import pretrained_available
    from ml.registry import get_arch, list_archs

    rows = []
    for name in list_archs():
        spec = get_arch(name)
        rows.append(
            {
                "name": name,
                "input_size": spec.input_size,
                "family": spec.family,
                "cam_method": spec.cam_method,
                "pretrained_weights": spec.pretrained_weights is not None,
                "pretrained_available": pretrained_available(spec.pretrained_weights),
            }
        )
    return rows


def scenario_choices() -> list[dict[str, str]]:
    return [{"name": s.name, "description": s.description} for s in SCENARIOS.values()]


# ----------------------------------------------------------------------------- web side
def create_job(*, session: Session, settings: Settings, params: TrainingParams, actor: User) -> TrainingJob:
    """Queue a job (admin). 422 if ImageNet weights are asked for but absent or a dataset name is not
    configured, 409 if a chosen dataset's manifest is missing."""
    from ml.pretrained import pretrained_available
    from ml.registry import get_arch

    options = params.train_options()
    if options["pretrained"] and not pretrained_available(get_arch(options["arch"]).pretrained_weights):
        raise InvalidInputError(
            f"ImageNet weights for {options['arch']} are not on this machine; put them in "
            "CXR_PRETRAINED_DIR or train from scratch"
        )
    datasets = chosen_dataset_dirs(settings, params.datasets)  # 422 for a name that is not configured
    for folder in datasets.values():
        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            raise TrainingUnavailableError(
                f"no training dataset: {manifest} not found (set CXR_DATASET_DIRS or CXR_DATASET_DIR to "
                "folders with a manifest.csv)"
            )
    params = params.model_copy(update={"datasets": list(datasets)})  # the job records the names it uses
    try:
        parent_id: int | None = get_active_model(session=session).id
    except ModelUnavailableError:
        parent_id = None
    job = TrainingJob(
        status="queued",
        phase="queued",
        params=params.model_dump(),
        epochs=options["epochs"],
        created_by_id=actor.id,
        parent_model_id=parent_id,
        progress=0.0,
        attempts=0,
        cancel_requested=False,
        metrics={},
        dataset={},
    )
    session.add(job)
    session.flush()
    _audit(session, actor, "create", job.id, {"params": params.model_dump(), "parent_model_id": parent_id})
    session.commit()
    return job


def list_jobs(*, session: Session, limit: int = 50, offset: int = 0) -> list[TrainingJob]:
    """Newest first."""
    offset = min(offset, MAX_ROW_ID)  # larger values fail to bind (PostgreSQL BIGINT, SQLite 64 bits)
    return list(session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit).offset(offset)))


def get_job(*, session: Session, job_id: int) -> TrainingJob:
    job = session.get(TrainingJob, job_id, populate_existing=True) if is_row_id(job_id) else None
    if job is None:
        raise NotFoundError(f"training job {job_id} not found")
    return job


def request_cancel(*, session: Session, job_id: int, actor: User) -> TrainingJob:
    """Cancel (admin): a queued job at once; a running one is stopped by its worker within a second or
    two (its training process is terminated). 409 for a finished job."""
    job = get_job(session=session, job_id=job_id)
    if job.finished:
        raise ConflictError(f"training job {job_id} is already {job.status}")
    now = utcnow()
    queued = _updated(
        session,
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == "queued")
        .values(status="cancelled", phase="cancelled", cancel_requested=True, finished_at=now),
    )
    if queued != 1:  # claimed meanwhile (or running all along): the worker stops it
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "running")
            .values(cancel_requested=True)
        )
    _audit(session, actor, "cancel", job_id, {"status_when_cancelled": "queued" if queued == 1 else job.status})
    session.commit()
    return get_job(session=session, job_id=job_id)


def chart_path(job: TrainingJob, name: str) -> Path:
    """A report picture of a succeeded job (404 if unknown or not rendered)."""
    if name not in CHART_NAMES or not job.work_dir:
        raise NotFoundError(f"no chart {name!r} for training job {job.id}")
    path = Path(job.work_dir) / "report" / f"{name}.png"
    if not path.is_file():
        raise NotFoundError(f"chart {name!r} of training job {job.id} is not available")
    return path


def job_report(job: TrainingJob) -> dict[str, Any]:
    if job.report is None:
        raise ConflictError(f"training job {job.id} has no report yet (status {job.status})")
    return job.report


# ------------------------------------------------------------------------------ worker side
def default_worker_id() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


def claim_next_job(*, session: Session, worker_id: str) -> TrainingJob | None:
    """Take the oldest queued job for this worker (running, heartbeat now), or None. Commits."""
    now = utcnow()
    claimed = {
        "status": "running",
        "phase": "preparing",
        "worker_id": worker_id,
        "started_at": now,
        "heartbeat_at": now,
        "attempts": TrainingJob.attempts + 1,
    }
    if session.get_bind().dialect.name == "postgresql":
        job_id = session.scalar(
            select(TrainingJob.id)
            .where(TrainingJob.status == "queued")
            .order_by(TrainingJob.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if job_id is None:
            session.rollback()
            return None
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(**claimed))
        session.commit()
        return get_job(session=session, job_id=job_id)
    candidates = list(
        session.scalars(select(TrainingJob.id).where(TrainingJob.status == "queued").order_by(TrainingJob.id).limit(8))
    )
    session.rollback()
    for job_id in candidates:
        result = _updated(
            session,
            update(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.status == "queued").values(**claimed),
        )
        session.commit()
        if result == 1:
            return get_job(session=session, job_id=job_id)
    return None


@dataclass
class JobControl:
    """What a worker learns from a heartbeat: whether the job is still its own, and whether to stop."""

    owned: bool
    cancel_requested: bool


def report_progress(*, session: Session, job_id: int, worker_id: str, values: dict[str, Any]) -> JobControl:
    """Heartbeat plus progress fields, only while the job is this worker's and running. Commits."""
    result = _updated(
        session,
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.worker_id == worker_id, TrainingJob.status == "running")
        .values(heartbeat_at=utcnow(), **{k: json_safe(v) for k, v in values.items()}),
    )
    cancel = bool(session.scalar(select(TrainingJob.cancel_requested).where(TrainingJob.id == job_id)))
    session.commit()
    return JobControl(owned=result == 1, cancel_requested=cancel)


def finish_job(
    *,
    session: Session,
    job_id: int,
    worker_id: str,
    status: Literal["succeeded", "failed", "cancelled", "queued"],
    values: dict[str, Any] | None = None,
) -> bool:
    """End this worker's run of the job: a final status, or back to `queued` (the worker was stopped).
    False if the job was no longer this worker's (reaped meanwhile). Commits."""
    final = status != "queued"
    fields: dict[str, Any] = {"status": status, "phase": status, "heartbeat_at": utcnow()}
    if final:
        fields["finished_at"] = utcnow()
    else:
        fields.update(
            worker_id=None, started_at=None, progress=0.0, epoch=None, step=None, loss=None, eta_seconds=None,
            metrics={},
        )  # fmt: skip
    fields.update({k: json_safe(v) for k, v in (values or {}).items()})
    result = _updated(
        session,
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.worker_id == worker_id, TrainingJob.status == "running")
        .values(**fields),
    )
    if result == 1 and status in ("succeeded", "failed", "cancelled"):
        details: dict[str, Any] = {"worker": worker_id}
        if values and values.get("error"):
            details["error"] = str(values["error"])[:500]
        if values and values.get("model_id"):
            details["model_id"] = values["model_id"]
        _audit(session, None, status, job_id, details)
    session.commit()
    return result == 1


def reap_stale_jobs(*, session: Session, stale_after_seconds: float, now: datetime | None = None) -> list[int]:
    """Fail running jobs whose worker stopped heartbeating (cancelled, if a cancel was pending).

    Safe to run from every process at once: each job is ended by one conditional UPDATE.
    Returns the ids of the jobs this call ended. Commits.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stale_after_seconds)
    stale = list(
        session.execute(
            select(TrainingJob.id, TrainingJob.worker_id, TrainingJob.heartbeat_at, TrainingJob.cancel_requested).where(
                TrainingJob.status == "running", TrainingJob.heartbeat_at < cutoff
            )
        )
    )
    session.rollback()
    reaped: list[int] = []
    for job_id, worker_id, beat, cancel in stale:
        status = "cancelled" if cancel else "failed"
        error = (
            f"worker {worker_id} stopped responding (last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC, "
            f"more than {stale_after_seconds:g} s ago); the job was abandoned"
        )
        result = _updated(
            session,
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "running", TrainingJob.heartbeat_at < cutoff)
            .values(status=status, phase=status, finished_at=now, error=None if cancel else error),
        )
        if result == 1:
            _audit(session, None, "reaped", job_id, {"worker": worker_id, "status": status, "error": error})
            reaped.append(job_id)
        session.commit()
    return reaped


def _audit(session: Session, actor: User | None, event: str, job_id: int, details: dict[str, Any]) -> None:
    """Record `training_job.<event>` on job `job_id` in the audit log (`actor=None`: the system)."""
    audit.record(
        session=session,
        actor=actor,
        action=f"training_job.{event}",
        target_type="training_job",
        target_id=job_id,
        details=details,
    )


def _updated(session: Session, statement: Any) -> int:
    """Run an UPDATE; the number of rows it changed (the conditional updates above rely on it)."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


def json_safe(value: Any) -> Any:
    """NaN/inf → None, recursively (PostgreSQL's json type refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
