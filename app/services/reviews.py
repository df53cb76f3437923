"""Verdicts (append-only), the review worklist, case history and the verdict export.

Worklist priority, explainably: a result whose top probability is lowest is the one the model is
least sure about, so it is reviewed first (`sort="priority"`: ascending top probability, newest
first among equals). `sort="newest"` orders by upload time. One worklist item is one
(prediction, model) result; "reviewed" means it has at least one verdict from anyone.

Export rows carry what makes a verdict reproducible: the image sha256 (content address of the
original bytes), the model id/name/version, architecture, checkpoint sha256 and CAM method, plus
the probabilities the reviewer saw.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from app.db import MAX_ROW_ID, is_row_id
from app.models import REASON_TAGS, VERDICTS, MLModel, Prediction, PredictionResult, User, Verdict
from app.services.errors import InvalidInputError
from app.services.predictions import get_result
from ml import CLASSES

WorklistSort = Literal["priority", "newest"]
PRIORITY_EXPLANATION = (
    "least-confident first: ascending probability of the predicted class (the model's top probability), "
    "newest first among equals"
)


# --------------------------------------------------------------------------------- verdicts
def add_verdict(
    *,
    session: Session,
    prediction_id: int,
    model_id: int,
    reviewer: User,
    verdict: str,
    reasons: Iterable[str] = (),
    comment: str = "",
    diagnosis: str | None = None,
) -> Verdict:
    """Append a verdict on one (prediction, model) result and commit. Earlier verdicts stay untouched.

    Raises NotFoundError (no such prediction/result) or InvalidInputError (bad verdict/reason/diagnosis).
    """
    if verdict not in VERDICTS:
        raise InvalidInputError(f"verdict must be one of {', '.join(VERDICTS)}")
    reason_list = list(dict.fromkeys(reasons))  # keep order, drop repeats
    unknown = [r for r in reason_list if r not in REASON_TAGS]
    if unknown:
        raise InvalidInputError(f"unknown reason tag(s) {', '.join(unknown)}; allowed: {', '.join(REASON_TAGS)}")
    if diagnosis is not None and diagnosis not in CLASSES:
        raise InvalidInputError(f"diagnosis must be one of {', '.join(CLASSES)}")
    if "\x00" in (comment or ""):  # PostgreSQL text cannot hold it; refuse rather than alter a clinical note
        raise InvalidInputError("the comment contains a NUL character (\\x00); remove it and send again")
    result = get_result(session=session, prediction_id=prediction_id, model_id=model_id)
    row = Verdict(
        result_id=result.id,
        prediction_id=prediction_id,
        model_id=model_id,
        reviewer_id=reviewer.id,
        verdict=verdict,
        reasons=reason_list,
        comment=(comment or "").strip(),
        diagnosis=diagnosis or None,
    )
    session.add(row)
    session.commit()
    return row


def verdict_history(*, session: Session, prediction_id: int) -> list[Verdict]:
    """All verdicts on a prediction (every model, every reviewer), oldest first."""
    return list(session.scalars(select(Verdict).where(Verdict.prediction_id == prediction_id).order_by(Verdict.id)))


def latest_verdict_ids(verdicts: Iterable[Verdict]) -> set[int]:
    """Ids of the verdicts that count: the latest per (result, reviewer)."""
    latest: dict[tuple[int, int], int] = {}
    for v in verdicts:
        key = (v.result_id, v.reviewer_id)
        latest[key] = max(latest.get(key, 0), v.id)
    return set(latest.values())


# --------------------------------------------------------------------------------- worklist
@dataclass
class WorklistItem:
    result: PredictionResult
    prediction: Prediction
    model: MLModel
    verdict_count: int
    latest_verdict: str | None
    """The newest verdict from anyone on this result (approve/reject), None when unreviewed."""


@dataclass
class Worklist:
    items: list[WorklistItem]
    total: int
    limit: int
    offset: int
    sort: str


def worklist(
    *,
    session: Session,
    model_id: int | None = None,
    predicted_class: str | None = None,
    reviewed: bool | None = False,
    sort: WorklistSort = "priority",
    limit: int = 50,
    offset: int = 0,
) -> Worklist:
    """Results to review, filtered and sorted (see the module docstring for 'priority').

    reviewed=False (default): only results without any verdict; True: only reviewed; None: all.
    """
    if predicted_class is not None and predicted_class not in CLASSES:
        raise InvalidInputError(f"predicted_class must be one of {', '.join(CLASSES)}")
    if sort not in ("priority", "newest"):
        raise InvalidInputError("sort must be 'priority' or 'newest'")
    limit = max(1, min(int(limit), 500))
    offset = max(0, min(int(offset), MAX_ROW_ID))  # no table has more rows; larger values fail to bind
    counts = (
        select(Verdict.result_id, func.count(Verdict.id).label("n"), func.max(Verdict.id).label("last_id"))
        .group_by(Verdict.result_id)
        .subquery()
    )
    stmt = (
        select(PredictionResult, func.coalesce(counts.c.n, 0), counts.c.last_id)
        .join(Prediction, Prediction.id == PredictionResult.prediction_id)
        .outerjoin(counts, counts.c.result_id == PredictionResult.id)
    )
    if model_id is not None:
        stmt = stmt.where(PredictionResult.model_id == model_id if is_row_id(model_id) else false())
    if predicted_class is not None:
        stmt = stmt.where(PredictionResult.predicted_class == predicted_class)
    if reviewed is True:
        stmt = stmt.where(counts.c.n.is_not(None))
    elif reviewed is False:
        stmt = stmt.where(counts.c.n.is_(None))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    if sort == "priority":
        stmt = stmt.order_by(PredictionResult.top_probability.asc(), Prediction.id.desc(), PredictionResult.id)
    else:
        stmt = stmt.order_by(Prediction.id.desc(), PredictionResult.id)
    rows = session.execute(stmt.limit(limit).offset(offset)).all()
    last_ids = [last_id for _r, _n, last_id in rows if last_id is not None]
    last_verdicts = (
        dict(session.execute(select(Verdict.id, Verdict.verdict).where(Verdict.id.in_(last_ids))).all())
        if last_ids
        else {}
    )
    items = [
        WorklistItem(
            result=r,
            prediction=r.prediction,
            model=r.model,
            verdict_count=int(n),
            latest_verdict=last_verdicts.get(last_id) if last_id is not None else None,
        )
        for r, n, last_id in rows
    ]
    return Worklist(items=items, total=int(total), limit=limit, offset=offset, sort=sort)


# ----------------------------------------------------------------------------------- export
EXPORT_FIELDS = (
    "verdict_id",
    "created_at",
    "reviewer",
    "verdict",
    "reasons",
    "comment",
    "diagnosis",
    "is_latest",
    "prediction_id",
    "image_sha256",
    "image_format",
    "filename",
    "model_id",
    "model_name",
    "model_version",
    "architecture",
    "checkpoint_sha256",
    "cam_method",
    "predicted_class",
    *(f"p_{c}" for c in CLASSES),
)


def export_rows(*, session: Session) -> list[dict[str, Any]]:
    """Every verdict ever given, oldest first, with what is needed to reproduce it."""
    verdicts = list(session.scalars(select(Verdict).order_by(Verdict.id)))
    latest = latest_verdict_ids(verdicts)
    rows = []
    for v in verdicts:
        r = v.result
        p = r.prediction
        rows.append(
            {
                "verdict_id": v.id,
                "created_at": _iso(v.created_at),
                "reviewer": v.reviewer.username,
                "verdict": v.verdict,
                "reasons": list(v.reasons),
                "comment": v.comment,
                "diagnosis": v.diagnosis,
                "is_latest": v.id in latest,
                "prediction_id": p.id,
                "image_sha256": p.image.sha256,
                "image_format": p.image.format,
                "filename": p.filename,
                "model_id": r.model_id,
                "model_name": r.model.name,
                "model_version": r.model_version,
                "architecture": r.architecture,
                "checkpoint_sha256": r.checkpoint_sha256,
                "cam_method": r.cam_method,
                "predicted_class": r.predicted_class,
                **{f"p_{c}": r.probabilities[c] for c in CLASSES},
            }
        )
    return rows


def export_json(*, session: Session) -> str:
    return json.dumps({"fields": list(EXPORT_FIELDS), "verdicts": export_rows(session=session)}, indent=1)


def export_csv(*, session: Session) -> str:
    """CSV with one row per verdict; reasons joined by ';'. Cells that a spreadsheet would run as a
    formula (leading = + - @) are prefixed with an apostrophe."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in export_rows(session=session):
        out = dict(row)
        out["reasons"] = ";".join(row["reasons"])
        out["is_latest"] = "true" if row["is_latest"] else "false"
        for key in ("comment", "filename"):
            out[key] = _csv_safe(out[key])
        writer.writerow(out)
    return buf.getvalue()


def _csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")
