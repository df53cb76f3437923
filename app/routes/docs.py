"""The API about itself: GET /api/v1/health (public, for load balancers and probes), and the OpenAPI
schema and Swagger UI, for logged-in users only (anonymous visitors reach only the login page, static
assets and /api/v1/health). The Swagger UI assets come from the `fastapi-offline` package and the
initialiser is a static file, so the page needs no CDN and no inline script."""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from app import schemas
from app.deps import CurrentUser, OptionalUser
from app.services.errors import NotFoundError

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)

SWAGGER_ASSETS = Path(str(files("fastapi_offline") / "static"))
_ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
_INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
});
"""


@api.get("/health", response_model=schemas.Health)
def health() -> schemas.Health:
    return schemas.Health()


@pages.get("/openapi.json")
def openapi_schema(request: Request, _user: CurrentUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@pages.get("/docs", response_model=None)
def swagger_ui(request: Request, user: OptionalUser) -> Response:
    if user is None:
        return RedirectResponse("/login?next=/docs", status_code=303)
    title = html.escape(request.app.title)
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script></body></html>""")


@pages.get("/docs/assets/{name}", response_model=None)
def swagger_asset(name: str) -> Response:  # library assets: public like /static
    if name == "init.js":
        return Response(_INIT_JS, media_type="text/javascript")
    if name not in _ASSET_TYPES:
        raise NotFoundError("not found")
    return FileResponse(SWAGGER_ASSETS / name, media_type=_ASSET_TYPES[name])


router = APIRouter()
router.include_router(api)
router.include_router(pages)
