"""Browser pages of the reading station: server-rendered Jinja2 templates, one CSS and one JS file.

Thin like the API: each route parses a query or a form, calls the service that does the work and
renders one template (or redirects, post/redirect/get). Rules every page follows:

- Anonymous visitors reach only /login (and, outside this router, /static and /api/v1/health);
  every other page answers 303 → /login?next=<page>. Images are served by the API, which needs a
  user, so an anonymous browser never gets a film or an overlay either.
- A user flagged `must_change_password` (the bootstrap admin) is sent to /account/password first.
- Every form is a POST carrying `csrf_token` (`app.deps.csrf_token`), checked with
  `app.deps.require_csrf`; a missing or wrong token renders a 403 page and changes nothing.
- Service errors become the service's own message on the page (upload: 413/415/422/503 with
  the form kept), never a crash and never a JSON body in front of a radiologist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app import security
from app.deps import (
    SESSION_COOKIE,
    ModelManagerDep,
    OptionalUser,
    OptionalWebSession,
    SessionDep,
    SettingsDep,
    StoreDep,
    clear_session_cookie,
    client_ip,
    csrf_token,
    require_csrf,
    set_session_cookie,
)
from app.models import REASON_TAGS, MLModel, User
from app.services import accounts, model_registry, predictions, reviews
from app.services.errors import ServiceError, ThrottledError
from ml import CLASSES
from ml.cam.overlay import colorbar_png
from ml.confound import GROUP_NAMES
from ml.imageio import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from ml.lung_focus import NO_LUNG, NO_POSITIVE_MASS

router = APIRouter(include_in_schema=False)

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"
LOGIN_PATH = "/login"
PASSWORD_PATH = "/account/password"
COMMENT_MAX_CHARS = 4000
WORKLIST_PAGE_SIZE = 50

CLASS_LABELS = {"normal": "Normal", "bacterial": "Bacterial", "viral": "Viral", "covid19": "COVID-19"}
REASON_LABELS = {
    "outside_lungs": "Outside the lungs",
    "text_or_marker": "Text or marker",
    "device_or_line": "Device or line",
    "image_border": "Image border",
    "other": "Other",
}
CAM_METHODS = {
    "cam": (
        "CAM",
        "class activation map: the last convolutional features weighted by this class's output weights "
        "(the map's average is the class score).",
    ),
    "gradcam": (
        "Grad-CAM",
        "the last convolutional features weighted by the gradient of this class's score (an approximation, "
        "for networks without a pooling head such as AlexNet and VGG).",
    ),
    "linear-decomposition": (
        "Linear decomposition",
        "the class score split exactly over image positions through the network's single linear layer (CNN-X).",
    ),
}
DATA_CAVEAT = (
    "Children's training films are all non-COVID, pediatric (Kermany); adult non-COVID films come almost "
    "all from one hospital (NIH ChestX-ray14: normal and pneumonia); COVID-19 films are adult, mostly "
    "figures cut from papers and web pages (Cohen, CXNet: arrows, letters, crops) or from Hannover. A "
    "probability may reflect age, hospital or figure marks rather than lung findings (a model trained "
    "without the NIH films, such as the first bundled one, calls most adult films COVID-19); check the "
    "highlighted region."
)
LEGEND_LOW = "blue = little evidence"
LEGEND_HIGH = "red = strongest evidence for this class"
LUNG_FOCUS_REASONS = {
    NO_POSITIVE_MASS: "This heat map has no positive evidence anywhere, so its lung focus cannot be measured.",
    NO_LUNG: "The lung segmenter found no lungs on this film, so lung focus cannot be measured.",
}
"""Why a result is flagged without a meaningful score, in a reader's words (ml.lung_focus reasons)."""
VIEW_MODES = ("overlay", "film", "side")
REVIEW_STATES: dict[str, bool | None] = {"no": False, "yes": True, "any": None}
"""Worklist filter values → `reviews.worklist(reviewed=...)`: waiting, reviewed, all."""
SORT_ORDERS: dict[str, reviews.WorklistSort] = {"priority": "priority", "newest": "newest", "flagged": "flagged"}
"""Worklist sort values; anything else falls back to priority (a page stays lenient, the API answers 422)."""
FLAGGED_STATES: dict[str, bool | None] = {"any": None, "yes": True, "no": False}
"""Worklist lung-focus filter values → `reviews.worklist(flagged=...)`: all, flagged only, checked and not flagged."""


# ------------------------------------------------------------------------------ templates
def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:.{digits}f} %"


def _make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    templates.env.filters["when"] = _when
    templates.env.filters["pct"] = _pct
    templates.env.filters["class_label"] = lambda c: CLASS_LABELS.get(c, c)
    templates.env.filters["reason_label"] = lambda r: REASON_LABELS.get(r, r)
    templates.env.globals.update(
        CLASSES=CLASSES,
        CLASS_LABELS=CLASS_LABELS,
        REASON_TAGS=REASON_TAGS,
        REASON_LABELS=REASON_LABELS,
        CAM_METHODS=CAM_METHODS,
        DATA_CAVEAT=DATA_CAVEAT,
        GROUP_NAMES=GROUP_NAMES,
        LEGEND_LOW=LEGEND_LOW,
        LEGEND_HIGH=LEGEND_HIGH,
        LUNG_FOCUS_REASONS=LUNG_FOCUS_REASONS,
        image_url=predictions.image_url,
    )
    return templates


templates = _make_templates()


def render(
    request: Request,
    name: str,
    *,
    user: User | None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """A page: the template gets `user`, `csrf_token` and `nav` besides the route's own context."""
    base = {"user": user, "csrf_token": csrf_token(request), "nav": request.url.path}
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code, headers=headers)


def error_page(request: Request, user: User | None, status_code: int, title: str, message: str) -> Response:
    return render(request, "error.html", user=user, status_code=status_code, title=title, message=message)


# --------------------------------------------------------------------------- dependencies
def safe_next(target: str | None) -> str:
    """A same-site path to return to after login; anything else (other hosts, //x, /\\x) → '/'."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _login_location(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return LOGIN_PATH if here == "/" else f"{LOGIN_PATH}?next={quote(here, safe='')}"


def page_user(request: Request, user: OptionalUser) -> User:
    """The logged-in user; anonymous → 303 to the login page, must-change-password → 303 to that page."""
    if user is None:
        raise HTTPException(
            status.HTTP_303_SEE_OTHER, detail="log in first", headers={"Location": _login_location(request)}
        )
    if user.must_change_password and request.url.path != PASSWORD_PATH:
        raise HTTPException(
            status.HTTP_303_SEE_OTHER, detail="choose a new password", headers={"Location": PASSWORD_PATH}
        )
    return user


PageUser = Annotated[User, Depends(page_user)]


def admin_required(request: Request, user: User) -> Response:
    """The 403 page of an admin page or action asked for by a reviewer."""
    return error_page(request, user, status.HTTP_403_FORBIDDEN, "Admins only", "This page needs the admin role.")


async def csrf_valid(request: Request, web_session: OptionalWebSession) -> bool:
    """Whether the form carries the right CSRF token (the backend's check, answered as a bool so the
    route can render a page instead of a JSON error)."""
    try:
        await require_csrf(request, web_session)
    except HTTPException:
        return False
    return True


CsrfValid = Annotated[bool, Depends(csrf_valid)]


def csrf_failure(request: Request, user: User | None) -> Response:
    return error_page(
        request,
        user,
        status.HTTP_403_FORBIDDEN,
        "Form expired",
        "The form has expired or its security token is missing. Go back, reload the page and try again; "
        "nothing was saved.",
    )


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------- login
@router.get("/", response_model=None)
def home(_user: PageUser) -> Response:
    return see_other("/worklist")


@router.get(LOGIN_PATH, response_model=None)
def login_form(request: Request, user: OptionalUser, next: str = "/") -> Response:
    if user is not None:
        return see_other(safe_next(next))
    return render(request, "login.html", user=None, next=safe_next(next), username="", error=None)


@router.post(LOGIN_PATH, response_model=None)
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    csrf_ok: CsrfValid,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    if not csrf_ok:
        return csrf_failure(request, None)
    target = safe_next(next)

    def again(status_code: int, error: str, headers: dict[str, str] | None = None) -> Response:
        return render(
            request,
            "login.html",
            user=None,
            status_code=status_code,
            headers=headers,
            next=target,
            username=username,
            error=error,
        )

    if not username or not password:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "Enter your user name and password.")
    try:
        user = accounts.authenticate(
            session=session, settings=settings, username=username, password=password, ip=client_ip(request)
        )
    except ThrottledError as exc:
        return again(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed logins for this account from this computer: {exc}.",
            {"Retry-After": str(exc.retry_after)},
        )
    if user is None:
        return again(status.HTTP_401_UNAUTHORIZED, "Wrong user name or password (or the account is disabled).")
    new = accounts.create_session(
        session=session,
        settings=settings,
        user=user,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    response = see_other(PASSWORD_PATH if user.must_change_password else target)
    set_session_cookie(response, new.token, settings)
    return response


@router.post("/logout", response_model=None)
def logout(
    request: Request, session: SessionDep, settings: SettingsDep, user: OptionalUser, csrf_ok: CsrfValid
) -> Response:
    if user is None:
        return see_other(LOGIN_PATH)
    if not csrf_ok:
        return csrf_failure(request, user)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        accounts.end_session(session=session, token=token)
    response = see_other(LOGIN_PATH)
    clear_session_cookie(response, settings)
    return response


@router.get(PASSWORD_PATH, response_model=None)
def password_form(request: Request, user: PageUser) -> Response:
    return render(request, "password.html", user=user, error=None)


@router.post(PASSWORD_PATH, response_model=None)
def password_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    csrf_ok: CsrfValid,
    current: Annotated[str, Form()] = "",
    new: Annotated[str, Form()] = "",
    repeat: Annotated[str, Form()] = "",
) -> Response:
    if not csrf_ok:
        return csrf_failure(request, user)

    def again(status_code: int, error: str) -> Response:
        return render(request, "password.html", user=user, status_code=status_code, error=error)

    if new != repeat:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "The two new passwords differ.")
    try:
        checked = accounts.authenticate(
            session=session, settings=settings, username=user.username, password=current, ip=client_ip(request)
        )
        if checked is None:
            return again(status.HTTP_401_UNAUTHORIZED, "The current password is wrong.")
        accounts.set_password(session=session, user=checked, password=new)  # ends every session of the user
    except ServiceError as exc:
        return again(exc.status_code, str(exc))
    fresh = accounts.create_session(
        session=session,
        settings=settings,
        user=checked,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    response = see_other("/")
    set_session_cookie(response, fresh.token, settings)
    return response


# --------------------------------------------------------------------------------- upload
def _available_models(session: Any) -> list[MLModel]:
    return [m for m in model_registry.list_models(session=session) if Path(m.checkpoint_path).is_file()]


@router.get("/upload", response_model=None)
def upload_form(request: Request, session: SessionDep, settings: SettingsDep, user: PageUser) -> Response:
    return render(
        request,
        "upload.html",
        user=user,
        models=_available_models(session),
        selected="",
        max_bytes=settings.max_upload_bytes,
        error=None,
    )


def _image_error_status(exc: ImageDecodeError) -> int:
    if isinstance(exc, UnsupportedImageError):
        return status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    if isinstance(exc, ImageTooLargeError):
        return status.HTTP_413_CONTENT_TOO_LARGE
    return status.HTTP_422_UNPROCESSABLE_CONTENT


@router.post("/upload", response_model=None)
def upload_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    manager: ModelManagerDep,
    user: PageUser,
    csrf_ok: CsrfValid,
    file: Annotated[UploadFile | None, File()] = None,
    models: Annotated[str, Form()] = "",
) -> Response:
    if not csrf_ok:
        return csrf_failure(request, user)

    def again(status_code: int, error: str) -> Response:
        return render(
            request,
            "upload.html",
            user=user,
            status_code=status_code,
            models=_available_models(session),
            selected=models,
            max_bytes=settings.max_upload_bytes,
            error=error,
        )

    if file is None or not file.filename:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "Choose a PNG, JPEG or DICOM file first.")
    data = file.file.read(settings.max_upload_bytes + 1)
    try:
        prediction = predictions.create_prediction(
            session=session,
            settings=settings,
            store=store,
            manager=manager,
            data=data,
            filename=file.filename,
            models=models or None,
            user=user,
        )
    except ServiceError as exc:
        return again(exc.status_code, str(exc))
    except ImageDecodeError as exc:
        return again(_image_error_status(exc), str(exc))
    if len(prediction.results) > 1:
        return see_other(f"/cases/{prediction.id}/compare")
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
    threshold: float,
    model: int | None = None,
    cls: str | None = None,
    view: str | None = None,
    saved: int | None = None,
    status_code: int = 200,
    form_error: str | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    try:
        prediction = predictions.get_prediction(session=session, prediction_id=prediction_id)
    except ServiceError as exc:
        return error_page(request, user, exc.status_code, "Case not found", str(exc))
    views = predictions.result_views(prediction, threshold=threshold)
    if not views:
        return error_page(request, user, 404, "No results", f"case {prediction_id} has no model results")
    focus = next((v for v in views if v.model.id == model), views[0])
    selected = cls if cls in focus.overlays else next(iter(focus.overlays))
    history = _history(session, prediction_id)
    mine = next(
        (h.verdict for h in history if h.verdict.reviewer_id == user.id and h.verdict.model_id == focus.model.id), None
    )
    return render(
        request,
        "case.html",
        user=user,
        status_code=status_code,
        prediction=prediction,
        views=views,
        focus=focus,
        selected_cls=selected,
        view_mode=view if view in VIEW_MODES else "overlay",
        film_url=predictions.image_url(prediction.image.sha256),
        history=history,
        my_latest=mine,
        saved=saved,
        form_error=form_error,
        form=form or {},
        metrics_summary=metrics_summary(focus.model),
        next_case=_next_waiting(session) if saved is not None else None,
        lung_focus_threshold=threshold,
    )


def _next_waiting(session: Any) -> str | None:
    """URL of the worklist's first waiting result (priority order), offered after a verdict is saved."""
    first = reviews.worklist(session=session, reviewed=False, sort="priority", limit=1).items
    return f"/cases/{first[0].prediction.id}?model={first[0].model.id}" if first else None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


@router.get("/cases/{prediction_id}", response_model=None)
def case_page(
    request: Request,
    prediction_id: int,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    model: str | None = None,
    cls: str | None = None,
    view: str | None = None,
    saved: str | None = None,
) -> Response:
    return _case_page(
        request,
        session,
        user,
        prediction_id,
        threshold=settings.lung_focus_threshold,
        model=_int_or_none(model),
        cls=cls,
        view=view,
        saved=_int_or_none(saved),
    )


@router.get("/cases/{prediction_id}/compare", response_model=None)
def compare_page(
    request: Request, prediction_id: int, session: SessionDep, settings: SettingsDep, user: PageUser
) -> Response:
    try:
        prediction = predictions.get_prediction(session=session, prediction_id=prediction_id)
    except ServiceError as exc:
        return error_page(request, user, exc.status_code, "Case not found", str(exc))
    latest_by_model = {
        v.model_id: v.verdict for v in reviews.verdict_history(session=session, prediction_id=prediction_id)
    }
    return render(
        request,
        "compare.html",
        user=user,
        prediction=prediction,
        views=predictions.result_views(prediction, threshold=settings.lung_focus_threshold),
        film_url=predictions.image_url(prediction.image.sha256),
        review_state=latest_by_model,
        lung_focus_threshold=settings.lung_focus_threshold,
    )


@router.post("/cases/{prediction_id}/verdicts", response_model=None)
def verdict_submit(
    request: Request,
    prediction_id: int,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    csrf_ok: CsrfValid,
    model_id: Annotated[str, Form()] = "",
    verdict: Annotated[str, Form()] = "",
    reasons: Annotated[list[str] | None, Form()] = None,
    comment: Annotated[str, Form()] = "",
    diagnosis: Annotated[str, Form()] = "",
) -> Response:
    if not csrf_ok:
        return csrf_failure(request, user)
    mid = _int_or_none(model_id)
    form = {"verdict": verdict, "reasons": reasons or [], "comment": comment, "diagnosis": diagnosis}

    def again(status_code: int, error: str) -> Response:
        return _case_page(
            request,
            session,
            user,
            prediction_id,
            threshold=settings.lung_focus_threshold,
            model=mid,
            status_code=status_code,
            form_error=error,
            form=form,
        )

    if mid is None:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "The form names no model; reload the page.")
    if len(comment) > COMMENT_MAX_CHARS:
        return again(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"The comment is longer than {COMMENT_MAX_CHARS} characters."
        )
    try:
        row = reviews.add_verdict(
            session=session,
            prediction_id=prediction_id,
            model_id=mid,
            reviewer=user,
            verdict=verdict,
            reasons=reasons or [],
            comment=comment,
            diagnosis=diagnosis or None,
        )
    except ServiceError as exc:
        return again(exc.status_code, str(exc))
    query = urlencode({"model": mid, "saved": row.id})
    return see_other(f"/cases/{prediction_id}?{query}")


@router.get("/legend/colorbar.png", response_model=None)
def colorbar(_user: PageUser) -> Response:
    return Response(_colorbar_bytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@lru_cache(maxsize=1)
def _colorbar_bytes() -> bytes:
    return colorbar_png(predictions.OVERLAY_COLORMAP, width=256, height=12)


# -------------------------------------------------------------------------------- worklist
@router.get("/worklist", response_model=None)
def worklist_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    model: str | None = None,
    cls: str | None = None,
    reviewed: str = "no",
    flagged: str = "any",
    sort: str = "priority",
    offset: str | None = None,
) -> Response:
    model_id = _int_or_none(model)
    predicted_class = cls if cls in CLASSES else None
    review_state = reviewed if reviewed in REVIEW_STATES else "no"
    flagged_state = flagged if flagged in FLAGGED_STATES else "any"
    order = SORT_ORDERS.get(sort, "priority")
    filters: dict[str, Any] = {
        "model": model_id,
        "cls": predicted_class,
        "reviewed": review_state,
        "flagged": flagged_state,
        "sort": order,
    }
    result = reviews.worklist(
        session=session,
        model_id=model_id,
        predicted_class=predicted_class,
        reviewed=REVIEW_STATES[review_state],
        flagged=FLAGGED_STATES[flagged_state],
        sort=order,
        limit=WORKLIST_PAGE_SIZE,
        offset=_int_or_none(offset) or 0,
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


@router.get("/export", response_model=None)
def export_page(request: Request, user: PageUser) -> Response:
    return render(
        request,
        "export.html",
        user=user,
        fields=reviews.EXPORT_FIELDS,
        csv_url="/api/v1/verdicts?format=csv",
        json_url="/api/v1/verdicts?format=json",
    )


# ---------------------------------------------------------------------------------- models
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
            return f"{mv.split} accuracy {_pct(mv.accuracy)}{n}"
    return None


@router.get("/models", response_model=None)
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


@router.post("/models/{model_id}/activate", response_model=None)
def activate_model(
    request: Request, model_id: int, session: SessionDep, admin: PageUser, csrf_ok: CsrfValid
) -> Response:
    if not admin.is_admin:
        return admin_required(request, admin)
    if not csrf_ok:
        return csrf_failure(request, admin)
    try:
        model_registry.activate_model(session=session, model_id=model_id, actor=admin)
    except ServiceError as exc:
        return error_page(request, admin, exc.status_code, "Cannot activate", str(exc))
    return see_other("/models")


# ----------------------------------------------------------------------------------- users
def _users_page(request: Request, session: Any, admin: User, *, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("error", None)
    context.setdefault("created", None)
    return render(
        request,
        "users.html",
        user=admin,
        status_code=status_code,
        users=accounts.list_users(session=session),
        roles=("reviewer", "admin"),
        **context,
    )


@router.get("/admin/users", response_model=None)
def users_page(request: Request, session: SessionDep, admin: PageUser) -> Response:
    if not admin.is_admin:
        return admin_required(request, admin)
    return _users_page(request, session, admin)


@router.post("/admin/users", response_model=None)
def user_create(
    request: Request,
    session: SessionDep,
    admin: PageUser,
    csrf_ok: CsrfValid,
    username: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "reviewer",
    password: Annotated[str, Form()] = "",
) -> Response:
    if not admin.is_admin:
        return admin_required(request, admin)
    """Create an account. Without a password one is generated and shown once; either way the new user
    must choose their own password at first login."""
    if not csrf_ok:
        return csrf_failure(request, admin)
    generated = None if password else security.generate_password()
    try:
        created = accounts.create_user(
            session=session,
            username=username.strip(),
            password=password or generated or "",
            role=role,
            must_change_password=True,
        )
    except ServiceError as exc:
        return _users_page(
            request,
            session,
            admin,
            status_code=exc.status_code,
            error=str(exc),
            form={"username": username, "role": role},
        )
    return _users_page(
        request,
        session,
        admin,
        status_code=201,
        created={"username": created.username, "role": created.role, "password": generated},
    )


@router.post("/admin/users/{username}/active", response_model=None)
def user_set_active(
    request: Request,
    username: str,
    session: SessionDep,
    admin: PageUser,
    csrf_ok: CsrfValid,
    active: Annotated[str, Form()] = "",
) -> Response:
    if not admin.is_admin:
        return admin_required(request, admin)
    if not csrf_ok:
        return csrf_failure(request, admin)
    target = accounts.get_user_by_name(session=session, username=username)
    if target is None:
        return error_page(request, admin, 404, "No such user", f"user {username!r} not found")
    enable = active == "true"
    if target.id == admin.id and not enable:
        return _users_page(request, session, admin, status_code=422, error="You cannot deactivate your own account.")
    accounts.set_active(session=session, user=target, active=enable)
    return see_other("/admin/users")
