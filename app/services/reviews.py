"""Verdicts (append-only), the review worklist and case history (the export: app.services.export).

Worklist priority, explainably: the result most likely to be wrong is reviewed first (`sort="priority"`:
descending error risk, `app.services.error_risk`; results without one follow by ascending top
probability, newest first among equals). `sort="newest"` orders by upload time. `sort="flagged"` puts the results whose
lung focus is flagged (most heat-map evidence outside the lungs, see app.services.lung_focus) first,
then everything else, each group in priority order. One worklist item is one (prediction, model)
result; "reviewed" means it has at least one verdict from anyone.

A verdict may carry boxes (`regions`) the reviewer drew on the film: "wrong_evidence" (where the model
looked and should not: text, a device, outside the lungs; a rejection's reason made exact) and
"finding" (where the finding really is). Boxes are fractions of the film, `[x0, y0, x1, y1]` with
0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1; retraining with reviewed uploads turns them into forbidden and
allowed regions of the explanation loss (`app.services.training_data`, `ml.explanation`).

Blind reading: a reviewer sees other reviewers' verdicts on a model's result only once their own
verdict on it is in (`visible_verdicts`), on the pages, in the API and in the export, so nobody
anchors on a colleague's read; admins see every verdict. The worklist shows a reviewer the latest
verdict of a result only when it is visible to them (its count of verdicts stays: "reviewed by
someone" is what the worklist's filter is about).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import case, false, func, or_, select
from sqlalchemy.orm import Session

from app.db import MAX_ROW_ID, is_row_id
from app.models import REASON_TAGS, VERDICTS, Assignment, Image, MLModel, Prediction, PredictionResult, User, Verdict
from app.services import error_risk, lung_focus
from app.services.errors import InvalidInputError
from app.services.predictions import get_result
from app.services.reading import UNKNOWN, ReadingRecord
from ml import CLASSES
from ml.data import REGION_KINDS, Region
from ml.lung_focus import LungFocus

MAX_REGIONS = 20
REJECT_NEEDS_REASON = (
    "a reject needs at least one reason: tick what is wrong with the region (or 'other' with a comment)"
)
OTHER_NEEDS_COMMENT = "the reason 'other' needs a comment that says what is wrong with the region"
WorklistSort = Literal["priority", "newest", "flagged"]
WORKLIST_SORTS: tuple[str, ...] = ("priority", "newest", "flagged")
PRIORITY_EXPLANATION = error_risk.PRIORITY_EXPLANATION
FLAGGED_EXPLANATION = (
    "flagged first: results whose heat map has most of its evidence outside the lungs (lung focus below the "
    "threshold), then the rest (including results without lung focus), each in priority order"
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
    regions: Iterable[Any] = (),
    reading: ReadingRecord = UNKNOWN,
) -> Verdict:
    """Append a verdict on one (prediction, model) result and commit. Earlier verdicts stay untouched.
    `reading`: how the case was read (app.services.reading.record); the seconds to the verdict are
    counted to now.

    Raises NotFoundError (no such prediction/result) or InvalidInputError (bad verdict/reason/diagnosis,
    or a region that is not a {"kind", "box"} of `check_regions`).
    """
    if verdict not in VERDICTS:
        raise InvalidInputError(f"verdict must be one of {', '.join(VERDICTS)}")
    reason_list = list(dict.fromkeys(reasons))  # keep order, drop repeats
    unknown = [r for r in reason_list if r not in REASON_TAGS]
    if unknown:
        raise InvalidInputError(f"unknown reason tag(s) {', '.join(unknown)}; allowed: {', '.join(REASON_TAGS)}")
    if verdict == "reject" and not reason_list:
        raise InvalidInputError(REJECT_NEEDS_REASON)
    if verdict == "reject" and "other" in reason_list and not (comment or "").strip():
        raise InvalidInputError(OTHER_NEEDS_COMMENT)
    if diagnosis is not None and diagnosis not in CLASSES:
        raise InvalidInputError(f"diagnosis must be one of {', '.join(CLASSES)}")
    if "\x00" in (comment or ""):  # PostgreSQL text cannot hold it; refuse rather than alter a clinical note
        raise InvalidInputError("the comment contains a NUL character (\\x00); remove it and send again")
    boxes = check_regions(regions, verdict=verdict)
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
        regions=boxes,
        reading_mode=reading.reading_mode,
        opened_at=reading.opened_at,
        seconds_to_verdict=reading.seconds_to_verdict,
        ai_revealed=reading.ai_revealed,
        ai_revealed_after_s=reading.ai_revealed_after_s,
    )
    session.add(row)
    session.flush()
    # A result that went to the PACS gets an amended SR with this verdict, queued in the same commit.
    from app.pacs.outbox import enqueue_amended_sr

    enqueue_amended_sr(session=session, verdict=row)
    session.commit()
    return row


def check_regions(regions: Iterable[Any], *, verdict: str) -> list[dict[str, Any]]:
    """Reviewer boxes as stored: [{"kind", "box": [x0, y0, x1, y1]}]. InvalidInputError for anything else:
    an unknown kind, a box that is not four numbers with 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1, more than
    MAX_REGIONS boxes, or "wrong_evidence" on an approval (approving says the evidence is right)."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(regions):
        kind = item.get("kind") if isinstance(item, dict) else None
        box = item.get("box") if isinstance(item, dict) else None
        if kind not in REGION_KINDS:
            raise InvalidInputError(f"region {i + 1}: kind must be one of {', '.join(REGION_KINDS)}")
        if not (
            isinstance(box, list | tuple)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        ):
            raise InvalidInputError(
                f"region {i + 1}: box must be four numbers [x0, y0, x1, y1] (fractions of the film)"
            )
        try:
            region = Region(kind, (float(box[0]), float(box[1]), float(box[2]), float(box[3])))
        except ValueError as exc:
            raise InvalidInputError(f"region {i + 1}: {exc}") from None
        if kind == "wrong_evidence" and verdict == "approve":
            raise InvalidInputError(f"region {i + 1}: 'wrong evidence' boxes go with a rejection, not an approval")
        out.append(region.as_dict())
    if len(out) > MAX_REGIONS:
        raise InvalidInputError(f"at most {MAX_REGIONS} regions per verdict, got {len(out)}")
    return out


def regions_from_form(text: str) -> list[Any]:
    """The case page's `regions` field (the JSON list the page's script writes; blank: none), unchecked;
    InvalidInputError when it is not a JSON list."""
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise InvalidInputError("the drawn regions could not be read; draw them again")
    return value


def verdict_history(*, session: Session, prediction_id: int) -> list[Verdict]:
    """All verdicts on a prediction (every model, every reviewer), oldest first."""
    return list(session.scalars(select(Verdict).where(Verdict.prediction_id == prediction_id).order_by(Verdict.id)))


def visible_verdicts(viewer: User, verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Blind reading: the verdicts `viewer` may see — all for an admin; for a reviewer their own, and
    others' on the results (prediction, model) they have given a verdict on themselves."""
    verdicts = list(verdicts)
    if viewer.is_admin:
        return verdicts
    reviewed = {v.result_id for v in verdicts if v.reviewer_id == viewer.id}
    return [v for v in verdicts if v.reviewer_id == viewer.id or v.result_id in reviewed]


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
    lung_focus: LungFocus | None = None
    """The predicted class's lung focus at the worklist's threshold; None: not computed."""
    risk: error_risk.RiskView | None = None


@dataclass
class Worklist:
    items: list[WorklistItem]
    total: int
    limit: int
    offset: int
    sort: str
    threshold: float


def worklist(
    *,
    session: Session,
    model_id: int | None = None,
    predicted_class: str | None = None,
    reviewed: bool | None = False,
    flagged: bool | None = None,
    sort: WorklistSort = "priority",
    limit: int = 50,
    offset: int = 0,
    threshold: float,
    search: str | None = None,
    viewer: User | None = None,
    assigned_to: int | None = None,
) -> Worklist:
    """Results to review, filtered and sorted (see the module docstring for 'priority' and 'flagged').

    search: a case id (digits), a file name (or part of it, any case) or an image sha256 prefix (at least
    4 hex digits); any result matching one of them. viewer: a reviewer sees a result's latest verdict
    only when blind reading lets them (None: shown). assigned_to: only results assigned to that user
    (app.services.assignments) that they have not given a verdict on yet.

    reviewed=False (default): only results without any verdict; True: only reviewed; None: all.
    flagged=True: only results whose lung focus is flagged at `threshold`; False: only those computed and
    not flagged; None: all (results without lung focus match neither True nor False).
    """
    if predicted_class is not None and predicted_class not in CLASSES:
        raise InvalidInputError(f"predicted_class must be one of {', '.join(CLASSES)}")
    if sort not in WORKLIST_SORTS:
        raise InvalidInputError("sort must be 'priority', 'newest' or 'flagged'")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"the lung-focus threshold must be from 0 to 1, got {threshold}")
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
    if search and search.strip():
        stmt = stmt.where(_search_clause(search.strip()))
    if assigned_to is not None:  # assigned to them and not yet read by them
        mine = select(Assignment.result_id).where(Assignment.reviewer_id == assigned_to)
        done = select(Verdict.result_id).where(Verdict.reviewer_id == assigned_to)
        stmt = stmt.where(PredictionResult.id.in_(mine), PredictionResult.id.not_in(done))
    if flagged is True:
        stmt = stmt.where(lung_focus.flagged_clause(threshold))
    elif flagged is False:
        stmt = stmt.where(lung_focus.not_flagged_clause(threshold))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    priority = error_risk.priority_order()
    if sort == "flagged":
        stmt = stmt.order_by(case((lung_focus.flagged_clause(threshold), 0), else_=1), *priority)
    elif sort == "priority":
        stmt = stmt.order_by(*priority)
    else:
        stmt = stmt.order_by(Prediction.id.desc(), PredictionResult.id)
    rows = session.execute(stmt.limit(limit).offset(offset)).all()
    last_ids = [last_id for _r, _n, last_id in rows if last_id is not None]
    last_verdicts = (
        dict(session.execute(select(Verdict.id, Verdict.verdict).where(Verdict.id.in_(last_ids))).all())
        if last_ids
        else {}
    )
    blind = viewer is not None and not viewer.is_admin
    seen = _reviewed_by(session, viewer, [r.id for r, _n, _l in rows]) if blind and viewer else set()
    items = [
        WorklistItem(
            result=r,
            prediction=r.prediction,
            model=r.model,
            verdict_count=int(n),
            latest_verdict=last_verdicts.get(last_id) if last_id is not None and (not blind or r.id in seen) else None,
            lung_focus=(focus := lung_focus.of_predicted_class(r, threshold)),
            risk=error_risk.view(r, lung_flagged=focus is not None and focus.flagged),
        )
        for r, n, last_id in rows
    ]
    return Worklist(items=items, total=int(total), limit=limit, offset=offset, sort=sort, threshold=threshold)


def _search_clause(text: str) -> Any:
    """Case id, file name (substring, case-insensitive) or image sha256 prefix (≥ 4 hex digits)."""
    needle = "".join(c for c in text if c >= " " and c != "\x7f").lstrip("#")  # no NUL etc. (PostgreSQL refuses them)
    like = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    clauses: list[Any] = [func.lower(Prediction.filename).like(f"%{like.lower()}%", escape="\\")]
    if needle.isdigit() and is_row_id(int(needle)):
        clauses.append(Prediction.id == int(needle))
    hexed = needle.lower()
    if len(hexed) >= 4 and all(c in "0123456789abcdef" for c in hexed):
        sha = select(Image.id).where(Image.sha256.like(f"{hexed}%"))
        clauses.append(Prediction.image_id.in_(sha))
    return or_(*clauses)


def _reviewed_by(session: Session, viewer: User, result_ids: list[int]) -> set[int]:
    if not result_ids:
        return set()
    stmt = select(Verdict.result_id).where(Verdict.reviewer_id == viewer.id, Verdict.result_id.in_(result_ids))
    return set(session.scalars(stmt))
