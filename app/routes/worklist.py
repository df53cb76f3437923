"""The worklist (results waiting for review, filtered and sorted) and the verdict export.

API:   GET /api/v1/predictions (the worklist), GET /api/v1/verdicts?format=csv|json (the export).
Pages: / (→ /worklist), /worklist, /export.
The page reads its filters leniently (an unknown value falls back to the default); the API answers 422.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from app import schemas
from app.deps import CurrentUser, PageUser, SessionDep, SettingsDep
from app.routes.cases import lung_focus_out, risk_fields
from app.routes.templating import render, see_other
from app.services import model_registry, predictions, reviews

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)

WORKLIST_PAGE_SIZE = 50
REVIEW_STATES: dict[str, bool | None] = {"no": False, "yes": True, "any": None}
"""`reviewed` filter values → `reviews.worklist(reviewed=...)`: waiting, reviewed, all."""
FLAGGED_STATES: dict[str, bool | None] = {"any": None, "yes": True, "no": False}
"""The page's lung-focus filter values → `reviews.worklist(flagged=...)`: all, flagged only, checked and not flagged.
The page's filters, and their fallbacks, are `schemas.WorklistQuery`."""
SORT_DESCRIPTION = (
    f"priority: {reviews.PRIORITY_EXPLANATION}; newest: upload time, newest first; {reviews.FLAGGED_EXPLANATION}"
)


# ------------------------------------------------------------------------------------- API
@api.get("/predictions", response_model=schemas.WorklistOut, responses=schemas.ERRORS)
def worklist(
    session: SessionDep,
    settings: SettingsDep,
    _user: CurrentUser,
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
) -> schemas.WorklistOut:
    """Results waiting for review. `sort=priority`: least-confident first (see `priority` in the reply);
    `sort=flagged`: results whose lung focus is flagged first, then the rest in priority order."""
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
        200: {"content": {"text/csv": {}, "application/json": {}}, "description": "all verdicts"},
        **schemas.ERRORS,
    },
)
def export_verdicts(
    session: SessionDep, settings: SettingsDep, _user: CurrentUser, format: Literal["csv", "json"] = "json"
) -> Response:
    """Every verdict (history included, `is_latest` marks the one that counts per reviewer) with the
    image sha256, model version and checkpoint sha256 it refers to, and the result's lung focus
    (the predicted class's score, and flagged at the configured threshold)."""
    threshold = settings.lung_focus_threshold
    if format == "csv":
        return PlainTextResponse(
            reviews.export_csv(session=session, threshold=threshold),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="verdicts.csv"'},
        )
    return Response(
        reviews.export_json(session=session, threshold=threshold),
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
    query: Annotated[schemas.WorklistQuery, Query()],
) -> Response:
    filters = query.model_dump(exclude={"offset"})
    result = reviews.worklist(
        session=session,
        model_id=query.model,
        predicted_class=query.cls,
        reviewed=REVIEW_STATES[query.reviewed],
        flagged=FLAGGED_STATES[query.flagged],
        sort=query.sort,
        limit=WORKLIST_PAGE_SIZE,
        offset=query.offset or 0,
        threshold=settings.lung_focus_threshold,
    )
    base_query = {k: v for k, v in filters.items() if v is not None}

    def page_url(new_offset: int) -> str:
        return "/worklist?" + urlencode({**base_query, "offset": new_offset})

    return render(
        request,
        "worklist.html",
        user=user,
        worklist=result,
        filters=filters,
        models=model_registry.list_models(session=session),
        priority_explanation=reviews.PRIORITY_EXPLANATION,
        flagged_explanation=reviews.FLAGGED_EXPLANATION,
        lung_focus_threshold=settings.lung_focus_threshold,
        prev_url=page_url(max(0, result.offset - result.limit)) if result.offset > 0 else None,
        next_url=page_url(result.offset + result.limit) if result.offset + result.limit < result.total else None,
    )


@pages.get("/export", response_model=None)
def export_page(request: Request, user: PageUser) -> Response:
    return render(
        request,
        "export.html",
        user=user,
        fields=reviews.EXPORT_FIELDS,
        csv_url="/api/v1/verdicts?format=csv",
        json_url="/api/v1/verdicts?format=json",
    )


router = APIRouter()
router.include_router(api)
router.include_router(pages)
