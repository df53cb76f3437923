"""Users, API tokens, browser sessions and login throttling.

Every function is keyword-only, takes the SQLAlchemy `session`, and commits its own small unit of
work (these are short, independent writes: a login, a token issue, a revocation). Account changes
(creation, role, activation, password) are audited in the same transaction; `actor=None` is the
system or the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import security
from app.config import Settings
from app.models import ROLES, ApiToken, LoginAttempt, User, WebSession, utcnow
from app.services import audit
from app.services.errors import ConflictError, InvalidInputError, NotFoundError, ThrottledError

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 8


# --------------------------------------------------------------------------------------- users
def validate_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username or ""):
        raise InvalidInputError(
            "user names are 1-64 characters: letters, digits and . _ @ - (starting with a letter or digit)"
        )
    return username


def validate_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    return password


def count_users(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def get_user_by_name(*, session: Session, username: str) -> User | None:
    if not USERNAME_RE.fullmatch(username or ""):  # no account has such a name (and NUL cannot be queried)
        return None
    return session.scalar(select(User).where(User.username == username))


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def create_user(
    *,
    session: Session,
    username: str,
    password: str,
    role: str = "reviewer",
    must_change_password: bool = False,
    actor: User | None = None,
) -> User:
    """Create and commit an account (audited `user.created`); raises ConflictError if the name is taken."""
    validate_username(username)
    validate_password(password)
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}")
    user = User(
        username=username,
        password_hash=security.hash_password(password),
        role=role,
        must_change_password=must_change_password,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ConflictError(f"user {username!r} already exists") from None
    _audit(session, actor, "user.created", user, role=role)
    session.commit()
    return user


def _audit(session: Session, actor: User | None, action: str, user: User, **details: object) -> None:
    audit.record(
        session=session,
        actor=actor,
        action=action,
        target_type="user",
        target_id=user.id,
        details={"username": user.username, **details},
    )


def set_role(*, session: Session, user: User, role: str, actor: User | None = None) -> None:
    """Change an account's role (audited `user.role_changed` with the old and new role)."""
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}")
    if role == user.role:
        return
    old, user.role = user.role, role
    session.add(user)
    _audit(session, actor, "user.role_changed", user, old=old, new=role)
    session.commit()


def set_password(*, session: Session, user: User, password: str, actor: User | None = None) -> None:
    """Change a password, clear the must-change flag and end the user's other browser sessions.

    Audited: `user.password_changed` when the user changed their own, else `user.password_reset`."""
    validate_password(password)
    user.password_hash = security.hash_password(password)
    user.must_change_password = False
    session.add(user)
    own = actor is not None and actor.id == user.id
    _audit(session, actor, "user.password_changed" if own else "user.password_reset", user)
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.commit()


def set_active(*, session: Session, user: User, active: bool, actor: User | None = None) -> None:
    """Enable/disable an account (audited `user.activated`/`user.deactivated`). Disabling also ends its
    sessions (its tokens stop working too)."""
    if user.active != active:
        _audit(session, actor, "user.activated" if active else "user.deactivated", user)
    user.active = active
    session.add(user)
    if not active:
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.commit()


@dataclass
class BootstrapAdmin:
    username: str
    password: str


def ensure_bootstrap_admin(*, session: Session, settings: Settings) -> BootstrapAdmin | None:
    """On a database without users, create the admin with a random one-time password.

    Returns the credentials exactly once (the caller prints them); None when users already exist.
    The account is flagged `must_change_password` so the UI can ask for a new one.
    """
    if count_users(session=session) > 0:
        return None
    password = security.generate_password()
    try:
        create_user(
            session=session,
            username=settings.bootstrap_admin,
            password=password,
            role="admin",
            must_change_password=True,
        )
    except ConflictError:  # another process created it at the same moment
        return None
    return BootstrapAdmin(settings.bootstrap_admin, password)


# -------------------------------------------------------------------------------------- tokens
@dataclass
class IssuedToken:
    token: str
    """The secret; shown once, never stored."""
    record: ApiToken


def create_api_token(*, session: Session, user: User, label: str | None = None) -> IssuedToken:
    token = security.generate_api_token()
    record = ApiToken(
        user_id=user.id, token_hash=security.token_hash(token), prefix=security.token_display_prefix(token), label=label
    )
    session.add(record)
    session.commit()
    return IssuedToken(token, record)


def list_api_tokens(*, session: Session, user: User | None = None) -> list[ApiToken]:
    stmt = select(ApiToken).order_by(ApiToken.id)
    if user is not None:
        stmt = stmt.where(ApiToken.user_id == user.id)
    return list(session.scalars(stmt))


def revoke_api_token(*, session: Session, token_id_or_prefix: str) -> ApiToken:
    """Revoke one token by numeric id or by its display prefix (`cxr_xxxxxxxx`, unique match required)."""
    ref = token_id_or_prefix.strip()
    if ref.isdigit():
        matches = list(session.scalars(select(ApiToken).where(ApiToken.id == int(ref))))
    else:
        if len(ref) < 6:
            raise InvalidInputError("give a token id or at least 6 characters of its prefix")
        candidates = session.scalars(select(ApiToken).where(ApiToken.revoked_at.is_(None)))
        matches = [t for t in candidates if t.prefix.startswith(ref) or ref.startswith(t.prefix)]
        if len(ref) > security.TOKEN_DISPLAY_PREFIX_LEN:  # a whole token: match exactly by hash
            matches = [t for t in matches if t.token_hash == security.token_hash(ref)]
    if not matches:
        raise NotFoundError(f"no active token matches {ref!r}")
    if len(matches) > 1:
        raise InvalidInputError(f"{ref!r} matches {len(matches)} tokens; use the token id")
    token = matches[0]
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()
    return token


def revoke_all_api_tokens(*, session: Session, user: User) -> int:
    result = session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def user_for_api_token(*, session: Session, token: str) -> User | None:
    """The active user owning a non-revoked token, or None."""
    record = session.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token)))
    if record is None or record.revoked_at is not None or not record.user.active:
        return None
    now = utcnow()
    # Record use at most once a minute: avoids a write per request.
    if record.last_used_at is None or now - record.last_used_at > timedelta(minutes=1):
        record.last_used_at = now
        session.commit()
    return record.user


@dataclass
class CreatedUser:
    user: User
    token: IssuedToken
    generated_password: str | None
    """Set when no password was given: the random one, to show once."""


def create_user_with_token(
    *, session: Session, username: str, role: str = "reviewer", password: str | None = None, actor: User | None = None
) -> CreatedUser:
    """Create an account (random password if none given) and its first API token."""
    generated = None if password else security.generate_password()
    user = create_user(session=session, username=username, password=password or generated or "", role=role, actor=actor)
    token = create_api_token(session=session, user=user, label="issued with the account")
    return CreatedUser(user=user, token=token, generated_password=generated)


# ---------------------------------------------------------------------------- login/sessions
def _throttle_window_start(settings: Settings) -> datetime:
    return utcnow() - timedelta(seconds=settings.login_window_seconds)


def check_login_throttle(*, session: Session, settings: Settings, username: str, ip: str) -> None:
    """Raise ThrottledError when this username+address had too many failures in the window."""
    since = _throttle_window_start(settings)
    failures = list(
        session.scalars(
            select(LoginAttempt.created_at)
            .where(LoginAttempt.username == username.lower(), LoginAttempt.ip == ip, LoginAttempt.created_at >= since)
            .order_by(LoginAttempt.created_at)
        )
    )
    if len(failures) >= settings.login_max_failures:
        oldest_counted = failures[-settings.login_max_failures]
        retry_after = max(
            1, int((oldest_counted + timedelta(seconds=settings.login_window_seconds) - utcnow()).total_seconds()) + 1
        )
        raise ThrottledError(f"too many failed logins; try again in {retry_after} seconds", retry_after)


def authenticate(*, session: Session, settings: Settings, username: str, password: str, ip: str) -> User | None:
    """The user for correct credentials of an active account, else None (and the failure is counted).

    Raises ThrottledError (HTTP 429) before checking the password when the username+address pair has
    `login_max_failures` failures within `login_window_seconds`. A success clears that pair's failures.
    """
    ip = ip or "unknown"
    username = username.replace("\x00", "\ufffd")  # matches no account; PostgreSQL cannot store or compare NUL
    check_login_throttle(session=session, settings=settings, username=username, ip=ip)
    user = get_user_by_name(session=session, username=username)
    ok = security.verify_password(password, user.password_hash if user else None)
    if not ok or user is None or not user.active:
        session.add(LoginAttempt(username=username.lower()[:64], ip=ip[:64]))
        # Forget failures older than the window so the table stays small.
        session.execute(delete(LoginAttempt).where(LoginAttempt.created_at < _throttle_window_start(settings)))
        session.commit()
        return None
    if security.password_needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    session.execute(delete(LoginAttempt).where(LoginAttempt.username == username.lower(), LoginAttempt.ip == ip))
    session.commit()
    return user


@dataclass
class NewWebSession:
    token: str
    """Goes into the session cookie; only its hash is stored."""
    record: WebSession

    @property
    def csrf_token(self) -> str:
        return self.record.csrf_token


def create_session(
    *, session: Session, settings: Settings, user: User, ip: str | None = None, user_agent: str | None = None
) -> NewWebSession:
    token = security.generate_session_token()
    record = WebSession(
        user_id=user.id,
        token_hash=security.token_hash(token),
        csrf_token=security.generate_csrf_token(),
        expires_at=utcnow() + timedelta(hours=settings.session_hours),
        ip=(ip or "")[:64] or None,
        user_agent=(user_agent or "")[:256] or None,
    )
    session.add(record)
    # Expired sessions of anyone are garbage; drop them while we are writing anyway.
    session.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))
    session.commit()
    return NewWebSession(token, record)


def session_for_token(*, session: Session, token: str) -> WebSession | None:
    """The live session for a cookie value (not expired, active user), else None."""
    record = session.scalar(select(WebSession).where(WebSession.token_hash == security.token_hash(token)))
    if record is None or record.expires_at <= utcnow() or not record.user.active:
        return None
    return record


def end_session(*, session: Session, token: str) -> None:
    """Delete the session for this cookie value (logout). Unknown tokens are ignored."""
    session.execute(delete(WebSession).where(WebSession.token_hash == security.token_hash(token)))
    session.commit()
