"""The app factory: `create_app(settings=None)`.

`create_app` reads settings (from the environment unless given), applies migrations, registers
the bundled and extra checkpoints, creates the first admin when there are no users (printing its
one-time password once), and wires routes, error handlers and the security-headers middleware.
The active model's weights are loaded in the lifespan (or on first use when no lifespan runs).

Run: `cxr-review serve` (or `uvicorn --factory app.main:create_app`).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import openapi_contract
from app.config import Settings, SettingsError
from app.db import make_engine, make_session_factory, upgrade_database
from app.deps import CSRF_COOKIE, AppContext, PageRefused, pending_csrf_cookie
from app.services import accounts, model_registry, predictions
from app.services.errors import OverloadedError, ServiceError, ThrottledError
from app.services.executor import InferenceExecutor
from app.services.model_registry import ModelManager
from app.services.predictions import too_large_message
from app.services.storage import DataDirLock, FileStore
from ml.imageio import ImageDecodeError, ImageTooLargeError, UnsupportedImageError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
CACHEABLE_PREFIXES = ("/static/",)
"""Paths whose replies may be cached; every other reply is `Cache-Control: no-store`."""
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeadersMiddleware:
    """Adds CSP and friends to every HTTP response (pure ASGI: no buffering of streamed bodies), and
    `Cache-Control: no-store` to every one outside /static/ (pages, films, overlays, the API).

    Also sets the anonymous CSRF cookie when a page asked for one (`app.deps.csrf_token`).
    """

    def __init__(self, app: ASGIApp, *, secure_cookies: bool) -> None:
        self.app = app
        self.secure_cookies = secure_cookies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in SECURITY_HEADERS if name not in present)
                if not scope.get("path", "").startswith(CACHEABLE_PREFIXES):
                    # Pages, films and heat maps show patient images: a shared workstation's Back button
                    # or disk cache must not show them after logout. Only the static assets are cached.
                    headers = [(n, v) for n, v in headers if n.lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                new_cookie = pending_csrf_cookie(scope["state"])
                if new_cookie:
                    cookie = f"{CSRF_COOKIE}={new_cookie}; Path=/; HttpOnly; SameSite=Strict"
                    if self.secure_cookies:
                        cookie += "; Secure"
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart envelope and small form fields on top of CXR_MAX_UPLOAD_BYTES."""


class BodyLimitMiddleware:
    """Refuses request bodies over `max_body_size` with a JSON 413 that states the upload limit.

    A declared Content-Length over the limit is answered at once, before a byte of the body is read
    (and the connection is closed); a body without one (chunked) is counted while it streams in, by
    Starlette's RequestBodyLimitMiddleware, whose error FastAPI turns into a 413 for our handler.
    FastAPI's own `max_body_size` is not used on purpose: it answers a declared oversized body with a
    bare text/plain "Content Too Large" sent around the app's middleware and error handlers.
    """

    def __init__(self, app: ASGIApp, *, max_body_size: int, message: str) -> None:
        self.app = RequestBodyLimitMiddleware(app, max_body_size=max_body_size)
        self.max_body_size = max_body_size
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_size:
                reply = JSONResponse({"detail": self.message}, status_code=413, headers={"Connection": "close"})
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error_handlers(app: FastAPI) -> None:
    from app.routes.templating import HTTP_ERROR_TITLES, http_error_page, wants_page

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError | OverloadedError) else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ImageDecodeError)
    async def image_error(_request: Request, exc: ImageDecodeError) -> JSONResponse:
        if isinstance(exc, UnsupportedImageError):
            code = 415
        elif isinstance(exc, ImageTooLargeError):
            code = 413
        else:
            code = 422
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if wants_page(request):
            return http_error_page(request, 422, "The form could not be read. Go back, reload the page and try again.")
        # Same shape as FastAPI's default ({"detail": [...]}) without echoing the input back
        # (an upload or a password must not be reflected into error bodies or logs).
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if wants_page(request) and exc.status_code in HTTP_ERROR_TITLES:
            messages = {404: "There is no page at this address.", 405: "This address is not a page."}
            return http_error_page(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))
        detail = exc.detail
        headers = exc.headers
        if exc.status_code == 413:  # the framework's body limit says only "Content Too Large"
            detail = too_large_message(request.app.state.ctx.settings.max_upload_bytes)
        elif exc.status_code == 405:  # Starlette names only the first matching route's methods
            allowed = openapi_contract.allowed_methods(request.app, request.url.path)
            if allowed is not None:
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def fix_malloc_mmap_threshold(threshold: int) -> bool:
    """A fixed glibc mmap threshold (`Settings.malloc_mmap_threshold_bytes`).

    glibc raises its mmap threshold each time a large mmap'ed block is freed (up to 32 MiB), after which
    tensor buffers come from the per-thread heaps, which keep their peak. When torch ran in every request
    thread, 16 concurrent clients grew the RSS by ~20 % over 1,000 predictions that way; a fixed threshold
    (which also switches the dynamic adjustment off) keeps large buffers mmap'ed, returned on free, at
    the price of page faults on every large buffer. Returns False where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # M_MMAP_THRESHOLD in malloc.h
    return bool(mallopt(m_mmap_threshold, threshold))


def build_context(settings: Settings, *, announce: Any = None) -> AppContext:
    """Migrate, register models, bootstrap the admin, clear leftovers of a crash; returns the shared
    objects of one app (call `.close()` when done with them).

    `announce(text)` receives the one-time admin password line (default: print to stdout once).
    Leftovers (files an upload cut by kill -9 wrote without committing its rows) are removed only when
    no other process serves this data dir (`DataDirLock`); the data dir must be local to one host.
    """
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    if settings.malloc_mmap_threshold_bytes is not None:
        fix_malloc_mmap_threshold(settings.malloc_mmap_threshold_bytes)
    lungseg = settings.resolved_lungseg_checkpoint
    if not lungseg.is_file():  # every upload needs it: refuse to start rather than fail each request
        raise SettingsError(f"CXR_LUNGSEG_CHECKPOINT: lung segmenter checkpoint {lungseg} not found")
    engine = make_engine(settings.resolved_database_url)
    upgrade_database(engine)
    session_factory = make_session_factory(engine)
    with session_factory() as session:
        model_registry.sync_models(session=session, settings=settings)
        admin = accounts.ensure_bootstrap_admin(session=session, settings=settings)
    if admin is not None:
        line = (
            f"Created admin account {admin.username!r} with one-time password: {admin.password}\n"
            "  (shown only now; log in and change it)"
        )
        if announce is None:
            print(line, file=sys.stdout, flush=True)
        else:
            announce(line)
    store = FileStore(settings.data_dir)
    data_lock = DataDirLock(settings.data_dir)
    if data_lock.try_exclusive():
        with session_factory() as session:
            removed = predictions.remove_orphan_files(session=session, store=store)
        if removed:
            log.warning("removed %d file(s) left by uploads interrupted before their commit", len(removed))
    data_lock.hold_shared()
    return AppContext(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        store=store,
        models=ModelManager(lungseg_checkpoint=lungseg),
        executor=InferenceExecutor.from_settings(settings),
        data_lock=data_lock,
    )


def preload_active_model(ctx: AppContext) -> None:
    """Load the active model's weights (and the lung segmenter) now, so the first request does not pay for it."""
    with ctx.session_factory() as session:
        try:
            ctx.models.get(model_registry.get_active_model(session=session))
        except ServiceError as exc:
            log.error("active model unavailable: %s", exc)


def create_app(settings: Settings | None = None, *, announce: Any = None) -> FastAPI:
    settings = (settings or Settings()).prepared()
    ctx = build_context(settings, announce=announce)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from app.reaper import Reaper

        reaper = Reaper(ctx.session_factory, settings).start()  # fails jobs of dead workers; never trains
        if settings.preload_models:
            import anyio.to_thread

            await anyio.to_thread.run_sync(preload_active_model, ctx)
        yield
        reaper.close()
        ctx.close()

    app = FastAPI(
        title="cxr-review",
        summary="Chest X-ray CNN predictions with class activation maps, reviewed by clinicians.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    _error_handlers(app)
    openapi_contract.install(app, settings)  # documented errors, upload limits, links on every operation

    from app.routes import ROUTERS, templating

    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(PageRefused, templating.page_refused)  # a page guard's refusal: an HTML page
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Bodies over the upload limit (plus the multipart envelope) are refused with 413 before anything is
    # parsed or spooled; the route checks the file size exactly.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        message=too_large_message(settings.max_upload_bytes),
    )
    app.add_middleware(SecurityHeadersMiddleware, secure_cookies=settings.production)  # outermost: on every reply
    return app
