"""Safe promotion: before a model becomes the one every reviewer's uploads go to, the admin sees its test
figures beside the active model's, and a model that finds clearly fewer films of some class needs a
typed reason.

The rule (`needs_reason`): when the candidate's macro sensitivity (the mean of the per-class
sensitivities, on the split both models record: `test`, else `val`) is more than
`CXR_PROMOTION_MAX_DROP` (5 points) below the active model's, activation needs a non-blank reason;
it goes into the audit entry of the promotion or rollback. When either model records no macro
sensitivity the figures cannot be compared: no reason is required, and the page says so. The rule
holds for the confirmation page, the REST endpoint and `cxr-review models activate` alike, because all
of them call `activate`.

The comparison also carries, where the checkpoint records them, the lung focus (median share of the
predicted class's CAM inside the lungs; share flagged) and the confound figures (share of non-COVID
films called COVID-19; COVID-19 sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.models import CLASS_LABELS, MLModel, User
from app.services import model_registry
from app.services.errors import InvalidInputError, ModelUnavailableError
from ml import CLASSES

SPLITS = ("test", "val")
REASON_MAX_CHARS = 2000


@dataclass(frozen=True)
class Figure:
    """One row of the comparison: its label and each model's value (a share 0..1; None: not recorded)."""

    key: str
    label: str
    candidate: float | None
    active: float | None

    @property
    def difference(self) -> float | None:
        return None if self.candidate is None or self.active is None else self.candidate - self.active


@dataclass
class Comparison:
    candidate: MLModel
    active: MLModel | None
    split: str | None
    """The split whose figures are compared (both models record it); None: no common split."""
    figures: list[Figure] = field(default_factory=list)
    max_drop: float = 0.05

    @property
    def macro_drop(self) -> float | None:
        """How far the candidate's macro sensitivity is below the active one's (positive: worse)."""
        row = next((f for f in self.figures if f.key == "macro_sensitivity"), None)
        return -row.difference if row is not None and row.difference is not None else None

    @property
    def needs_reason(self) -> bool:
        drop = self.macro_drop
        return drop is not None and drop > self.max_drop + 1e-12

    @property
    def comparable(self) -> bool:
        return self.macro_drop is not None


def _split_of(model: MLModel, split: str | None) -> dict[str, Any]:
    report = (model.metrics or {}).get(split) if split else None
    return report if isinstance(report, dict) else {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dig(report: dict[str, Any], *path: str) -> float | None:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return _num(value)


FIGURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("accuracy", "Accuracy", ("accuracy",)),
    ("macro_sensitivity", "Macro sensitivity", ("macro_sensitivity",)),
    *((f"sensitivity_{c}", f"Sensitivity: {CLASS_LABELS[c]}", ("per_class", c, "sensitivity")) for c in CLASSES),
    ("lung_focus_median", "Lung focus: median share inside the lungs", ("lung_focus", "overall", "median")),
    ("lung_focus_flagged", "Lung focus: share flagged", ("lung_focus", "overall", "flagged_share")),
    (
        "non_covid_called_covid19",
        "Confound: non-COVID films called COVID-19",
        ("confound", "all", "non_covid_called_covid19_share"),
    ),
    ("covid19_sensitivity", "Confound: COVID-19 sensitivity", ("confound", "all", "covid19_sensitivity")),
)
"""(key, label, path in a split's report) of every compared figure; a row neither model records is left out."""


def compare(*, session: Session, model_id: int, max_drop: float) -> Comparison:
    """The candidate's figures beside the active model's. NotFoundError for an unknown id."""
    candidate = model_registry.get_model(session=session, model_id=model_id)
    try:
        active: MLModel | None = model_registry.get_active_model(session=session)
    except ModelUnavailableError:
        active = None
    splits = [s for s in SPLITS if _split_of(candidate, s) and (active is None or _split_of(active, s))]
    split = splits[0] if splits else None
    cand, act = _split_of(candidate, split), _split_of(active, split) if active is not None else {}
    figures = [Figure(key, label, _dig(cand, *path), _dig(act, *path)) for key, label, path in FIGURES]
    figures = [f for f in figures if f.candidate is not None or f.active is not None]
    return Comparison(candidate=candidate, active=active, split=split, figures=figures, max_drop=max_drop)


def reason_required_message(c: Comparison) -> str:
    drop = c.macro_drop or 0.0
    return (
        f"model {c.candidate.id}'s macro sensitivity ({c.split} split) is {100 * drop:.1f} points below the active "
        f"model's (more than the {100 * c.max_drop:.0f} allowed without one): give a reason for activating it"
    )


def activate(*, session: Session, model_id: int, actor: User | None, reason: str, max_drop: float) -> MLModel:
    """Activate the model (a promotion or rollback, `model_registry.activate_model`) after the reason
    rule; the reason, and the compared macro sensitivities, go into the audit entry.
    InvalidInputError (422) when a reason is required and blank, or longer than REASON_MAX_CHARS."""
    reason = (reason or "").strip()
    if len(reason) > REASON_MAX_CHARS:
        raise InvalidInputError(f"the reason is longer than {REASON_MAX_CHARS} characters")
    c = compare(session=session, model_id=model_id, max_drop=max_drop)
    if c.needs_reason and not reason:
        raise InvalidInputError(reason_required_message(c))
    details: dict[str, Any] = {
        "split": c.split,
        "macro_sensitivity_drop": c.macro_drop,
        "reason_required": c.needs_reason,
    }
    if reason:
        details["reason"] = reason
    return model_registry.activate_model(session=session, model_id=model_id, actor=actor, details=details)
