"""Lung focus as the service stores, flags and queries it (the score itself is `ml.lung_focus`).

Stored per result (migration 0003), threshold-free: `lung_focus` = {class: {score, lung_area, reason}}
and `lung_focus_score` = the predicted class's score. Whether a result is *flagged* is decided when it
is read, from the configured threshold (CXR_LUNG_FOCUS_THRESHOLD), so changing the setting re-flags
every stored result consistently, in the API, the pages, the worklist filter and the export alike:

    flagged = reason is not None or score is None or score < threshold

(`reason`: no positive activation, or no lung found; such a result cannot be vouched for at any
threshold.) In SQL the same rule reads `lung_focus_score IS NULL OR lung_focus_score < threshold`,
because `lung_focus_score` is stored NULL exactly when the predicted class has no meaningful score.

Results stored before lung focus existed have NULL columns: "not computed". They are never flagged
and never "not flagged" either (filters exclude them); they read as `lung_focus: null`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from app.models import PredictionResult
from ml import CLASSES
from ml.lung_focus import LungFocus


@dataclass(frozen=True)
class LungFocusView:
    """One class's lung focus as a reader sees it (the API's `lung_focus` object)."""

    score: float | None
    """Share of the class's positive CAM evidence inside the lungs, 0..1; None: the map has none."""
    lung_area: float
    """Share of the film (of the crop, for lung-crop models) that is lung: the chance level."""
    flagged: bool
    threshold: float
    reason: str | None


def stored_lung_focus(by_class: Mapping[str, LungFocus]) -> dict[str, dict[str, Any]]:
    """What `PredictionResult.lung_focus` holds: the threshold-free part of each class's LungFocus."""
    return {cls: {"score": f.score, "lung_area": f.lung_area, "reason": f.reason} for cls, f in by_class.items()}


def sortable_score(by_class: Mapping[str, LungFocus], cls: str) -> float | None:
    """`PredictionResult.lung_focus_score`: `cls`'s score, or None when it is not meaningful (see module)."""
    focus = by_class[cls]
    return focus.score if focus.reason is None else None


def is_flagged(score: float | None, reason: str | None, threshold: float) -> bool:
    return reason is not None or score is None or score < threshold


def _view(entry: Mapping[str, Any], threshold: float) -> LungFocusView:
    score = entry.get("score")
    reason = entry.get("reason")
    return LungFocusView(
        score=None if score is None else float(score),
        lung_area=float(entry.get("lung_area") or 0.0),
        flagged=is_flagged(score, reason, threshold),
        threshold=threshold,
        reason=reason,
    )


def computed(result: PredictionResult) -> bool:
    return result.lung_mask_sha256 is not None and isinstance(result.lung_focus, dict)


def by_class(result: PredictionResult, threshold: float) -> dict[str, LungFocusView] | None:
    """Every class's lung focus in CLASSES order; None when not computed for this result."""
    if not computed(result):
        return None
    stored: dict[str, Any] = result.lung_focus or {}
    return {c: _view(stored[c], threshold) for c in CLASSES if isinstance(stored.get(c), dict)}


def of_predicted_class(result: PredictionResult, threshold: float) -> LungFocusView | None:
    """The predicted class's lung focus (what flags a result); None when not computed."""
    views = by_class(result, threshold)
    return views.get(result.predicted_class) if views is not None else None


# ------------------------------------------------------------------------------------- SQL
def computed_clause() -> ColumnElement[bool]:
    return PredictionResult.lung_mask_sha256.is_not(None)


def flagged_clause(threshold: float) -> ColumnElement[bool]:
    """SQL: computed and flagged at `threshold` (the same rule as `is_flagged`)."""
    return and_(
        computed_clause(),
        or_(PredictionResult.lung_focus_score.is_(None), PredictionResult.lung_focus_score < threshold),
    )


def not_flagged_clause(threshold: float) -> ColumnElement[bool]:
    """SQL: computed and not flagged at `threshold`."""
    return and_(computed_clause(), PredictionResult.lung_focus_score >= threshold)
