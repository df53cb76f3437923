"""Accounts: logging in and out, one's own password, who am I, and (admins) the user list.

API:   GET /api/v1/me; GET/POST /api/v1/users (admin).
Pages: /login, /logout, /account (reading mode), /account/password;
       /admin/users (admin: create, deactivate, reactivate).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, status
from fastapi.responses import Response

from app import forms, schemas, security
from app.deps import (
    LOGIN_PATH,
    PASSWORD_PATH,
    SESSION_COOKIE,
    AdminPage,
    AdminUser,
    CurrentUser,
    OptionalUser,
    PageCsrf,
    PageRefused,
    PageUser,
    SessionDep,
    SettingsDep,
    SignedInUser,
    clear_session_cookie,
    client_ip,
    set_session_cookie,
)
from app.models import User
from app.routes.templating import render, safe_next, see_other
from app.services import accounts, reading
from app.services.errors import ServiceError, ThrottledError

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)


# ----------------------------------------------------------------------------------- API
@api.get("/me", response_model=schemas.MeOut, responses=schemas.ERRORS)
def me(user: CurrentUser) -> schemas.MeOut:
    return schemas.MeOut(username=user.username, role=user.role, must_change_password=user.must_change_password)


def _user_out(user: User) -> schemas.UserOut:
    return schemas.UserOut(id=user.id, username=user.username, role=user.role, active=user.active)


@api.get("/users", response_model=list[schemas.UserOut], responses=schemas.ERRORS)
def list_users(session: SessionDep, _admin: AdminUser) -> list[schemas.UserOut]:
    return [_user_out(u) for u in accounts.list_users(session=session)]


@api.post(
    "/users", status_code=status.HTTP_201_CREATED, response_model=schemas.UserCreatedOut, responses=schemas.ERRORS
)
def create_user(body: schemas.UserCreateIn, session: SessionDep, admin: AdminUser) -> schemas.UserCreatedOut:
    created = accounts.create_user_with_token(
        session=session, username=body.username, role=body.role, password=body.password, actor=admin
    )
    return schemas.UserCreatedOut(
        **_user_out(created.user).model_dump(), password=created.generated_password, api_token=created.token.token
    )


# --------------------------------------------------------------------------------- login
def _new_session_response(request: Request, session: Any, settings: Any, user: User, location: str) -> Response:
    """303 to `location` with a fresh session cookie for `user`."""
    new = accounts.create_session(
        session=session,
        settings=settings,
        user=user,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    response = see_other(location)
    set_session_cookie(response, new.token, settings)
    return response


@pages.get(LOGIN_PATH, response_model=None)
def login_form(request: Request, user: OptionalUser, next: str = "/") -> Response:
    if user is not None:
        return see_other(safe_next(next))
    return render(request, "login.html", user=None, next=safe_next(next), username="", error=None)


@pages.post(LOGIN_PATH, response_model=None)
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _csrf: PageCsrf,
    form: Annotated[forms.LoginForm, Form()],
) -> Response:
    target = safe_next(form.next)
    username, password = form.username, form.password

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
    return _new_session_response(
        request, session, settings, user, PASSWORD_PATH if user.must_change_password else target
    )


@pages.post("/logout", response_model=None)
def logout(
    request: Request, session: SessionDep, settings: SettingsDep, _user: SignedInUser, _csrf: PageCsrf
) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        accounts.end_session(session=session, token=token)
    response = see_other(LOGIN_PATH)
    clear_session_cookie(response, settings)
    return response


def _account_page(request: Request, settings: Any, user: User, *, status_code: int = 200, **context: Any) -> Response:
    return render(
        request,
        "account.html",
        user=user,
        status_code=status_code,
        mode=reading.mode_for(user=user, settings=settings),
        default_mode=settings.reading_mode,
        mode_labels=reading.MODE_LABELS,
        **{"saved": False, "error": None, **context},
    )


@pages.get("/account", response_model=None)
def account_page(request: Request, settings: SettingsDep, user: PageUser) -> Response:
    return _account_page(request, settings, user)


@pages.post("/account/reading-mode", response_model=None)
def reading_mode_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    _csrf: PageCsrf,
    form: Annotated[forms.ReadingModeForm, Form()],
) -> Response:
    """Film first or AI first for this user's case pages ('' follows the service's setting)."""
    try:
        reading.set_preference(session=session, user=user, mode=form.reading_mode)
    except ServiceError as exc:
        return _account_page(request, settings, user, status_code=exc.status_code, error=str(exc))
    return _account_page(request, settings, user, saved=True)


@pages.get(PASSWORD_PATH, response_model=None)
def password_form(request: Request, user: PageUser) -> Response:
    return render(request, "password.html", user=user, error=None)


@pages.post(PASSWORD_PATH, response_model=None)
def password_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    _csrf: PageCsrf,
    form: Annotated[forms.PasswordForm, Form()],
) -> Response:
    def again(status_code: int, error: str) -> Response:
        return render(request, "password.html", user=user, status_code=status_code, error=error)

    if form.new != form.repeat:
        return again(status.HTTP_422_UNPROCESSABLE_CONTENT, "The two new passwords differ.")
    try:
        checked = accounts.authenticate(
            session=session, settings=settings, username=user.username, password=form.current, ip=client_ip(request)
        )
        if checked is None:
            return again(status.HTTP_401_UNAUTHORIZED, "The current password is wrong.")
        # Ends every session of the user; audited as their own password change.
        accounts.set_password(session=session, user=checked, password=form.new, actor=checked)
    except ServiceError as exc:
        return again(exc.status_code, str(exc))
    return _new_session_response(request, session, settings, checked, "/")


# --------------------------------------------------------------------------------- users
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


@pages.get("/admin/users", response_model=None)
def users_page(request: Request, session: SessionDep, admin: AdminPage) -> Response:
    return _users_page(request, session, admin)


@pages.post("/admin/users", response_model=None)
def user_create(
    request: Request,
    session: SessionDep,
    admin: AdminPage,
    _csrf: PageCsrf,
    form: Annotated[forms.UserForm, Form()],
) -> Response:
    """Create an account. Without a password one is generated and shown once; either way the new user
    must choose their own password at first login."""
    generated = None if form.password else security.generate_password()
    try:
        created = accounts.create_user(
            session=session,
            username=form.username.strip(),
            password=form.password or generated or "",
            role=form.role,
            must_change_password=True,
            actor=admin,
        )
    except ServiceError as exc:
        return _users_page(
            request,
            session,
            admin,
            status_code=exc.status_code,
            error=str(exc),
            form={"username": form.username, "role": form.role},
        )
    return _users_page(
        request,
        session,
        admin,
        status_code=201,
        created={"username": created.username, "role": created.role, "password": generated},
    )


def _managed_user(username: str, session: SessionDep, admin: AdminPage) -> User:
    """The account named in the path, for an admin's change; an unknown name is the 404 page."""
    target = accounts.get_user_by_name(session=session, username=username)
    if target is None:
        raise PageRefused(status.HTTP_404_NOT_FOUND, "No such user", f"user {username!r} not found", user=admin)
    return target


ManagedUser = Annotated[User, Depends(_managed_user)]


@pages.post("/admin/users/{username}/active", response_model=None)
def user_set_active(
    request: Request,
    session: SessionDep,
    admin: AdminPage,
    _csrf: PageCsrf,
    target: ManagedUser,
    form: Annotated[forms.ActiveForm, Form()],
) -> Response:
    enable = form.active == "true"
    if target.id == admin.id and not enable:
        return _users_page(request, session, admin, status_code=422, error="You cannot deactivate your own account.")
    accounts.set_active(session=session, user=target, active=enable, actor=admin)
    return see_other("/admin/users")


@pages.post("/admin/users/{username}/role", response_model=None)
def user_set_role(
    request: Request,
    session: SessionDep,
    admin: AdminPage,
    _csrf: PageCsrf,
    target: ManagedUser,
    form: Annotated[forms.RoleForm, Form()],
) -> Response:
    if target.id == admin.id:
        return _users_page(request, session, admin, status_code=422, error="You cannot change your own role.")
    try:
        accounts.set_role(session=session, user=target, role=form.role, actor=admin)
    except ServiceError as exc:
        return _users_page(request, session, admin, status_code=exc.status_code, error=str(exc))
    return see_other("/admin/users")


router = APIRouter()
router.include_router(api)
router.include_router(pages)
