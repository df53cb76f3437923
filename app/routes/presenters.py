"""Presentation: ORM rows and service views → the API's reply schemas (cases, verdicts, lung focus, error risk)."""

from __future__ import annotations

from typing import Any

from app import schemas
from app.models import Prediction, Verdict
from app.services import predictions
from app.services.error_risk import RiskView
from ml.lung_focus import LungFocus


def lung_focus_out(view: LungFocus) -> schemas.LungFocusOut:
    return schemas.LungFocusOut(
        score=view.score, lung_area=view.lung_area, flagged=view.flagged, threshold=view.threshold, reason=view.reason
    )


def result_out(v: predictions.ResultView) -> schemas.ResultOut:
    r = v.result
    return schemas.ResultOut(
        model_id=r.model_id,
        model_name=v.model.name,
        model_version=r.model_version,
        checkpoint_sha256=r.checkpoint_sha256,
        architecture=r.architecture,
        probabilities=schemas.Probabilities(**r.probabilities),
        predicted_class=r.predicted_class,  # type: ignore[arg-type]
        cam_method=r.cam_method,
        overlays=v.overlays,
        lung_focus=lung_focus_out(v.lung_focus) if v.lung_focus is not None else None,
        input_box=schemas.InputBoxOut(**v.input_box.as_dict()) if v.input_box is not None else None,
        lung_outline_url=v.lung_outline_url,
        lungseg_sha256=r.lungseg_sha256,
        **risk_fields(v.risk),
    )


def risk_fields(risk: RiskView) -> dict[str, Any]:
    """A result's error risk and warnings as the reply models take them."""
    return {
        "error_risk": risk.error_risk,
        "error_risk_reason": risk.reason,
        "warnings": [schemas.WarningOut(**w) for w in risk.warnings],  # type: ignore[arg-type]
    }


def result_detail_out(v: predictions.ResultView) -> schemas.ResultDetailOut:
    by_class = v.lung_focus_by_class
    return schemas.ResultDetailOut(
        **result_out(v).model_dump(),
        lung_focus_by_class={c: lung_focus_out(f) for c, f in by_class.items()} if by_class is not None else None,
    )


def prediction_out(prediction: Prediction, *, threshold: float) -> schemas.PredictionOut:
    image = prediction.image
    return schemas.PredictionOut(
        id=prediction.id,
        image_sha256=image.sha256,
        image_url=predictions.image_url(image.sha256),
        width=image.width,
        height=image.height,
        format=image.format,
        filename=prediction.filename,
        created_at=prediction.created_at,
        created_by=prediction.created_by.username if prediction.created_by else None,
        results=[result_out(v) for v in predictions.result_views(prediction, threshold=threshold)],
    )


def verdict_out(verdict: Verdict, latest_ids: set[int]) -> schemas.VerdictOut:
    return schemas.VerdictOut(
        id=verdict.id,
        prediction_id=verdict.prediction_id,
        model_id=verdict.model_id,
        reviewer=verdict.reviewer.username,
        verdict=verdict.verdict,  # type: ignore[arg-type]
        reasons=list(verdict.reasons),
        comment=verdict.comment,
        diagnosis=verdict.diagnosis,  # type: ignore[arg-type]
        regions=[schemas.Region.model_validate(r) for r in verdict.regions or []],
        created_at=verdict.created_at,
        is_latest=verdict.id in latest_ids,
        reading_mode=verdict.reading_mode,  # type: ignore[arg-type]
        seconds_to_verdict=verdict.seconds_to_verdict,
        ai_revealed=verdict.ai_revealed,
        ai_revealed_after_s=verdict.ai_revealed_after_s,
    )
