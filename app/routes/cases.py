"""Cases: uploading a film, its predictions, heat maps and films, and the verdicts on them.

API:   POST /api/v1/predictions (upload), GET /api/v1/predictions/{id} (with its verdicts),
       its overlays and lung outline PNGs, GET /api/v1/images/{sha256}.png (the film),
       POST /api/v1/predictions/{id}/verdicts.
Pages: /upload, /cases/{id} (one model's result, the verdict form, the history), /cases/{id}/compare
       (every model side by side), /legend/colorbar.png (?cmap= any of the overlays' colour maps).
Torch and file work happens in sync (`def`) routes, which FastAPI runs in a thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from fastapi.responses import Response
from sqlalchemy.orm import Session

from app import forms, schemas
from app.config import Settings
from app.deps import CurrentUser, ExecutorDep, ModelManagerDep, PageCsrf, PageUser, SessionDep, SettingsDep, StoreDep
from app.models import MLModel, Prediction, User
from app.routes.models import metrics_summary
from app.routes.presenters import prediction_out, result_detail_out, verdict_out
from app.routes.templating import error_page, render, see_other
from app.services import model_registry, predictions, reading, reviews
from app.services.errors import ServiceError
from app.services.executor import InferenceExecutor
from app.services.model_registry import ModelManager
from app.services.storage import FileStore
from ml.cam.overlay import colorbar_png
from ml.imageio import ImageDecodeError, ImageTooLargeError, UnsupportedImageError

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)

IMAGE_CACHE_HEADERS = {"Cache-Control": "no-store"}  # patient images: never kept by the browser
PNG_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}, **schemas.ERRORS}
COMMENT_MAX_CHARS = 4000
VIEW_MODES = ("overlay", "film", "side")


def _predict_upload(
    file: UploadFile,
    models: str | None,
    user: User,
    session: Session,
    settings: Settings,
    store: FileStore,
    manager: ModelManager,
    executor: InferenceExecutor,
) -> Prediction:
    """The upload of the API and of the page: read at most one byte over the limit (the service refuses
    a larger file with 413), then `predictions.create_prediction`."""
    data = file.file.read(settings.max_upload_bytes + 1)
    return predictions.create_prediction(
        session=session,
        settings=settings,
        store=store,
        manager=manager,
        executor=executor,
        data=data,
        filename=file.filename,
        models=models,
        user=user,
    )


# ------------------------------------------------------------------------------------- API
@api.post(
    "/predictions",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.PredictionOut,
    responses=schemas.PREDICTION_ERRORS,
)
def create_prediction(
    file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM chest X-ray")],
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    manager: ModelManagerDep,
    executor: ExecutorDep,
    user: CurrentUser,
    models: Annotated[
        str | None, Form(description="comma-separated model ids, or 'all'; default: the active model")
    ] = None,
) -> schemas.PredictionOut:
    """Upload a film: the requested models' results, stored (201 means every file and row is durable).
    503 with Retry-After when the inference queue is full; nothing is stored then."""
    prediction = _predict_upload(file, models, user, session, settings, store, manager, executor)
    return prediction_out(prediction, threshold=settings.lung_focus_threshold)


@api.get("/predictions/{prediction_id}", response_model=schemas.PredictionDetailOut, responses=schemas.ERRORS)
def get_prediction(
    prediction_id: int, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> schemas.PredictionDetailOut:
    """One prediction with the verdicts the caller may see (blind reading: another reviewer's verdict on
    a model's result only once the caller gave one on it; admins see all); each result also has
    `lung_focus_by_class` (every class's lung focus). `reading_token`: see POST .../verdicts."""
    prediction = predictions.get_prediction(session=session, prediction_id=prediction_id)
    everything = reviews.verdict_history(session=session, prediction_id=prediction_id)
    latest = reviews.latest_verdict_ids(everything)
    history = reviews.visible_verdicts(user, everything)
    mode, token = reading.open_case(settings=settings, user=user, prediction_id=prediction_id)
    summary = prediction_out(prediction, threshold=settings.lung_focus_threshold).model_dump(exclude={"results"})
    views = predictions.result_views(prediction, threshold=settings.lung_focus_threshold)
    return schemas.PredictionDetailOut(
        **summary,
        results=[result_detail_out(v) for v in views],
        verdicts=[verdict_out(v, latest) for v in history],
        hidden_verdicts=len(everything) - len(history),
        reading_mode=mode,  # type: ignore[arg-type]
        reading_token=token,
    )


@api.get("/predictions/{prediction_id}/overlays/{model_id}/{cls}.png", response_class=Response, responses=PNG_RESPONSES)
def get_overlay(
    prediction_id: int,
    model_id: int,
    cls: str,
    session: SessionDep,
    store: StoreDep,
    _user: CurrentUser,
    cmap: schemas.Colormap = "inferno",
) -> Response:
    """The film with `cls`'s heat map blended on top, in colour map `cmap`."""
    png = predictions.render_overlay_png(
        session=session, store=store, prediction_id=prediction_id, model_id=model_id, cls=cls, colormap=cmap
    )
    return Response(png, media_type="image/png", headers=IMAGE_CACHE_HEADERS)


@api.get("/predictions/{prediction_id}/lung-outline/{model_id}.png", response_class=Response, responses=PNG_RESPONSES)
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


@api.get("/images/{image_sha256}.png", response_class=Response, responses=PNG_RESPONSES)
def get_image(image_sha256: str, session: SessionDep, store: StoreDep, _user: CurrentUser) -> Response:
    png = predictions.film_png(session=session, store=store, image_sha256=image_sha256)
    return Response(png, media_type="image/png", headers=IMAGE_CACHE_HEADERS)


@api.post(
    "/predictions/{prediction_id}/verdicts",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.VerdictOut,
    responses=schemas.ERRORS,
)
def create_verdict(
    prediction_id: int, body: schemas.VerdictIn, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> schemas.VerdictOut:
    """Append a verdict. With the `reading_token` of GET /predictions/{id}, the reading mode and the time
    to the verdict are recorded (422 for a token of another case or user, or a reveal time that is not
    from 0 to the time the case was open)."""
    record = reading.verdict_record(
        settings=settings,
        user=user,
        prediction_id=prediction_id,
        token=body.reading_token,
        ai_revealed_after_ms=reading.NOT_REVEALED if body.ai_revealed_after_ms is None else body.ai_revealed_after_ms,
    )
    verdict = reviews.add_verdict(
        session=session,
        prediction_id=prediction_id,
        model_id=body.model_id,
        reviewer=user,
        verdict=body.verdict,
        reasons=body.reasons,
        comment=body.comment,
        diagnosis=body.diagnosis,
        regions=[r.model_dump() for r in body.regions],
        reading=record,
    )
    return verdict_out(verdict, {verdict.id})


# ---------------------------------------------------------------------------------- upload
def _available_models(session: Any) -> list[MLModel]:
    return [m for m in model_registry.list_models(session=session) if Path(m.checkpoint_path).is_file()]


def _upload_page(
    request: Request,
    session: Any,
    settings: Any,
    user: User,
    *,
    status_code: int = 200,
    selected: str = "",
    error: str | None = None,
) -> Response:
    return render(
        request,
        "upload.html",
        user=user,
        status_code=status_code,
        models=_available_models(session),
        selected=selected,
        max_bytes=settings.max_upload_bytes,
        error=error,
    )


@pages.get("/upload", response_model=None)
def upload_form(request: Request, session: SessionDep, settings: SettingsDep, user: PageUser) -> Response:
    return _upload_page(request, session, settings, user)


def _image_error_status(exc: ImageDecodeError) -> int:
    if isinstance(exc, UnsupportedImageError):
        return status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    if isinstance(exc, ImageTooLargeError):
        return status.HTTP_413_CONTENT_TOO_LARGE
    return status.HTTP_422_UNPROCESSABLE_CONTENT


@pages.post("/upload", response_model=None)
def upload_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    manager: ModelManagerDep,
    executor: ExecutorDep,
    user: PageUser,
    _csrf: PageCsrf,
    file: Annotated[UploadFile | None, File()] = None,
    models: Annotated[str, Form()] = "",
) -> Response:
    def again(status_code: int, error: str) -> Response:
        return _upload_page(request, session, settings, user, status_code=status_code, selected=models, error=error)

    if file is None or not file.filename:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "Choose a PNG, JPEG or DICOM file first.")
    try:
        prediction = _predict_upload(file, models or None, user, session, settings, store, manager, executor)
    except ServiceError as exc:
        return again(exc.status_code, str(exc))
    except ImageDecodeError as exc:
        return again(_image_error_status(exc), str(exc))
    if len(prediction.results) > 1:  # asking to compare every model at upload is asking for the AI
        return see_other(f"/cases/{prediction.id}/compare?ai=shown")
    return see_other(f"/cases/{prediction.id}")


# ----------------------------------------------------------------------------------- cases
@dataclass
class HistoryRow:
    verdict: Any
    counts: bool
    """The latest verdict of this reviewer on this (prediction, model): the one that counts."""


def _history(session: Any, prediction_id: int) -> list[HistoryRow]:
    verdicts = reviews.verdict_history(session=session, prediction_id=prediction_id)
    latest = reviews.latest_verdict_ids(verdicts)
    return [HistoryRow(v, v.id in latest) for v in reversed(verdicts)]  # newest first


def _case_page(
    request: Request,
    session: Any,
    user: User,
    prediction_id: int,
    *,
    settings: Settings,
    query: forms.CaseQuery,
    status_code: int = 200,
    form_error: str | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    try:
        prediction = predictions.get_prediction(session=session, prediction_id=prediction_id)
    except ServiceError as exc:
        return error_page(request, user, exc.status_code, "Case not found", str(exc))
    threshold = settings.lung_focus_threshold
    views = predictions.result_views(prediction, threshold=threshold)
    if not views:
        return error_page(request, user, 404, "No results", f"case {prediction_id} has no model results")
    focus = next((v for v in views if v.model.id == query.model), views[0])
    selected = query.cls if query.cls in focus.overlays else next(iter(focus.overlays))
    everything = _history(session, prediction_id)
    shown = {id(v) for v in reviews.visible_verdicts(user, [h.verdict for h in everything])}
    history = [h for h in everything if id(h.verdict) in shown]
    mine = next(
        (h.verdict for h in history if h.verdict.reviewer_id == user.id and h.verdict.model_id == focus.model.id), None
    )
    form = form or {}
    mode, token = reading.open_case(
        settings=settings, user=user, prediction_id=prediction_id, keep=form.get("reading_token")
    )
    revealed = form.get("ai_revealed_after_ms", "")  # a form shown again keeps what its read had done
    return render(
        request,
        "case.html",
        user=user,
        status_code=status_code,
        prediction=prediction,
        views=views,
        focus=focus,
        selected_cls=selected,
        view_mode=query.view if query.view in VIEW_MODES else "overlay",
        film_url=predictions.image_url(prediction.image.sha256),
        history=history,
        hidden_verdicts=len(everything) - len(history),
        my_latest=mine,
        saved=query.saved,
        form_error=form_error,
        form=form,
        reading_mode=mode,
        reading_token=token,
        ai_shown=mode == "ai_first" or query.saved is not None or revealed not in ("", reading.NOT_REVEALED),
        ai_revealed_after_ms=revealed,
        metrics_summary=metrics_summary(focus.model),
        next_case=_next_waiting(session, threshold) if query.saved is not None else None,
        lung_focus_threshold=threshold,
    )


def _next_waiting(session: Any, threshold: float) -> str | None:
    """URL of the worklist's first waiting result (priority order), offered after a verdict is saved."""
    first = reviews.worklist(session=session, reviewed=False, sort="priority", limit=1, threshold=threshold).items
    return f"/cases/{first[0].prediction.id}?model={first[0].model.id}" if first else None


@pages.get("/cases/{prediction_id}", response_model=None)
def case_page(
    request: Request,
    prediction_id: int,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    query: Annotated[forms.CaseQuery, Query()],
) -> Response:
    return _case_page(request, session, user, prediction_id, settings=settings, query=query)


@pages.get("/cases/{prediction_id}/compare", response_model=None)
def compare_page(
    request: Request,
    prediction_id: int,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    ai: Annotated[str | None, Query(description="'shown': show the AI even before one's own read")] = None,
) -> Response:
    """Every model's maps side by side. Film first (the reader's mode): until the reader has given a
    verdict on the case or asks for the AI (`?ai=shown`, what the case page's link carries once the AI is
    shown there), the page shows the plain film and no probabilities, maps or warnings."""
    try:
        prediction = predictions.get_prediction(session=session, prediction_id=prediction_id)
    except ServiceError as exc:
        return error_page(request, user, exc.status_code, "Case not found", str(exc))
    everything = reviews.verdict_history(session=session, prediction_id=prediction_id)
    verdicts = reviews.visible_verdicts(user, everything)
    latest_by_model = {v.model_id: v.verdict for v in verdicts}
    read = any(v.reviewer_id == user.id for v in everything)
    held_back = reading.mode_for(user=user, settings=settings) == "film_first" and ai != "shown" and not read
    return render(
        request,
        "compare.html",
        user=user,
        prediction=prediction,
        ai_held_back=held_back,
        views=[] if held_back else predictions.result_views(prediction, threshold=settings.lung_focus_threshold),
        film_url=predictions.image_url(prediction.image.sha256),
        review_state=latest_by_model,
        lung_focus_threshold=settings.lung_focus_threshold,
    )


@pages.post("/cases/{prediction_id}/verdicts", response_model=None)
def verdict_submit(
    request: Request,
    prediction_id: int,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    _csrf: PageCsrf,
    form: Annotated[forms.VerdictForm, Form()],
) -> Response:
    mid = form.model_id

    def again(status_code: int, error: str) -> Response:
        return _case_page(
            request,
            session,
            user,
            prediction_id,
            settings=settings,
            query=forms.CaseQuery(model=mid),
            status_code=status_code,
            form_error=error,
            form=form.model_dump(exclude={"model_id"}),
        )

    if mid is None:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "The form names no model; reload the page.")
    if len(form.comment) > COMMENT_MAX_CHARS:
        return again(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"The comment is longer than {COMMENT_MAX_CHARS} characters."
        )
    try:
        record = reading.verdict_record(
            settings=settings,
            user=user,
            prediction_id=prediction_id,
            token=form.reading_token,
            ai_revealed_after_ms=form.ai_revealed_after_ms,
        )
        row = reviews.add_verdict(
            session=session,
            prediction_id=prediction_id,
            model_id=mid,
            reviewer=user,
            verdict=form.verdict,
            reasons=form.reasons,
            comment=form.comment,
            diagnosis=form.diagnosis or None,
            regions=reviews.regions_from_form(form.regions),
            reading=record,
        )
    except ServiceError as exc:
        return again(exc.status_code, str(exc))
    query = urlencode({"model": mid, "saved": row.id})
    return see_other(f"/cases/{prediction_id}?{query}")


@pages.get("/cases/{prediction_id}/verdicts", response_model=None)
def verdicts_address(prediction_id: int, _user: PageUser) -> Response:
    """The verdict form's address answers only POST; opened as a page (history, a pasted link) it is the case."""
    return see_other(f"/cases/{prediction_id}")


@pages.get("/legend/colorbar.png", response_model=None)
def colorbar(_user: PageUser, cmap: schemas.Colormap = "inferno") -> Response:
    """The legend strip of colour map `cmap`, 256×12 px: column i is the colour of value i/255."""
    return Response(_colorbar_bytes(cmap), media_type="image/png", headers=IMAGE_CACHE_HEADERS)


@lru_cache(maxsize=len(predictions.OVERLAY_COLORMAPS))
def _colorbar_bytes(cmap: str) -> bytes:
    return colorbar_png(cmap, width=256, height=12)


router = APIRouter()
router.include_router(api)
router.include_router(pages)
