"""What every browser page shares: the Jinja2 templates with their filters and labels, `render`, the
error page (also of the page guards' refusals, `app.deps.PageRefused`) and post/redirect/get.

Rules every page follows:

- Anonymous visitors reach only /login (and, outside the pages, /static and /api/v1/health); every
  other page answers 303 → /login?next=<page> (`app.deps.PageUser`). Images are served by the API,
  which needs a user, so an anonymous browser never gets a film or an overlay either.
- A user flagged `must_change_password` (the bootstrap admin) is sent to /account/password first.
- Admin pages and actions take `app.deps.AdminPage`: a reviewer gets a 403 page.
- Every form is a POST carrying `csrf_token` (`app.deps.csrf_token`), checked by `app.deps.PageCsrf`;
  a missing or wrong token renders a 403 page and changes nothing.
- Service errors become the service's own message on the page (upload: 413/415/422/503 with
  the form kept), never a crash and never a JSON body in front of a radiologist.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request, status
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.deps import PageRefused, csrf_token, referring_page
from app.models import CLASS_LABELS, REASON_TAGS, User
from app.services import model_registry, predictions, viewer
from ml import CLASSES
from ml.confound import GROUP_NAMES
from ml.lung_focus import NO_LUNG, NO_POSITIVE_MASS

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"

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
LEGEND_LOW = "left = little evidence"
LEGEND_HIGH = "right = strongest evidence for this class"
LUNG_FOCUS_REASONS = {
    NO_POSITIVE_MASS: "This heat map has no positive evidence anywhere, so its lung focus cannot be measured.",
    NO_LUNG: "The lung segmenter found no lungs on this film, so lung focus cannot be measured.",
}
"""Why a result is flagged without a meaningful score, in a reader's words (ml.lung_focus reasons)."""
TEMPLATE_GLOBALS: dict[str, Any] = {
    "CLASSES": CLASSES,
    "CLASS_LABELS": CLASS_LABELS,
    "REASON_TAGS": REASON_TAGS,
    "REASON_LABELS": REASON_LABELS,
    "CAM_METHODS": CAM_METHODS,
    "DATA_CAVEAT": DATA_CAVEAT,
    "GROUP_NAMES": GROUP_NAMES,
    "LEGEND_LOW": LEGEND_LOW,
    "LEGEND_HIGH": LEGEND_HIGH,
    "LUNG_FOCUS_REASONS": LUNG_FOCUS_REASONS,
    "image_url": predictions.image_url,
    "thumbnail_url": viewer.thumbnail_url,
    "heat_map_url": viewer.heat_map_url,
    "film_values_url": viewer.film_values_url,
    "COLORMAPS": predictions.OVERLAY_COLORMAPS,
}
"""What every template sees besides its context, by the name it uses."""


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def pct(value: float | None, digits: int = 1) -> str:
    """A share 0..1 as a percentage ('37.5 %'); '–' for None, NaN or infinity."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:.{digits}f} %"


def _make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    templates.env.filters["when"] = when
    templates.env.filters["pct"] = pct
    templates.env.filters["class_label"] = lambda c: CLASS_LABELS.get(c, c)
    templates.env.filters["reason_label"] = lambda r: REASON_LABELS.get(r, r)
    templates.env.filters["describe"] = model_registry.describe
    templates.env.globals.update(TEMPLATE_GLOBALS)
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
    """The error page, with a link back to the same-site page the visitor came from (when there is one)."""
    came_from = referring_page(request)
    back = came_from if came_from not in ("/", request.url.path) else None
    return render(request, "error.html", user=user, status_code=status_code, title=title, message=message, back=back)


HTTP_ERROR_TITLES = {404: "Not found", 405: "Not here", 422: "Form not understood"}


def wants_page(request: Request) -> bool:
    """A browser page request (not the API): errors answer with a page, never a JSON body."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def http_error_page(request: Request, status_code: int, message: str) -> Response:
    """A framework error (unknown page, wrong method, unreadable form) on a browser page, as a page."""
    web_session = getattr(request.state, "web_session", None)
    user = web_session.user if web_session is not None else None
    title = HTTP_ERROR_TITLES.get(status_code, "Something went wrong")
    return error_page(request, user, status_code, title, message)


async def page_refused(request: Request, exc: Exception) -> Response:
    """The app's handler of `PageRefused` (a page guard said no): its error page."""
    if not isinstance(exc, PageRefused):
        raise exc
    return error_page(request, exc.user, exc.status_code, exc.title, exc.message)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def safe_next(target: str | None) -> str:
    """A same-site path to return to after login; anything else (other hosts, //x, /\\x) → '/'."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target
