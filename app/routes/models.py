"""Model versions: what is registered, its recorded metrics, and (admins) which one serves.

API:   GET /api/v1/models; POST /api/v1/models/{id}/activate (admin; body {"reason"}).
Pages: /models; GET /models/{id}/activate (admin: the confirmation page, the candidate's and the
       active model's figures side by side); POST /models/{id}/activate and
       /admin/training/models/{id}/activate (admin; the confirmation page's form), one handler.
Activation, a promotion of a newer version or a rollback to an older one, is always
`promotion.activate` (the reason rule, then `model_registry.activate_model`): the API, the pages
and `cxr-review models activate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Form, Request
from fastapi.responses import Response

from app import forms, schemas
from app.deps import (
    AdminPage,
    AdminUser,
    CurrentUser,
    ModelManagerDep,
    PageCsrf,
    PageUser,
    SessionDep,
    SettingsDep,
)
from app.models import MLModel
from app.routes.templating import error_page, pct, render, see_other
from app.services import model_registry, promotion
from app.services.errors import ServiceError

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)

ACTIVATE_PAGES = ("/models/{model_id}/activate", "/admin/training/models/{model_id}/activate")
"""The page forms that activate a model: the models page's and the training pages'."""


# ------------------------------------------------------------------------------------- API
@api.get("/models", response_model=list[schemas.ModelOut], responses=schemas.ERRORS)
def list_models(session: SessionDep, _user: CurrentUser) -> list[schemas.ModelOut]:
    return [schemas.ModelOut.model_validate(m) for m in model_registry.list_models(session=session)]


@api.post("/models/{model_id}/activate", response_model=schemas.ModelOut, responses=schemas.ERRORS)
def activate_model(
    model_id: int,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminUser,
    body: Annotated[schemas.ActivateIn | None, Body()] = None,
) -> schemas.ModelOut:
    """Make this model the default for new predictions (admin): promote a new version or roll back to
    an earlier one, without a restart. Audited, with the `reason`. 422 when its test macro sensitivity is
    more than 5 points below the active model's and no reason is given; 409 if its checkpoint is
    missing or changed."""
    model = promotion.activate(
        session=session,
        model_id=model_id,
        actor=admin,
        reason=body.reason if body is not None else "",
        max_drop=settings.promotion_max_drop,
    )
    return schemas.ModelOut.model_validate(model)


# ---------------------------------------------------------------------------------- metrics
@dataclass
class MetricsView:
    """One split's figures from a checkpoint's `metrics` (keys of ml.evaluate's report contract)."""

    split: str
    n: int | None
    accuracy: float | None
    macro_sensitivity: float | None
    error_ci95: tuple[float, float] | None
    per_class: dict[str, dict[str, float]]
    by_source: dict[str, MetricsView]


def _metrics_view(split: str, report: Any) -> MetricsView | None:
    if not isinstance(report, dict):
        return None
    ci = report.get("error_ci95")
    by_source = report.get("by_source") if isinstance(report.get("by_source"), dict) else {}
    return MetricsView(
        split=split,
        n=report.get("n"),
        accuracy=report.get("accuracy"),
        macro_sensitivity=report.get("macro_sensitivity"),
        error_ci95=(float(ci[0]), float(ci[1])) if isinstance(ci, list | tuple) and len(ci) == 2 else None,
        per_class={c: v for c, v in (report.get("per_class") or {}).items() if isinstance(v, dict)},
        by_source={s: mv for s, r in (by_source or {}).items() if (mv := _metrics_view(s, r)) is not None},
    )


def model_metrics(model: MLModel) -> list[MetricsView]:
    """The model's recorded metrics per split (val, test, ...), in a stable order."""
    metrics = model.metrics or {}
    order = sorted(metrics, key=lambda s: ({"val": 0, "test": 1}.get(s, 2), s))
    return [mv for s in order if (mv := _metrics_view(s, metrics[s])) is not None]


def metrics_summary(model: MLModel) -> str | None:
    """One line for the case page, e.g. 'val accuracy 37.5 % (n = 251)'."""
    for mv in model_metrics(model):
        if mv.accuracy is not None:
            n = f" (n = {mv.n})" if mv.n else ""
            return f"{mv.split} accuracy {pct(mv.accuracy)}{n}"
    return None


# ----------------------------------------------------------------------------------- pages
@pages.get("/models", response_model=None)
def models_page(request: Request, session: SessionDep, manager: ModelManagerDep, user: PageUser) -> Response:
    models = model_registry.list_models(session=session)
    return render(
        request,
        "models.html",
        user=user,
        models=models,
        metrics={m.id: model_metrics(m) for m in models},
        available={m.id: Path(m.checkpoint_path).is_file() for m in models},
        loaded=set(manager.loaded_ids()),
    )


def _back(request: Request, back: str) -> str:
    if back.startswith(("/models", "/admin/training")):
        return back
    return "/admin/training#versions" if request.url.path.startswith("/admin/training/") else "/models"


def _confirm_page(
    request: Request, session: SessionDep, settings: SettingsDep, admin: AdminPage, model_id: int, **context: Any
) -> Response:
    try:
        comparison = promotion.compare(session=session, model_id=model_id, max_drop=settings.promotion_max_drop)
    except ServiceError as exc:
        return error_page(request, admin, exc.status_code, "Cannot activate", str(exc))
    context.setdefault("status_code", 200)
    return render(
        request,
        "activate.html",
        user=admin,
        c=comparison,
        available=model_registry.checkpoint_matches(comparison.candidate),
        **{"error": None, "reason": "", "done": False, "back": "", **context},
    )


def activate_confirm_page(
    request: Request, model_id: int, session: SessionDep, settings: SettingsDep, admin: AdminPage, back: str = ""
) -> Response:
    """The confirmation: both models' figures side by side, the reason field when the rule needs one;
    `?done=1` after the activation says it happened."""
    done = request.query_params.get("done") == "1"
    return _confirm_page(request, session, settings, admin, model_id, back=_back(request, back), done=done)


def activate_model_page(
    request: Request,
    model_id: int,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminPage,
    _csrf: PageCsrf,
    form: Annotated[forms.ActivateForm, Form()],
) -> Response:
    """Promote or roll back (audited with the admin's name and the reason) once confirmed on the
    confirmation page; a form without `confirm=yes` (an old page) is shown that page first."""
    back = _back(request, form.back)
    if form.confirm != "yes":
        return see_other(f"/models/{model_id}/activate?" + urlencode({"back": back}))
    try:
        promotion.activate(
            session=session,
            model_id=model_id,
            actor=admin,
            reason=form.reason,
            max_drop=settings.promotion_max_drop,
        )
    except ServiceError as exc:
        return _confirm_page(
            request,
            session,
            settings,
            admin,
            model_id,
            status_code=exc.status_code,
            error=str(exc),
            reason=form.reason,
            back=back,
        )
    return see_other(f"/models/{model_id}/activate?" + urlencode({"done": 1, "back": back}))


for _path in ACTIVATE_PAGES:
    pages.add_api_route(_path, activate_model_page, methods=["POST"], response_model=None)
pages.add_api_route(ACTIVATE_PAGES[0], activate_confirm_page, methods=["GET"], response_model=None)


router = APIRouter()
router.include_router(api)
router.include_router(pages)
