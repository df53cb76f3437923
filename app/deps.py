"""FastAPI dependencies as `Annotated` aliases, plus the cookie and CSRF helpers pages use.

Authentication, in order:
1. `Authorization: Bearer <token>` (REST). A present but wrong/revoked token is a 401, never a
   fallback to the cookie or to anonymous.
2. The `cxr_session` cookie (browser). For unsafe methods (POST/PUT/PATCH/DELETE) under /api/ the
   request must also carry the session's CSRF token in `X-CSRF-Token`; browser form posts use
   `require_csrf` (header or form field `csrf_token`).

Pages render `csrf_token(request)` into a hidden `csrf_token` field (or a `<meta>` for fetch). For
an anonymous visitor (the login form) the token is a random value also set as the `cxr_csrf`
cookie (double submit); for a logged-in user it is the session's own token.

Page guards (browser pages answer with redirects and HTML, never JSON refusals):
- `PageUser`: logged in; anonymous → 303 to /login?next=<page>, must-change-password → 303 to
  /account/password.
- `AdminPage`: a `PageUser` with the admin role; a reviewer gets the 403 "Admins only" page.
- `PageCsrf`: the form's CSRF token is right; else the 403 "Form expired" page and nothing changes.
  Declare it after the user guard, so an anonymous visitor is sent to log in and a reviewer is told
  the page is for admins rather than that the form expired.
Refusals are raised as `PageRefused`, which the app renders as its error page (`app.routes.templating`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException, Request, Response, status
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import security
from app.config import Settings
from app.models import User, WebSession
from app.services import accounts
from app.services.executor import InferenceExecutor
from app.services.model_registry import ModelManager
from app.services.storage import DataDirLock, FileStore

SESSION_COOKIE = "cxr_session"
CSRF_COOKIE = "cxr_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LOGIN_PATH = "/login"
PASSWORD_PATH = "/account/password"
_STATE_NEW_CSRF_COOKIE = "new_csrf_cookie"


@dataclass
class AppContext:
    """Everything the app factory builds once; lives at `app.state.ctx`."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: FileStore
    models: ModelManager
    executor: InferenceExecutor
    """The process's one inference executor: every upload's films run through it."""
    data_lock: DataDirLock | None = None
    """Held (shared) while the app runs; see app.services.storage.DataDirLock."""

    def close(self) -> None:
        """Stop the executor, dispose of the engine's connections and release the data dir."""
        self.executor.close()
        self.engine.dispose()
        if self.data_lock is not None:
            self.data_lock.release()


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def get_settings(request: Request) -> Settings:
    return get_context(request).settings


def get_db(request: Request) -> Iterator[Session]:
    with get_context(request).session_factory() as session:
        yield session


def get_store(request: Request) -> FileStore:
    return get_context(request).store


def get_model_manager(request: Request) -> ModelManager:
    return get_context(request).models


def get_executor(request: Request) -> InferenceExecutor:
    return get_context(request).executor


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
StoreDep = Annotated[FileStore, Depends(get_store)]
ModelManagerDep = Annotated[ModelManager, Depends(get_model_manager)]
ExecutorDep = Annotated[InferenceExecutor, Depends(get_executor)]


# ------------------------------------------------------------------------------ authentication
def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def get_web_session(request: Request, session: SessionDep) -> WebSession | None:
    """The live browser session of the cookie (cached on the request), or None."""
    if hasattr(request.state, "web_session"):
        cached: WebSession | None = request.state.web_session
        return cached
    token = request.cookies.get(SESSION_COOKIE)
    web_session = accounts.session_for_token(session=session, token=token) if token else None
    request.state.web_session = web_session
    return web_session


OptionalWebSession = Annotated[WebSession | None, Depends(get_web_session)]


def get_optional_user(request: Request, session: SessionDep, web_session: OptionalWebSession) -> User | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("use 'Authorization: Bearer <token>'")
        user = accounts.user_for_api_token(session=session, token=token.strip())
        if user is None:
            raise _unauthorized("invalid or revoked API token")
        return user
    if web_session is None:
        return None
    if request.method not in SAFE_METHODS and request.url.path.startswith("/api/"):
        supplied = request.headers.get(CSRF_HEADER)
        if not security.tokens_equal(supplied, web_session.csrf_token):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"missing or invalid {CSRF_HEADER} header for a cookie-authenticated request",
            )
    return web_session.user


OptionalUser = Annotated[User | None, Depends(get_optional_user)]


def get_current_user(user: OptionalUser) -> User:
    if user is None:
        raise _unauthorized("authentication required: log in or send 'Authorization: Bearer <token>'")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admin role required")
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


# ------------------------------------------------------------------------------------- CSRF
def csrf_token(request: Request) -> str:
    """The CSRF value a page must embed in its forms (field `csrf_token`) or send as `X-CSRF-Token`.

    Logged in: the session's token (call after the user dependency ran, or it is looked up from the
    cookie). Anonymous: the `cxr_csrf` cookie's value, or a new one that the response will set.
    """
    web_session = getattr(request.state, "web_session", None)
    if web_session is not None:
        token: str = web_session.csrf_token
        return token
    existing = request.cookies.get(CSRF_COOKIE) or getattr(request.state, _STATE_NEW_CSRF_COOKIE, None)
    if existing:
        return existing
    new = security.generate_csrf_token()
    setattr(request.state, _STATE_NEW_CSRF_COOKIE, new)  # the security middleware sets the cookie
    return new


def pending_csrf_cookie(scope_state: dict[str, object]) -> str | None:
    value = scope_state.get(_STATE_NEW_CSRF_COOKIE)
    return value if isinstance(value, str) else None


async def require_csrf(request: Request, web_session: OptionalWebSession) -> None:
    """Dependency for unsafe form posts: the header or form field must match the expected token.

    Expected token: the session's (logged in) or the `cxr_csrf` cookie's (anonymous, e.g. /login).
    """
    expected = web_session.csrf_token if web_session is not None else request.cookies.get(CSRF_COOKIE)
    supplied = request.headers.get(CSRF_HEADER)
    if not supplied:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FORM_FIELD)
            supplied = value if isinstance(value, str) else None
    if not security.tokens_equal(expected, supplied):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="the form has expired or its CSRF token is missing; reload the page and try again",
        )


CsrfProtected = Annotated[None, Depends(require_csrf)]


# -------------------------------------------------------------------------------- page guards
class PageRefused(Exception):
    """A page guard's refusal: the app renders `error.html` with this status, title and message."""

    def __init__(self, status_code: int, title: str, message: str, *, user: User | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.title = title
        self.message = message
        self.user = user


def _see_other(location: str, detail: str) -> HTTPException:
    return HTTPException(status.HTTP_303_SEE_OTHER, detail=detail, headers={"Location": location})


def referring_page(request: Request) -> str:
    """The same-site page a form was posted from (its Referer), or '/'."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.url.netloc or not referer.path.startswith("/"):
        return "/"
    return referer.path + (f"?{referer.query}" if referer.query else "")


def _login_location(request: Request) -> str:
    """The login page, returning to this page after login; a form post returns to the page it was posted
    from (its URL answers only POST: going there after login would be a 405)."""
    if request.method in SAFE_METHODS:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        here = referring_page(request)
    return LOGIN_PATH if here == "/" else f"{LOGIN_PATH}?next={quote(here, safe='')}"


def require_page_user(request: Request, user: OptionalUser) -> User:
    """The logged-in user; anonymous → 303 to the login page, must-change-password → 303 to that page."""
    if user is None:
        raise _see_other(_login_location(request), "log in first")
    if user.must_change_password and request.url.path != PASSWORD_PATH:
        raise _see_other(PASSWORD_PATH, "choose a new password")
    return user


PageUser = Annotated[User, Depends(require_page_user)]


def require_signed_in(user: OptionalUser) -> User:
    """Any logged-in user, even one who must still change the password (logout); anonymous → 303 /login."""
    if user is None:
        raise _see_other(LOGIN_PATH, "not logged in")
    return user


SignedInUser = Annotated[User, Depends(require_signed_in)]


def require_admin_page(user: PageUser) -> User:
    """A `PageUser` with the admin role; a reviewer gets the 403 "Admins only" page."""
    if not user.is_admin:
        raise PageRefused(status.HTTP_403_FORBIDDEN, "Admins only", "This page needs the admin role.", user=user)
    return user


AdminPage = Annotated[User, Depends(require_admin_page)]


async def require_page_csrf(request: Request, web_session: OptionalWebSession) -> None:
    """`require_csrf` for browser forms: a missing or wrong token is the 403 "Form expired" page."""
    try:
        await require_csrf(request, web_session)
    except HTTPException:
        raise PageRefused(
            status.HTTP_403_FORBIDDEN,
            "Form expired",
            "The form has expired or its security token is missing. Go back, reload the page and try again; "
            "nothing was saved.",
            user=web_session.user if web_session is not None else None,
        ) from None


PageCsrf = Annotated[None, Depends(require_page_csrf)]


# ---------------------------------------------------------------------------------- cookies
def set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=settings.production,
        path="/",
    )
    response.delete_cookie(CSRF_COOKIE, path="/")  # the login form's token is spent


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=settings.production)
