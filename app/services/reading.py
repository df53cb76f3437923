"""Reading modes and how long a read took: what each verdict records about the way the case was read.

*Film first* (the default, `CXR_READING_MODE`): the case page opens on the plain film; the AI —
probabilities, heat maps, lung-focus warnings — stays back until the reviewer asks for it (the V key
or "Show AI"), so the film is read before the model's answer can anchor it. *AI first*: everything
at once. Each user may choose their own mode on the account page (`User.reading_mode`; NULL: the
setting).

Timing without trusting the browser's clock: the case page carries a *reading token*, signed with the
service's secret key, naming the prediction, the reviewer, the page's reading mode and the server time
the page was made. The verdict posts it back, with the milliseconds from opening to showing the AI
that the page's script measured. The server then records:

- `reading_mode`: the token's (the mode the page was actually shown in, not one the form claims);
- `opened_at` and `seconds_to_verdict`: from the token's time to the verdict, on the server's clock;
- `ai_revealed` / `ai_revealed_after_s`: AI first → True / 0; film first → False when the script
  reports the AI was never shown, True / seconds when it was; NULL when no script ran (the page then
  shows everything, but nothing measured it).

A token that does not verify, or that names another case or reviewer, is refused (InvalidInputError).
A reveal time that is not a finite number from 0 to the time the case was open (plus a small margin
for the page's own load time, then clamped) is refused too. A token older than `max_age_s` (a session's
length) still saves the verdict, without timing: the figure would say nothing about the read.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from app.config import Settings
from app.models import READING_MODES, User
from app.services.errors import InvalidInputError

NOT_REVEALED = "none"
"""What the page's script posts as `ai_revealed_after_ms` while the AI is still hidden."""
CLOCK_SLACK_MS = 5_000.0
"""How far a reveal time may exceed the server's time since opening (the page loads after it is made)."""
BAD_TOKEN = "the reading token of this form is not valid for this case and reviewer; reload the case and send again"
MODE_LABELS = {"film_first": "Film first", "ai_first": "AI first"}


@dataclass(frozen=True)
class ReadingRecord:
    """What a verdict stores about its read (all None: not known)."""

    reading_mode: str | None = None
    opened_at: datetime | None = None
    seconds_to_verdict: float | None = None
    ai_revealed: bool | None = None
    ai_revealed_after_s: float | None = None


UNKNOWN = ReadingRecord()


def mode_for(*, user: User, settings: Settings) -> str:
    """The reading mode a case page opens in for `user`: their own choice, else the setting."""
    return user.reading_mode if user.reading_mode in READING_MODES else settings.reading_mode


def set_preference(*, session: Session, user: User, mode: str) -> User:
    """Store the user's reading mode ("" or "default": follow the setting). InvalidInputError otherwise."""
    if mode in ("", "default"):
        user.reading_mode = None
    elif mode in READING_MODES:
        user.reading_mode = mode
    else:
        raise InvalidInputError(f"reading mode must be one of {', '.join(READING_MODES)} (or default)")
    session.commit()
    return user


def _sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def issue_token(*, secret: str, user_id: int, prediction_id: int, mode: str, now: datetime | None = None) -> str:
    """`<prediction>.<user>.<mode>.<unix ms>.<signature>`: the case page's proof of when it was opened."""
    if mode not in READING_MODES:
        raise ValueError(f"unknown reading mode {mode!r}")
    ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    payload = f"{prediction_id}.{user_id}.{mode}.{ms}"
    return f"{payload}.{_sign(secret, payload)}"


def _read_token(token: str, *, secret: str, user_id: int, prediction_id: int) -> tuple[str, datetime]:
    parts = token.strip().split(".")
    if len(parts) != 5:
        raise InvalidInputError(BAD_TOKEN)
    pid, uid, mode, ms, signature = parts
    if not hmac.compare_digest(_sign(secret, ".".join(parts[:4])), signature):
        raise InvalidInputError(BAD_TOKEN)
    if pid != str(prediction_id) or uid != str(user_id) or mode not in READING_MODES or not ms.isdigit():
        raise InvalidInputError(BAD_TOKEN)
    return mode, datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _reveal_ms(value: str | float | None) -> float | str | None:
    """The posted reveal time: None (no script), NOT_REVEALED, or a finite number of milliseconds."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip() == NOT_REVEALED:
        return NOT_REVEALED
    try:
        ms = float(value)
    except ValueError:
        raise InvalidInputError(
            f"ai_revealed_after_ms must be a number of milliseconds or '{NOT_REVEALED}', got {value!r}"
        ) from None
    if not math.isfinite(ms) or ms < 0:
        raise InvalidInputError(f"ai_revealed_after_ms must be a finite number ≥ 0, got {value!r}")
    return ms


def record(
    *,
    token: str | None,
    ai_revealed_after_ms: str | float | None,
    secret: str,
    user: User,
    prediction_id: int,
    max_age_s: float,
    now: datetime | None = None,
) -> ReadingRecord:
    """The ReadingRecord of a verdict sent now with this token and reveal time (see the module docstring)."""
    if not token or not token.strip():
        return UNKNOWN
    mode, opened = _read_token(token, secret=secret, user_id=user.id, prediction_id=prediction_id)
    now = now or datetime.now(UTC)
    elapsed = (now - opened).total_seconds()
    if elapsed < -CLOCK_SLACK_MS / 1000:
        raise InvalidInputError(BAD_TOKEN)
    if elapsed > max_age_s:  # a form kept open past a session: the figure would say nothing about the read
        return ReadingRecord(reading_mode=mode)
    elapsed = max(0.0, elapsed)
    if mode == "ai_first":
        return ReadingRecord(mode, opened, elapsed, True, 0.0)
    reveal = _reveal_ms(ai_revealed_after_ms)
    if reveal is None:
        return ReadingRecord(mode, opened, elapsed, None, None)
    if reveal == NOT_REVEALED:
        return ReadingRecord(mode, opened, elapsed, False, None)
    assert isinstance(reveal, float)
    if reveal > elapsed * 1000 + CLOCK_SLACK_MS:
        raise InvalidInputError(
            f"the AI cannot have been shown {reveal / 1000:.1f} s after opening a case open for {elapsed:.1f} s"
        )
    return ReadingRecord(mode, opened, elapsed, True, min(reveal / 1000, elapsed))


def max_age_seconds(settings: Settings) -> float:
    """A reading token's useful life: one session."""
    return timedelta(hours=settings.session_hours).total_seconds()


def open_case(*, settings: Settings, user: User, prediction_id: int, keep: str | None = None) -> tuple[str, str]:
    """(reading mode, reading token) of a case opened now by `user`; `keep`: the token of a form shown
    again (after an error), kept when it is valid so the read's time runs on."""
    if keep:
        try:
            mode, _opened = _read_token(keep, secret=_secret(settings), user_id=user.id, prediction_id=prediction_id)
            return mode, keep
        except InvalidInputError:
            pass
    mode = mode_for(user=user, settings=settings)
    return mode, issue_token(secret=_secret(settings), user_id=user.id, prediction_id=prediction_id, mode=mode)


def verdict_record(
    *, settings: Settings, user: User, prediction_id: int, token: str | None, ai_revealed_after_ms: str | float | None
) -> ReadingRecord:
    """`record` with the service's key and a session's length as the token's useful life."""
    return record(
        token=token,
        ai_revealed_after_ms=ai_revealed_after_ms,
        secret=_secret(settings),
        user=user,
        prediction_id=prediction_id,
        max_age_s=max_age_seconds(settings),
    )


def _secret(settings: Settings) -> str:
    if not settings.secret_key:  # Settings.prepared() always settles one; a bare Settings() has none
        raise RuntimeError("no secret key: use Settings.prepared()")
    return settings.secret_key
