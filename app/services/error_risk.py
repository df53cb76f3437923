"""A result's error risk and warnings as stored and read (`ml.risk` computes them in the per-film pipeline).

Stored per result (migration 0006): `error_risk` (the estimated probability that the predicted class is
wrong, from the model version's own calibration), `error_risk_reason` (why there is none), `warnings`
([{"code", "message"}], most serious first) and `risk_signals` (what they were computed from). Results
stored before error risk existed have NULLs, read as no risk with `STORED_BEFORE` and no warnings; they
are never recomputed behind a reviewer's back.

The worklist's default priority is highest error risk first (`priority_order`); results without an
error risk follow, least confident first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case
from sqlalchemy.sql.elements import SQLCoreOperations

from app.models import Prediction, PredictionResult
from ml.inference import Prediction as ModelOutput
from ml.risk import MESSAGES

STORED_BEFORE = "stored before error risk existed"
PRIORITY_EXPLANATION = (
    "highest error risk first (the estimated probability that the predicted class is wrong, from the model "
    "version's own validation films); results without an error risk follow, least confident first (ascending "
    "probability of the predicted class); newest first among equals"
)


@dataclass(frozen=True)
class RiskView:
    error_risk: float | None
    reason: str | None
    warnings: list[dict[str, str]]
    """[{"code", "message"}], most serious first."""


def stored_columns(out: ModelOutput) -> dict[str, Any]:
    """The PredictionResult columns of one model output's error risk and warnings."""
    return {
        "error_risk": out.error_risk,
        "error_risk_reason": out.error_risk_reason,
        "warnings": [w.to_dict() for w in out.warnings],
        "risk_signals": out.signals.to_dict() if out.signals is not None else None,
    }


def view(result: PredictionResult, *, lung_flagged: bool = False) -> RiskView:
    """The stored error risk and warnings; `lung_flagged`: the result's lung focus is flagged at the service's
    threshold (CXR_LUNG_FOCUS_THRESHOLD), which adds `outside_lungs` when the model's own cut-off did not, so
    a flagged result always says so in its warnings (one rule for the flag wherever it is shown)."""
    if result.warnings is None and result.error_risk is None and result.error_risk_reason is None:
        return RiskView(None, STORED_BEFORE, [])
    warnings = [
        {"code": str(w["code"]), "message": str(w.get("message") or MESSAGES.get(str(w["code"]), w["code"]))}
        for w in result.warnings or []
    ]
    if lung_flagged and all(w["code"] != "outside_lungs" for w in warnings):
        warnings.append({"code": "outside_lungs", "message": MESSAGES["outside_lungs"]})
    return RiskView(result.error_risk, result.error_risk_reason, warnings)


def priority_order() -> tuple[SQLCoreOperations[Any], ...]:
    """ORDER BY of the worklist's priority (module docstring)."""
    return (
        case((PredictionResult.error_risk.is_(None), 1), else_=0),
        PredictionResult.error_risk.desc(),
        PredictionResult.top_probability.asc(),
        Prediction.id.desc(),
        PredictionResult.id,
    )
