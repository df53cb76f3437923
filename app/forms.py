"""What the browser pages' forms post (besides `csrf_token`) and their links ask for.

Read leniently: a missing or unusable value is its default, so the page, never a JSON 422, tells the user
what is wrong. The REST API's bodies and replies are in `app.schemas`.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from app.db import MAX_ROW_ID
from app.schemas import ClassName


def _lenient_id(value: Any) -> int | None:
    """An id or offset in a page's query or form: decimal digits → int, anything else → None."""
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.strip().isdecimal() else None


def _or_default(default: Any) -> WrapValidator:
    """A value the field's type refuses becomes `default`."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            return default

    return WrapValidator(validate)


LenientId = Annotated[int | None, BeforeValidator(_lenient_id)]


class CaseQuery(BaseModel):
    """The case page's query: which model's result, which class's heat map, which view, and the verdict
    just saved (ids that are not numbers are ignored; the page checks the rest against the case)."""

    model: LenientId = None
    cls: str | None = None
    view: str | None = None
    saved: LenientId = None


class WorklistQuery(BaseModel):
    """The worklist page's filters (the API's `GET /predictions` parameters, by the page's names);
    an unknown value is the default: all models and classes, waiting for review, priority order."""

    model: LenientId = None
    cls: Annotated[ClassName | None, _or_default(None)] = None
    reviewed: Annotated[Literal["no", "yes", "any"], _or_default("no")] = "no"
    flagged: Annotated[Literal["any", "yes", "no"], _or_default("any")] = "any"
    sort: Annotated[Literal["priority", "newest", "flagged"], _or_default("priority")] = "priority"
    q: Annotated[str, _or_default("")] = Field("", max_length=200)  # case id, file name or sha256 prefix
    mine: Annotated[Literal["", "assigned"], _or_default("")] = ""
    offset: LenientId = None


# A day as text (YYYY-MM-DD), not the numbers pydantic's lax `date` takes as well.
Day = Annotated[date, BeforeValidator(lambda v: date.fromisoformat(v) if isinstance(v, str) and v else v)]


class ExportQuery(BaseModel):
    """Export filters (the export page's form and GET /verdicts): UTC days, both ends included; a blank
    field (the page's "any") is no filter."""

    format: Literal["csv", "json"] = "json"
    since: Day | Literal[""] | None = Field(None, description="first day (YYYY-MM-DD)")
    until: Day | Literal[""] | None = Field(None, description="last day (YYYY-MM-DD)")
    reviewer: str | None = Field(None, max_length=64)
    model: Annotated[int, Field(ge=1, le=MAX_ROW_ID)] | Literal[""] | None = None
    latest_only: bool = Field(False, description="only the latest verdict per reviewer and result")


class ReadingModeForm(BaseModel):
    reading_mode: str = Field("", description="film_first, ai_first, or '' (the service's setting)")


class ActivateForm(BaseModel):
    reason: str = ""
    confirm: str = ""  # "yes" from the confirmation page; anything else shows it
    back: str = ""


class AssignForm(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    prediction_id: LenientId = None
    model_id: LenientId = None
    reviewer: str = ""
    back: str = ""


class LoginForm(BaseModel):
    username: str = ""
    password: str = ""
    next: str = "/"


class PasswordForm(BaseModel):
    current: str = ""
    new: str = ""
    repeat: str = ""


class UserForm(BaseModel):
    username: str = ""
    role: str = "reviewer"
    password: str = ""


class ActiveForm(BaseModel):
    active: str = Field("", description="'true' enables the account, anything else disables it")


class RoleForm(BaseModel):
    role: str = Field("", description="the new role: reviewer or admin")


class VerdictForm(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: LenientId = None
    verdict: str = ""
    reasons: list[str] = Field(default_factory=list)
    comment: str = ""
    diagnosis: str = ""
    regions: str = ""
    """The boxes drawn on the case page, as the JSON the API takes (set by static/js/review.js)."""
    reading_token: str = ""
    ai_revealed_after_ms: str = ""
    """Set by static/js/reading.js: 'none' while the AI is hidden, else milliseconds to showing it."""
