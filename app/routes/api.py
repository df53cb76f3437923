"""REST API under /api/v1 (schema at /openapi.json, UI at /docs). Thin: parse, call a service, return.

Every endpoint except /health needs a user (Bearer token or session cookie + X-CSRF-Token for
unsafe methods). Errors are JSON `{"detail": ...}`: 401 unauthenticated, 403 wrong role/CSRF,
404 unknown id, 413 file too large, 415 not PNG/JPEG/DICOM, 422 undecodable file, unknown model
id or invalid body, 429 too many failed logins, 503 a model's checkpoint is unavailable.
Torch and file work happens in sync (`def`) endpoints, which FastAPI runs in a thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from app import schemas
from app.deps import AdminUser, CurrentUser, ModelManagerDep, SessionDep, SettingsDep, StoreDep
from app.models import Prediction, User, Verdict
from app.services import accounts, model_registry, predictions, reviews
from app.services.errors import PayloadTooLargeError
from app.services.predictions import too_large_message
from ml.lung_focus import LungFocus

router = APIRouter(prefix="/api/v1", tags=["api"])

IMAGE_CACHE_HEADERS = {"Cache-Control": "private, max-age=86400, immutable"}
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": schemas.ErrorOut} for code in (401, 403, 404, 413, 415, 422)}


# ------------------------------------------------------------------------------ presentation
def lung_focus_out(view: LungFocus) -> schemas.LungFocusOut:
    return schemas.LungFocusOut(
        score=view.score, lung_area=view.lung_area, flagged=view.flagged, threshold=view.threshold, reason=view.reason
    )


def result_out(v: predictions.ResultView) -> schemas.ResultOut:
    r = v.result
    return schemas.ResultOut(
        model_id=r.model_id,
        model_name=v.model.name,
        model_version=r.model_version,
        checkpoint_sha256=r.checkpoint_sha256,
        architecture=r.architecture,
        probabilities=schemas.Probabilities(**r.probabilities),
        predicted_class=r.predicted_class,  # type: ignore[arg-type]
        cam_method=r.cam_method,
        overlays=v.overlays,
        lung_focus=lung_focus_out(v.lung_focus) if v.lung_focus is not None else None,
        input_box=schemas.InputBoxOut(**v.input_box.as_dict()) if v.input_box is not None else None,
        lung_outline_url=v.lung_outline_url,
        lungseg_sha256=r.lungseg_sha256,
    )


def result_detail_out(v: predictions.ResultView) -> schemas.ResultDetailOut:
    by_class = v.lung_focus_by_class
    return schemas.ResultDetailOut(
        **result_out(v).model_dump(),
        lung_focus_by_class={c: lung_focus_out(f) for c, f in by_class.items()} if by_class is not None else None,
    )


def prediction_out(prediction: Prediction, *, threshold: float) -> schemas.PredictionOut:
    image = prediction.image
    return schemas.PredictionOut(
        id=prediction.id,
        image_sha256=image.sha256,
        image_url=predictions.image_url(image.sha256),
        width=image.width,
        height=image.height,
        format=image.format,
        filename=prediction.filename,
        created_at=prediction.created_at,
        created_by=prediction.created_by.username if prediction.created_by else None,
        results=[result_out(v) for v in predictions.result_views(prediction, threshold=threshold)],
    )


def verdict_out(verdict: Verdict, latest_ids: set[int]) -> schemas.VerdictOut:
    return schemas.VerdictOut(
        id=verdict.id,
        prediction_id=verdict.prediction_id,
        model_id=verdict.model_id,
        reviewer=verdict.reviewer.username,
        verdict=verdict.verdict,  # type: ignore[arg-type]
        reasons=list(verdict.reasons),
        comment=verdict.comment,
        diagnosis=verdict.diagnosis,  # type: ignore[arg-type]
        created_at=verdict.created_at,
        is_latest=verdict.id in latest_ids,
    )


# ----------------------------------------------------------------------------------- general
@router.get("/health", response_model=schemas.Health)
def health() -> schemas.Health:
    return schemas.Health()


class MeOut(BaseModel):
    username: str
    role: str
    must_change_password: bool


@router.get("/me", response_model=MeOut, responses=ERRORS)
def me(user: CurrentUser) -> MeOut:
    return MeOut(username=user.username, role=user.role, must_change_password=user.must_change_password)


# ------------------------------------------------------------------------------------ models
@router.get("/models", response_model=list[schemas.ModelOut], responses=ERRORS)
def list_models(session: SessionDep, _user: CurrentUser) -> list[schemas.ModelOut]:
    return [schemas.ModelOut.model_validate(m) for m in model_registry.list_models(session=session)]


@router.post("/models/{model_id}/activate", response_model=schemas.ModelOut, responses=ERRORS)
def activate_model(model_id: int, session: SessionDep, admin: AdminUser) -> schemas.ModelOut:
    """Make this model the default for new predictions (admin): promote a new version or roll back to
    an earlier one, without a restart. Audited. 409 if its checkpoint is missing or changed."""
    return schemas.ModelOut.model_validate(
        model_registry.activate_model(session=session, model_id=model_id, actor=admin)
    )


# ------------------------------------------------------------------------------- predictions
@router.post(
    "/predictions", status_code=status.HTTP_201_CREATED, response_model=schemas.PredictionOut, responses=ERRORS
)
def create_prediction(
    file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM chest X-ray")],
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    manager: ModelManagerDep,
    user: CurrentUser,
    models: Annotated[
        str | None, Form(description="comma-separated model ids, or 'all'; default: the active model")
    ] = None,
) -> schemas.PredictionOut:
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLargeError(too_large_message(settings.max_upload_bytes))
    prediction = predictions.create_prediction(
        session=session,
        settings=settings,
        store=store,
        manager=manager,
        data=data,
        filename=file.filename,
        models=models,
        user=user,
    )
    return prediction_out(prediction, threshold=settings.lung_focus_threshold)


SORT_DESCRIPTION = (
    f"priority: {reviews.PRIORITY_EXPLANATION}; newest: upload time, newest first; {reviews.FLAGGED_EXPLANATION}"
)


@router.get("/predictions", response_model=schemas.WorklistOut, responses=ERRORS)
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
        reviewed={"yes": True, "no": False, "any": None}[reviewed],
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


@router.get("/predictions/{prediction_id}", response_model=schemas.PredictionDetailOut, responses=ERRORS)
def get_prediction(
    prediction_id: int, session: SessionDep, settings: SettingsDep, _user: CurrentUser
) -> schemas.PredictionDetailOut:
    """One prediction with its verdicts; each result also has `lung_focus_by_class` (every class's lung focus)."""
    prediction = predictions.get_prediction(session=session, prediction_id=prediction_id)
    history = reviews.verdict_history(session=session, prediction_id=prediction_id)
    latest = reviews.latest_verdict_ids(history)
    summary = prediction_out(prediction, threshold=settings.lung_focus_threshold).model_dump(exclude={"results"})
    views = predictions.result_views(prediction, threshold=settings.lung_focus_threshold)
    return schemas.PredictionDetailOut(
        **summary,
        results=[result_detail_out(v) for v in views],
        verdicts=[verdict_out(v, latest) for v in history],
    )


@router.get(
    "/predictions/{prediction_id}/overlays/{model_id}/{cls}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **ERRORS},
)
def get_overlay(
    prediction_id: int, model_id: int, cls: str, session: SessionDep, store: StoreDep, _user: CurrentUser
) -> Response:
    png = predictions.render_overlay_png(
        session=session, store=store, prediction_id=prediction_id, model_id=model_id, cls=cls
    )
    return Response(png, media_type="image/png", headers=IMAGE_CACHE_HEADERS)


@router.get(
    "/predictions/{prediction_id}/lung-outline/{model_id}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **ERRORS},
)
def get_lung_outline(
    prediction_id: int, model_id: int, session: SessionDep, store: StoreDep, _user: CurrentUser
) -> Response:
    """The lung outline of this result's film as a transparent PNG of exactly its overlays' size (cyan
    outline; a lung-crop model's box in white), to lay over any of its overlays. 404 when lung focus
    was not computed for the result."""
    png = predictions.render_lung_outline_png(
        session=session, store=store, prediction_id=prediction_id, model_id=model_id
    )
    return Response(png, media_type="image/png", headers=IMAGE_CACHE_HEADERS)


@router.get(
    "/images/{image_sha256}.png", response_class=Response, responses={200: {"content": {"image/png": {}}}, **ERRORS}
)
def get_image(image_sha256: str, session: SessionDep, store: StoreDep, _user: CurrentUser) -> Response:
    png = predictions.film_png(session=session, store=store, image_sha256=image_sha256)
    return Response(png, media_type="image/png", headers=IMAGE_CACHE_HEADERS)


# ---------------------------------------------------------------------------------- verdicts
@router.post(
    "/predictions/{prediction_id}/verdicts",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.VerdictOut,
    responses=ERRORS,
)
def create_verdict(
    prediction_id: int, body: schemas.VerdictIn, session: SessionDep, user: CurrentUser
) -> schemas.VerdictOut:
    verdict = reviews.add_verdict(
        session=session,
        prediction_id=prediction_id,
        model_id=body.model_id,
        reviewer=user,
        verdict=body.verdict,
        reasons=body.reasons,
        comment=body.comment,
        diagnosis=body.diagnosis,
    )
    return verdict_out(verdict, {verdict.id})


@router.get(
    "/verdicts",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}, "application/json": {}}, "description": "all verdicts"}, **ERRORS},
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


# ------------------------------------------------------------------------------ users (admin)
class UserOut(BaseModel):
    id: int
    username: str
    role: str
    active: bool


class UserCreateIn(BaseModel):
    model_config = {"extra": "forbid"}

    username: str = Field(min_length=1, max_length=64)
    role: Literal["reviewer", "admin"] = "reviewer"
    password: str | None = Field(None, description="omit to have one generated (returned once)")


class UserCreatedOut(UserOut):
    password: str | None = Field(None, description="the generated password, shown once")
    api_token: str = Field(description="an API token for this user, shown once")


def _user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role, active=user.active)


@router.get("/users", response_model=list[UserOut], responses=ERRORS)
def list_users(session: SessionDep, _admin: AdminUser) -> list[UserOut]:
    return [_user_out(u) for u in accounts.list_users(session=session)]


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserCreatedOut, responses=ERRORS)
def create_user(body: UserCreateIn, session: SessionDep, _admin: AdminUser) -> UserCreatedOut:
    created = accounts.create_user_with_token(
        session=session, username=body.username, role=body.role, password=body.password
    )
    return UserCreatedOut(
        **_user_out(created.user).model_dump(), password=created.generated_password, api_token=created.token.token
    )
