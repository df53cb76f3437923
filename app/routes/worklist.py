"""The worklist (results waiting for review, filtered and sorted) and the verdict export.

API:   GET /api/v1/predictions (the worklist), GET /api/v1/verdicts?format=csv|json (the export, filtered).
Pages: / (→ /worklist), /worklist, /export; POST /admin/assignments (assign a result to a reader).
The page reads its filters leniently (an unknown value falls back to the default); the API answers 422.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import PlainTextResponse, Response

from app import forms, schemas
from app.deps import AdminPage, CurrentUser, PageCsrf, PageUser, SessionDep, SettingsDep
from app.routes.presenters import lung_focus_out, risk_fields
from app.routes.templating import error_page, render, see_other
from app.services import accounts, assignments, export, model_registry, predictions, reviews
from app.services.errors import ServiceError

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)

WORKLIST_PAGE_SIZE = 50
REVIEW_STATES: dict[str, bool | None] = {"no": False, "yes": True, "any": None}
"""`reviewed` filter values → `reviews.worklist(reviewed=...)`: waiting, reviewed, all."""
FLAGGED_STATES: dict[str, bool | None] = {"any": None, "yes": True, "no": False}
"""The page's lung-focus filter values → `reviews.worklist(flagged=...)`: all, flagged only, checked and not flagged.
The page's filters, and their fallbacks, are `forms.WorklistQuery`."""
SORT_DESCRIPTION = (
    f"priority: {reviews.PRIORITY_EXPLANATION}; newest: upload time, newest first; {reviews.FLAGGED_EXPLANATION}"
)


# ------------------------------------------------------------------------------------- API
@api.get("/predictions", response_model=schemas.WorklistOut, responses=schemas.ERRORS)
def worklist(
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    model_id: int | None = None,
    predicted_class: schemas.ClassName | None = None,
    reviewed: Annotated[Literal["yes", "no", "any"], Query(description="has any verdict")] = "no",
    flagged: Annotated[
        bool | None,
        Query(
            description="true: only results whose lung focus is flagged (most heat-map evidence outside the lungs); "
            "false: only those checked and not flagged; omit for all"
        ),
    ] = None,
    sort: Annotated[Literal["priority", "newest", "flagged"], Query(description=SORT_DESCRIPTION)] = "priority",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="case id, file name (or part of it) or image sha256 prefix (no control characters)",
        ),
    ] = None,
) -> schemas.WorklistOut:
    """Results waiting for review. `sort=priority`: highest error risk first (see `priority` in the reply);
    `sort=flagged`: results whose lung focus is flagged first, then the rest in priority order.
    Blind reading: `latest_verdict` is null for a reviewer until they have given their own verdict."""
    threshold = settings.lung_focus_threshold
    result = reviews.worklist(
        session=session,
        model_id=model_id,
        predicted_class=predicted_class,
        reviewed=REVIEW_STATES[reviewed],
        flagged=flagged,
        sort=sort,
        limit=limit,
        offset=offset,
        threshold=threshold,
        search=q,
        viewer=user,
    )
    return schemas.WorklistOut(
        items=[
            schemas.WorklistItemOut(
                prediction_id=i.prediction.id,
                model_id=i.model.id,
                model_name=i.model.name,
                model_version=i.result.model_version,
                image_sha256=i.prediction.image.sha256,
                filename=i.prediction.filename,
                predicted_class=i.result.predicted_class,  # type: ignore[arg-type]
                top_probability=i.result.top_probability,
                probabilities=schemas.Probabilities(**i.result.probabilities),
                created_at=i.prediction.created_at,
                verdict_count=i.verdict_count,
                latest_verdict=i.latest_verdict,  # type: ignore[arg-type]
                lung_focus=lung_focus_out(i.lung_focus) if i.lung_focus is not None else None,
                error_risk=i.risk.error_risk if i.risk is not None else None,
                warnings=risk_fields(i.risk)["warnings"] if i.risk is not None else [],
                detail_url=f"{predictions.API_PREFIX}/predictions/{i.prediction.id}",
            )
            for i in result.items
        ],
        total=result.total,
        limit=result.limit,
        offset=result.offset,
        sort=result.sort,
        priority=reviews.PRIORITY_EXPLANATION,
        lung_focus_threshold=threshold,
    )


@api.get(
    "/verdicts",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}, "application/json": {}}, "description": "the verdicts"},
        **schemas.ERRORS,
    },
)
def export_verdicts(
    session: SessionDep, settings: SettingsDep, user: CurrentUser, query: Annotated[forms.ExportQuery, Query()]
) -> Response:
    """Verdicts (history included, `is_latest` marks the one that counts per reviewer) with the image
    sha256, model version and checkpoint sha256 they refer to, the result's lung focus (the predicted
    class's score, flagged at the configured threshold) and how the case was read (mode, seconds to the
    verdict, AI shown before it). Blind reading: a reviewer gets others' verdicts only on results they
    reviewed themselves; admins get all. Filters: `since`/`until` (UTC days), `reviewer`, `model`,
    `latest_only`."""
    filters = export.ExportFilter(
        since=query.since or None,
        until=query.until or None,
        reviewer=query.reviewer or None,
        model_id=query.model or None,
        latest_only=query.latest_only,
    )
    kwargs = {"session": session, "threshold": settings.lung_focus_threshold, "viewer": user, "filters": filters}
    if query.format == "csv":
        return PlainTextResponse(
            export.export_csv(**kwargs),  # type: ignore[arg-type]
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="verdicts.csv"'},
        )
    return Response(
        export.export_json(**kwargs),  # type: ignore[arg-type]
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="verdicts.json"'},
    )


# ----------------------------------------------------------------------------------- pages
@pages.get("/", response_model=None)
def home(_user: PageUser) -> Response:
    return see_other("/worklist")


@pages.get("/worklist", response_model=None)
def worklist_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    query: Annotated[forms.WorklistQuery, Query()],
) -> Response:
    filters = query.model_dump(exclude={"offset"})
    assigned = query.mine == "assigned"
    result = reviews.worklist(
        session=session,
        model_id=query.model,
        predicted_class=query.cls,
        reviewed=None if assigned else REVIEW_STATES[query.reviewed],
        flagged=FLAGGED_STATES[query.flagged],
        sort=query.sort,
        limit=WORKLIST_PAGE_SIZE,
        offset=query.offset or 0,
        threshold=settings.lung_focus_threshold,
        search=query.q,
        viewer=user,
        assigned_to=user.id if assigned else None,
    )
    base_query = {k: v for k, v in filters.items() if v not in (None, "")}

    def page_url(new_offset: int) -> str:
        return "/worklist?" + urlencode({**base_query, "offset": new_offset})

    return render(
        request,
        "worklist.html",
        user=user,
        worklist=result,
        filters=filters,
        models=model_registry.list_models(session=session),
        all_readers=[u.username for u in accounts.list_users(session=session) if u.active] if user.is_admin else [],
        assigned_readers=assignments.assigned_readers(session=session, result_ids=[i.result.id for i in result.items]),
        my_open_assignments=assignments.open_count(session=session, user=user),
        back_url="/worklist?" + urlencode({**base_query, "offset": result.offset}),
        priority_explanation=reviews.PRIORITY_EXPLANATION,
        flagged_explanation=reviews.FLAGGED_EXPLANATION,
        lung_focus_threshold=settings.lung_focus_threshold,
        prev_url=page_url(max(0, result.offset - result.limit)) if result.offset > 0 else None,
        next_url=page_url(result.offset + result.limit) if result.offset + result.limit < result.total else None,
    )


@pages.get("/export", response_model=None)
def export_page(request: Request, session: SessionDep, user: PageUser) -> Response:
    return render(
        request,
        "export.html",
        user=user,
        fields=export.EXPORT_FIELDS,
        csv_url="/api/v1/verdicts?format=csv",
        json_url="/api/v1/verdicts?format=json",
        models=model_registry.list_models(session=session),
        reviewers=[u.username for u in accounts.list_users(session=session)] if user.is_admin else [user.username],
    )


@pages.post("/admin/assignments", response_model=None)
def assign_reader(
    request: Request,
    session: SessionDep,
    admin: AdminPage,
    _csrf: PageCsrf,
    form: Annotated[forms.AssignForm, Form()],
) -> Response:
    """Assign a result to a (second) reader, then back to the worklist page the form was on."""
    if form.prediction_id is None or form.model_id is None:
        return error_page(request, admin, 422, "Cannot assign", "The form names no case; reload the worklist.")
    try:
        assignments.assign(
            session=session,
            prediction_id=form.prediction_id,
            model_id=form.model_id,
            reviewer=form.reviewer,
            actor=admin,
        )
    except ServiceError as exc:
        return error_page(request, admin, exc.status_code, "Cannot assign", str(exc))
    back = form.back if form.back.startswith("/worklist") else "/worklist"
    return see_other(back)


router = APIRouter()
router.include_router(api)
router.include_router(pages)
