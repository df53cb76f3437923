"""Lung focus as the service stores, flags and queries it (the score itself is `ml.lung_focus`).

Stored per result (migration 0003), threshold-free: `lung_focus` = {class: LungFocusScore.to_dict()}
(score, lung_area, reason) and `lung_focus_score` = the predicted class's *meaningful* score
(`LungFocusScore.meaningful`: NULL when there is a `reason`, no positive activation or no lung found).
Whether a result is *flagged* is decided when it is read, at the threshold the caller passes (the
configured CXR_LUNG_FOCUS_THRESHOLD), by the one rule `ml.lung_focus.is_flagged`, so changing the
setting re-flags every stored result consistently, in the API, the pages, the worklist filter and the
export alike. In SQL the same rule reads `lung_focus_score IS NULL OR lung_focus_score < threshold`.

Results stored before lung focus existed have NULL columns: "not computed". They are never flagged
and never "not flagged" either (filters exclude them); they read as `lung_focus: null`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from app.models import PredictionResult
from ml import CLASSES
from ml.lung_focus import LungFocus, LungFocusScore


def stored_lung_focus(by_class: Mapping[str, LungFocusScore]) -> dict[str, dict[str, Any]]:
    """What `PredictionResult.lung_focus` holds: each class's threshold-free score."""
    return {cls: f.to_dict() for cls, f in by_class.items()}


def computed(result: PredictionResult) -> bool:
    return result.lung_mask_sha256 is not None and isinstance(result.lung_focus, dict)


def by_class(result: PredictionResult, threshold: float) -> dict[str, LungFocus] | None:
    """Every class's lung focus at `threshold`, in CLASSES order; None when not computed for this result."""
    if not computed(result):
        return None
    stored: dict[str, Any] = result.lung_focus or {}
    return {c: LungFocusScore.from_dict(stored[c]).at(threshold) for c in CLASSES if isinstance(stored.get(c), dict)}


def of_predicted_class(result: PredictionResult, threshold: float) -> LungFocus | None:
    """The predicted class's lung focus (what flags a result); None when not computed."""
    views = by_class(result, threshold)
    return views.get(result.predicted_class) if views is not None else None


# ------------------------------------------------------------------------------------- SQL
def computed_clause() -> ColumnElement[bool]:
    return PredictionResult.lung_mask_sha256.is_not(None)


def flagged_clause(threshold: float) -> ColumnElement[bool]:
    """SQL: computed and flagged at `threshold` (`ml.lung_focus.is_flagged` on `lung_focus_score`)."""
    return and_(
        computed_clause(),
        or_(PredictionResult.lung_focus_score.is_(None), PredictionResult.lung_focus_score < threshold),
    )


def not_flagged_clause(threshold: float) -> ColumnElement[bool]:
    """SQL: computed and not flagged at `threshold`."""
    return and_(computed_clause(), PredictionResult.lung_focus_score >= threshold)
