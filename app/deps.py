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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import security
from app.config import Settings
from app.models import User, WebSession
from app.services import accounts
from app.services.model_registry import ModelManager
from app.services.storage import DataDirLock, FileStore

SESSION_COOKIE = "cxr_session"
CSRF_COOKIE = "cxr_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_STATE_NEW_CSRF_COOKIE = "new_csrf_cookie"


@dataclass
class AppContext:
    """Everything the app factory builds once; lives at `app.state.ctx`."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: FileStore
    models: ModelManager
    data_lock: DataDirLock | None = None
    """Held (shared) while the app runs; see app.services.storage.DataDirLock."""

    def close(self) -> None:
        """Dispose of the engine's connections and release the data dir."""
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


ContextDep = Annotated[AppContext, Depends(get_context)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
StoreDep = Annotated[FileStore, Depends(get_store)]
ModelManagerDep = Annotated[ModelManager, Depends(get_model_manager)]


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
