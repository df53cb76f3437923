"""Retraining, for admins: the REST API under /api/v1 and the browser pages under /admin.

API (admin only; reviewers get 403; invalid parameters 422 before anything is queued):
    POST /api/v1/training-jobs                  queue a job → 202 {"id", "status": "queued", ...}
    GET  /api/v1/training-jobs                  newest first
    GET  /api/v1/training-jobs/{id}             status, progress 0..1, epoch, metrics, model_id, error
    POST /api/v1/training-jobs/{id}/cancel      a queued job at once, a running one within seconds
    GET  /api/v1/training-jobs/{id}/report      test-split report of the new version and the active model
    GET  /api/v1/training-jobs/{id}/charts/{curves|confusion|comparison}.png
    GET  /api/v1/architectures                  what can be trained
    GET  /api/v1/training-datasets              the configured dataset folders a job may name
    GET  /api/v1/audit-log                      jobs, promotions, rollbacks: who, when, what
Promotion and rollback are `POST /api/v1/models/{id}/activate` and, from these pages' forms,
`POST /admin/training/models/{id}/activate` (both in app.routes.models).

Pages: /admin/training (start a job, jobs, model versions with promote/roll back),
/admin/training/{id} (live progress bar, then the report), /admin/audit. The pages' script
(static/training.js) polls the job's API endpoint with the session cookie.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import sqlalchemy
from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError

from app import schemas
from app.deps import AdminPage, AdminUser, PageCsrf, SessionDep, SettingsDep, get_settings
from app.models import AuditEntry, MLModel, TrainingJob, User
from app.routes.templating import error_page, render, see_other
from app.services import audit, model_registry, training, training_data, training_params
from app.services.errors import ServiceError

API_PREFIX = "/api/v1"
ERRORS = schemas.error_responses(401, 403, 404, 409, 422)
JOB_POLL_MS = 1000

api_router = APIRouter(prefix=API_PREFIX, tags=["training"])
pages_router = APIRouter(include_in_schema=False)


# ------------------------------------------------------------------------------ presentation
def job_url(job_id: int) -> str:
    return f"{API_PREFIX}/training-jobs/{job_id}"


def chart_url(job_id: int, name: str) -> str:
    return f"{API_PREFIX}/training-jobs/{job_id}/charts/{name}.png"


JOB_COLUMNS = frozenset(sqlalchemy.inspect(TrainingJob).columns.keys())


def job_out(job: TrainingJob) -> schemas.TrainingJobOut:
    """The job's columns that the schema names, as stored, plus what is derived from them."""
    done = job.status == "succeeded" and job.report is not None
    columns = {name: getattr(job, name) for name in schemas.TrainingJobOut.model_fields if name in JOB_COLUMNS}
    return schemas.TrainingJobOut.model_validate(
        {
            **columns,
            "metrics": job.metrics or {},
            "dataset": job.dataset or {},
            "created_by": job.created_by.username if job.created_by else None,
            "report_url": f"{job_url(job.id)}/report" if done else None,
            "charts": {name: chart_url(job.id, name) for name in training.CHART_NAMES} if done else {},
        }
    )


def audit_out(entry: AuditEntry) -> schemas.AuditEntryOut:
    return schemas.AuditEntryOut.model_validate(entry, from_attributes=True)


# ----------------------------------------------------------------------------------- API
@api_router.post(
    "/training-jobs", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.TrainingJobOut, responses=ERRORS
)
def create_training_job(
    body: training.TrainingParams, session: SessionDep, settings: SettingsDep, admin: AdminUser
) -> schemas.TrainingJobOut:
    """Queue a training job; a worker process picks it up. Poll GET /training-jobs/{id} for progress."""
    return job_out(training.create_job(session=session, settings=settings, params=body, actor=admin))


@api_router.get("/training-jobs", response_model=list[schemas.TrainingJobOut], responses=ERRORS)
def list_training_jobs(
    session: SessionDep,
    _admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[schemas.TrainingJobOut]:
    return [job_out(j) for j in training.list_jobs(session=session, limit=limit, offset=offset)]


@api_router.get("/training-jobs/{job_id}", response_model=schemas.TrainingJobOut, responses=ERRORS)
def get_training_job(job_id: int, session: SessionDep, _admin: AdminUser) -> schemas.TrainingJobOut:
    return job_out(training.get_job(session=session, job_id=job_id))


@api_router.post("/training-jobs/{job_id}/cancel", response_model=schemas.TrainingJobOut, responses=ERRORS)
def cancel_training_job(job_id: int, session: SessionDep, admin: AdminUser) -> schemas.TrainingJobOut:
    """A queued job is cancelled at once; a running one shows `cancel_requested` until its worker has
    stopped the training process (a second or two). 409 if the job already ended."""
    return job_out(training.request_cancel(session=session, job_id=job_id, actor=admin))


@api_router.get("/training-jobs/{job_id}/report", responses=ERRORS)
def get_training_report(job_id: int, session: SessionDep, _admin: AdminUser) -> dict[str, Any]:
    """The test-split report: `model.report` (ml.evaluate's contract plus `sensitivity_ci95` per class,
    per source in `by_source`), `active` (the model active at evaluation, on the same images),
    `history` (per epoch), `dataset` (manifest hash, reviewed uploads added/excluded). 409 until done."""
    return training.job_report(training.get_job(session=session, job_id=job_id))


@api_router.get(
    "/training-jobs/{job_id}/charts/{name}.png",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **ERRORS},
)
def get_training_chart(job_id: int, name: str, session: SessionDep, _admin: AdminUser) -> FileResponse:
    path = training.chart_path(training.get_job(session=session, job_id=job_id), name)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})


@api_router.get("/architectures", responses=ERRORS)
def list_architectures(_admin: AdminUser) -> list[dict[str, Any]]:
    """The registry: name, input size, family, CAM method, whether ImageNet weights exist and are here."""
    return training.architecture_choices()


@api_router.get("/training-datasets", responses=ERRORS)
def list_training_datasets(settings: SettingsDep, _admin: AdminUser) -> list[dict[str, Any]]:
    """The configured dataset folders (CXR_DATASET_DIRS) by the name a job's `datasets` uses, and
    whether each one's manifest is there."""
    return training_data.dataset_choices(settings)


@api_router.get("/audit-log", response_model=list[schemas.AuditEntryOut], responses=ERRORS)
def audit_log(
    session: SessionDep,
    _admin: AdminUser,
    action: Annotated[str | None, Query(description="prefix, e.g. 'model.' or 'training_job.'")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[schemas.AuditEntryOut]:
    """Newest first: training jobs created/cancelled/ended/reaped, models promoted or rolled back."""
    entries = audit.list_entries(session=session, limit=limit, offset=offset, action_prefix=action)
    return [audit_out(e) for e in entries]


# --------------------------------------------------------------------------------- pages
NAV = "/training"
"""What base.html's main navigation sees (it marks every /admin page as "Users"); `subnav` is the path."""


def _render(request: Request, name: str, *, user: User, status_code: int = 200, **context: Any) -> Response:
    """A training page: `render` with the training section marked in the navigation."""
    return render(request, name, user=user, nav=NAV, subnav=request.url.path, status_code=status_code, **context)


def _versions(session: Any) -> list[MLModel]:
    return model_registry.list_models(session=session)


def _index(
    request: Request,
    session: Any,
    admin: Any,
    *,
    status_code: int = 200,
    form: dict[str, Any] | None = None,
    errors: list[str] | None = None,
) -> Response:
    models = _versions(session)
    datasets = get_settings(request).resolved_dataset_dirs
    return _render(
        request,
        "training/index.html",
        user=admin,
        status_code=status_code,
        jobs=training.list_jobs(session=session, limit=50),
        models=models,
        models_by_id={m.id: m for m in models},
        active_id=next((m.id for m in models if m.active), None),
        available={m.id: Path(m.checkpoint_path).is_file() for m in models},
        fields=training_params.form_fields(training.architecture_choices(), datasets=list(datasets)),
        form=form or training_params.form_defaults(list(datasets)),
        errors=errors or [],
    )


@pages_router.get("/admin/training", response_model=None)
def training_page(request: Request, session: SessionDep, user: AdminPage) -> Response:
    return _index(request, session, user)


def _validation_messages(exc: ValidationError) -> list[str]:
    messages = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        text = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        messages.append(f"{where.replace('_', ' ')}: {text}" if where else text)
    return messages


async def posted_form(request: Request) -> dict[str, Any]:
    """The posted form's text fields, a checkbox group as the list of its ticked values (starlette
    parses the body once; the CSRF check reads it too)."""
    form = await request.form()
    values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    for name in training_params.MULTI_CHOICE:
        if name in form:
            values[name] = [v for v in form.getlist(name) if isinstance(v, str)]
    return values


PostedForm = Annotated[dict[str, Any], Depends(posted_form)]


@pages_router.post("/admin/training", response_model=None)
def training_submit(
    request: Request, session: SessionDep, settings: SettingsDep, user: AdminPage, _csrf: PageCsrf, posted: PostedForm
) -> Response:
    """Queue a job from the form (same validation as the API), then show its progress page."""
    data = training_params.form_values(posted)
    try:
        params = training.TrainingParams.model_validate(data)
        job = training.create_job(session=session, settings=settings, params=params, actor=user)
    except ValidationError as exc:
        form = {**training_params.form_defaults(list(settings.resolved_dataset_dirs)), **data}
        return _index(request, session, user, status_code=422, form=form, errors=_validation_messages(exc))
    except ServiceError as exc:
        form = {**training_params.form_defaults(list(settings.resolved_dataset_dirs)), **data}
        return _index(request, session, user, status_code=exc.status_code, form=form, errors=[str(exc)])
    return see_other(f"/admin/training/{job.id}")


@pages_router.get("/admin/training/{job_id}", response_model=None)
def job_page(request: Request, job_id: int, session: SessionDep, user: AdminPage) -> Response:
    try:
        job = training.get_job(session=session, job_id=job_id)
    except ServiceError as exc:
        return error_page(request, user, exc.status_code, "No such job", str(exc))
    model = model_registry.get_model(session=session, model_id=job.model_id) if job.model_id else None
    parent = model_registry.get_model(session=session, model_id=job.parent_model_id) if job.parent_model_id else None
    return _render(
        request,
        "training/job.html",
        user=user,
        job=job,
        model=model,
        parent=parent,
        report=job.report,
        api_url=job_url(job.id),
        poll_ms=JOB_POLL_MS,
        charts={name: chart_url(job.id, name) for name in training.CHART_NAMES},
    )


@pages_router.post("/admin/training/{job_id}/cancel", response_model=None)
def job_cancel(request: Request, job_id: int, session: SessionDep, user: AdminPage, _csrf: PageCsrf) -> Response:
    try:
        training.request_cancel(session=session, job_id=job_id, actor=user)
    except ServiceError as exc:
        return error_page(request, user, exc.status_code, "Cannot cancel", str(exc))
    return see_other(f"/admin/training/{job_id}")


@pages_router.get("/admin/audit", response_model=None)
def audit_page(request: Request, session: SessionDep, user: AdminPage) -> Response:
    return _render(request, "training/audit.html", user=user, entries=audit.list_entries(session=session, limit=500))


router = APIRouter()
router.include_router(api_router)
router.include_router(pages_router)
