"""Review analytics: what the reviewers' own verdicts say about each model version and its warnings.

Per model version (one `models` row):
- `verdicts`: every verdict given (superseded ones included); everything else counts only the verdicts
  that count, the latest per (result, reviewer) (`reviews.latest_verdict_ids`);
- approve / reject counts and shares; the reject reasons (a reject may give several);
- median seconds from opening the case to the verdict, per reading mode (verdicts with a timing);
- agreement between readers: on every result that two or more reviewers judged, the first two readers
  (by their first verdict on it) form a pair of approve/reject calls; Cohen's κ over those pairs with
  its 95 % interval (`ml.metrics.cohen_kappa`);
- how well the lung-focus warning predicts a reject, over the counted verdicts on results with lung
  focus: the AUROC of the flag (flagged = 1) and of the score (1 − lung focus; results whose score is
  not measurable are left out of that one), both by `ml.metrics.auroc`; the share of rejects that were
  warned (flagged) and the share of warned verdicts that were rejects. The flag is taken at the
  service's threshold now (CXR_LUNG_FOCUS_THRESHOLD), as the worklist shows it.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import READING_MODES, REASON_TAGS, MLModel, Verdict
from app.services import lung_focus
from app.services.reviews import latest_verdict_ids
from ml.metrics import auroc, cohen_kappa


@dataclass
class Agreement:
    pairs: int
    observed_agreement: float | None
    kappa: float | None
    kappa_ci95: tuple[float, float] | None
    both_approve: int = 0
    both_reject: int = 0
    differ: int = 0


@dataclass
class WarningFigures:
    """Lung-focus flag vs the reviewer's reject, over counted verdicts on results with lung focus."""

    n: int
    rejects: int
    warned: int
    warned_rejects: int
    auroc_flag: float | None
    auroc_score: float | None
    share_of_rejects_warned: float | None
    share_of_warned_rejected: float | None
    threshold: float


@dataclass
class ModelAnalytics:
    model_id: int
    model_name: str
    model_version: int
    active: bool
    verdicts: int
    counted: int
    approvals: int
    rejects: int
    approve_share: float | None
    reject_share: float | None
    reject_reasons: dict[str, int]
    median_seconds: dict[str, float | None]
    """reading mode → median seconds to the verdict (None: no timed verdict in that mode)."""
    timed: dict[str, int]
    agreement: Agreement
    lung_focus_warning: WarningFigures


@dataclass
class Analytics:
    models: list[ModelAnalytics] = field(default_factory=list)
    lung_focus_threshold: float = 0.5


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def _agreement(counted: list[Verdict], first_seen: dict[tuple[int, int], int]) -> Agreement:
    by_result: dict[int, list[Verdict]] = defaultdict(list)
    for v in counted:
        by_result[v.result_id].append(v)
    pairs: list[tuple[bool, bool]] = []
    for result_id, vs in by_result.items():
        if len(vs) < 2:
            continue
        first, second = sorted(vs, key=lambda v: first_seen[(result_id, v.reviewer_id)])[:2]
        pairs.append((first.verdict == "approve", second.verdict == "approve"))
    k = cohen_kappa(pairs)
    return Agreement(
        pairs=len(pairs),
        observed_agreement=k["observed_agreement"],
        kappa=k["kappa"],
        kappa_ci95=k["ci95"],
        both_approve=sum(a and b for a, b in pairs),
        both_reject=sum(not a and not b for a, b in pairs),
        differ=sum(a != b for a, b in pairs),
    )


def _warning(counted: list[Verdict], threshold: float) -> WarningFigures:
    rows = []
    for v in counted:
        focus = lung_focus.of_predicted_class(v.result, threshold)
        if focus is not None:
            rows.append((focus, v.verdict == "reject"))
    flags = [1.0 if f.flagged else 0.0 for f, _ in rows]
    rejects = [r for _, r in rows]
    scored = [(1.0 - f.score, r) for f, r in rows if f.score is not None]
    warned = sum(f.flagged for f, _ in rows)
    warned_rejects = sum(f.flagged and r for f, r in rows)
    n_rejects = sum(rejects)
    return WarningFigures(
        n=len(rows),
        rejects=n_rejects,
        warned=warned,
        warned_rejects=warned_rejects,
        auroc_flag=auroc(flags, rejects),
        auroc_score=auroc([s for s, _ in scored], [r for _, r in scored]) if scored else None,
        share_of_rejects_warned=_share(warned_rejects, n_rejects),
        share_of_warned_rejected=_share(warned_rejects, warned),
        threshold=threshold,
    )


def _model_figures(model: MLModel, given: list[Verdict], latest: set[int], threshold: float) -> ModelAnalytics:
    counted = [v for v in given if v.id in latest]
    first_seen: dict[tuple[int, int], int] = {}
    for v in given:
        first_seen.setdefault((v.result_id, v.reviewer_id), v.id)
    approvals = sum(v.verdict == "approve" for v in counted)
    rejects = len(counted) - approvals
    reasons = Counter(r for v in counted if v.verdict == "reject" for r in v.reasons)
    times: dict[str, list[float]] = {m: [] for m in READING_MODES}
    for v in counted:
        if v.reading_mode in times and v.seconds_to_verdict is not None:
            times[v.reading_mode].append(v.seconds_to_verdict)
    return ModelAnalytics(
        model_id=model.id,
        model_name=model.name,
        model_version=model.version,
        active=model.active,
        verdicts=len(given),
        counted=len(counted),
        approvals=approvals,
        rejects=rejects,
        approve_share=_share(approvals, len(counted)),
        reject_share=_share(rejects, len(counted)),
        reject_reasons={tag: reasons.get(tag, 0) for tag in REASON_TAGS},
        median_seconds={m: statistics.median(t) if t else None for m, t in times.items()},
        timed={m: len(t) for m, t in times.items()},
        agreement=_agreement(counted, first_seen),
        lung_focus_warning=_warning(counted, threshold),
    )


def review_analytics(*, session: Session, threshold: float) -> Analytics:
    """Every model version with at least one verdict, newest model first (see the module docstring)."""
    verdicts = list(session.scalars(select(Verdict).order_by(Verdict.id)))
    latest = latest_verdict_ids(verdicts)
    by_model: dict[int, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_model[v.model_id].append(v)
    models = {m.id: m for m in session.scalars(select(MLModel).where(MLModel.id.in_(list(by_model))))}
    out = [_model_figures(models[mid], vs, latest, threshold) for mid, vs in sorted(by_model.items(), reverse=True)]
    return Analytics(models=out, lung_focus_threshold=threshold)
