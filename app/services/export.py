"""The verdict export (CSV and JSON): one row per verdict, with what makes it reproducible and how it
was read.

Rows carry the image sha256 (content address of the original bytes), the model id/name/version,
architecture, checkpoint sha256 and CAM method, the probabilities and the lung focus (score, and
flagged at the threshold given) the reviewer saw, and the read itself: the reading mode, seconds from
opening the case to the verdict, whether and when the AI was shown before it (app.services.reading;
empty where not known).

Blind reading holds here too: a reviewer's export has their own verdicts and others' only on the
results they have reviewed themselves (`reviews.visible_verdicts`); an admin's has every verdict.
Filters (`ExportFilter`): a date range (on the verdict's time, UTC, both ends included), a reviewer,
a model, and the latest verdict per reviewer and result only.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import is_row_id
from app.models import User, Verdict
from app.services import error_risk, lung_focus
from app.services.errors import InvalidInputError
from app.services.reviews import latest_verdict_ids, visible_verdicts
from ml import CLASSES

EXPORT_FIELDS = (
    "verdict_id",
    "created_at",
    "reviewer",
    "verdict",
    "reasons",
    "comment",
    "diagnosis",
    "regions",
    "is_latest",
    "reading_mode",
    "opened_at",
    "seconds_to_verdict",
    "ai_revealed",
    "ai_revealed_after_s",
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
    "lung_focus_score",
    "lung_focus_flagged",
    "lung_focus_threshold",
    "lungseg_sha256",
    "error_risk",
    "warnings",
)


@dataclass(frozen=True)
class ExportFilter:
    """Which verdicts to export (None: no restriction)."""

    since: date | None = None
    until: date | None = None
    reviewer: str | None = None
    model_id: int | None = None
    latest_only: bool = False

    def check(self) -> ExportFilter:
        if self.since and self.until and self.since > self.until:
            raise InvalidInputError(f"the date range is empty: from {self.since} is after to {self.until}")
        if self.model_id is not None and not is_row_id(self.model_id):
            raise InvalidInputError(f"model must be a model id, got {self.model_id}")
        return self


NO_FILTER = ExportFilter()


def _selected(session: Session, viewer: User | None, filters: ExportFilter) -> tuple[list[Verdict], set[int]]:
    stmt = select(Verdict).order_by(Verdict.id)
    if filters.model_id is not None:
        stmt = stmt.where(Verdict.model_id == filters.model_id)
    if filters.since is not None:
        stmt = stmt.where(Verdict.created_at >= datetime.combine(filters.since, time.min, tzinfo=UTC))
    if filters.until is not None:
        stmt = stmt.where(
            Verdict.created_at < datetime.combine(filters.until + timedelta(days=1), time.min, tzinfo=UTC)
        )
    verdicts = list(session.scalars(stmt))
    # `is_latest` is the latest of all the reviewer's verdicts on the result, not of the date range's.
    everything = list(session.scalars(select(Verdict))) if filters != NO_FILTER else verdicts
    latest = latest_verdict_ids(everything)
    if viewer is not None:
        allowed = {v.id for v in visible_verdicts(viewer, everything)}
        verdicts = [v for v in verdicts if v.id in allowed]
    if filters.reviewer:
        verdicts = [v for v in verdicts if v.reviewer.username == filters.reviewer]
    if filters.latest_only:
        verdicts = [v for v in verdicts if v.id in latest]
    return verdicts, latest


def export_rows(
    *, session: Session, threshold: float, viewer: User | None = None, filters: ExportFilter = NO_FILTER
) -> list[dict[str, Any]]:
    """The verdicts `viewer` may see (None: all) that pass `filters`, oldest first, with what is needed
    to reproduce them. The lung focus is the predicted class's, flagged at `threshold`; null/empty for
    results stored without lung focus."""
    verdicts, latest = _selected(session, viewer, filters.check())
    rows = []
    for v in verdicts:
        r = v.result
        p = r.prediction
        focus = lung_focus.of_predicted_class(r, threshold)
        flagged = focus is not None and focus.flagged
        rows.append(
            {
                "verdict_id": v.id,
                "created_at": _iso(v.created_at),
                "reviewer": v.reviewer.username,
                "verdict": v.verdict,
                "reasons": list(v.reasons),
                "comment": v.comment,
                "diagnosis": v.diagnosis,
                "regions": list(v.regions or []),
                "is_latest": v.id in latest,
                "reading_mode": v.reading_mode,
                "opened_at": _iso(v.opened_at) if v.opened_at else None,
                "seconds_to_verdict": _round(v.seconds_to_verdict),
                "ai_revealed": v.ai_revealed,
                "ai_revealed_after_s": _round(v.ai_revealed_after_s),
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
                "lung_focus_score": focus.score if focus is not None else None,
                "lung_focus_flagged": focus.flagged if focus is not None else None,
                "lung_focus_threshold": threshold if focus is not None else None,
                "lungseg_sha256": r.lungseg_sha256,
                "error_risk": r.error_risk,
                "warnings": [w["code"] for w in error_risk.view(r, lung_flagged=flagged).warnings],
            }
        )
    return rows


def export_json(
    *, session: Session, threshold: float, viewer: User | None = None, filters: ExportFilter = NO_FILTER
) -> str:
    rows = export_rows(session=session, threshold=threshold, viewer=viewer, filters=filters)
    return json.dumps({"fields": list(EXPORT_FIELDS), "verdicts": rows}, indent=1)


def export_csv(
    *, session: Session, threshold: float, viewer: User | None = None, filters: ExportFilter = NO_FILTER
) -> str:
    """CSV with one row per verdict; reasons joined by ';'. Cells that a spreadsheet would run as a
    formula (leading = + - @) are prefixed with an apostrophe. Unknown values (lung focus of a result
    stored without it, the timing of an older verdict): empty cells."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in export_rows(session=session, threshold=threshold, viewer=viewer, filters=filters):
        out = dict(row)
        out["reasons"] = ";".join(row["reasons"])
        out["warnings"] = ";".join(row["warnings"])
        out["regions"] = json.dumps(row["regions"]) if row["regions"] else ""
        for key in ("is_latest", "lung_focus_flagged", "ai_revealed"):
            if row[key] is not None:
                out[key] = "true" if row[key] else "false"
        for key in ("comment", "filename"):
            out[key] = _csv_safe(out[key])
        writer.writerow(out)
    return buf.getvalue()


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")
