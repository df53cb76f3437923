"""Classification metrics as the paper reports them.

All rates are fractions in [0, 1]. A rate whose denominator is zero (a class with no images in the
evaluated set) is `None`, never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ml import CLASSES


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = len(CLASSES)) -> np.ndarray:
    """Rows are the true class, columns the predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    return cm


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def error_ci95(errors: int, n: int) -> tuple[float, float] | None:
    """The paper's 95% confidence interval of the error rate: e ± 1.96·sqrt(e(1−e)/n), clipped to [0, 1]."""
    if n <= 0:
        return None
    e = errors / n
    half = 1.96 * math.sqrt(e * (1.0 - e) / n)
    return (max(0.0, e - half), min(1.0, e + half))


def report_from_confusion(cm: np.ndarray, classes: Sequence[str] = CLASSES) -> dict[str, Any]:
    """Per-class sensitivity, specificity, precision, F1 and support, accuracy, macro sensitivity, error CI.

    `macro_sensitivity` averages the sensitivities of the classes present in the data (support > 0).
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    per_class: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        fn = int(cm[i, :].sum() - tp)
        fp = int(cm[:, i].sum() - tp)
        tn = n - tp - fn - fp
        sens = _ratio(tp, tp + fn)
        prec = _ratio(tp, tp + fp)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        per_class[name] = {
            "sensitivity": sens,
            "specificity": _ratio(tn, tn + fp),
            "precision": prec,
            "f1": f1,
            "support": tp + fn,
        }
    correct = int(np.trace(cm))
    present = [v["sensitivity"] for v in per_class.values() if v["support"]]
    ci = error_ci95(n - correct, n)
    return {
        "n": n,
        "per_class": per_class,
        "accuracy": _ratio(correct, n),
        "macro_sensitivity": float(np.mean(present)) if present else None,  # type: ignore[arg-type]
        "error_ci95": list(ci) if ci else None,
        "confusion_matrix": cm.tolist(),
    }


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str] = CLASSES
) -> dict[str, Any]:
    return report_from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)


def wilson_ci95(successes: int, n: int) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion. Unlike the normal approximation it does not collapse
    to a single point at 0 % or 100 % (3 of 3 films found is 44–100 %, not 100–100 %)."""
    if n <= 0:
        return None
    z = 1.959964
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def with_class_ci(report: dict[str, Any]) -> dict[str, Any]:
    """Adds `sensitivity_ci95` per class (Wilson interval over that class's films) to `per_class` and
    to each source's breakdown."""
    out = dict(report)
    per_class = {}
    for cls, row in (report.get("per_class") or {}).items():
        support = int(row.get("support") or 0)
        sens = row.get("sensitivity")
        ci = wilson_ci95(round(sens * support), support) if sens is not None and support else None
        per_class[cls] = {**row, "sensitivity_ci95": list(ci) if ci else None}
    out["per_class"] = per_class
    if isinstance(report.get("by_source"), dict):
        out["by_source"] = {s: with_class_ci(r) for s, r in report["by_source"].items()}
    return out


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Cohen's κ of two readers' yes/no calls on the same items (`pairs`: (reader 1, reader 2) per item),
    with its large-sample 95 % interval.

    κ = (p_o − p_e) / (1 − p_e): p_o the observed share of agreement, p_e the agreement expected by
    chance from each reader's own share of "yes" (p_e = p₁p₂ + (1 − p₁)(1 − p₂)). Standard error
    SE = √(p_o(1 − p_o) / (n(1 − p_e)²)) (Cohen 1960); interval κ ± 1.96·SE, clipped to [−1, 1].
    κ is None with no items, or when chance agreement is certain (both readers gave one answer only).
    """
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "observed_agreement": None, "chance_agreement": None, "kappa": None, "ci95": None}
    if n == 0:
        return out
    po = sum(a == b for a, b in pairs) / n
    p1 = sum(a for a, _ in pairs) / n
    p2 = sum(b for _, b in pairs) / n
    pe = p1 * p2 + (1 - p1) * (1 - p2)
    out.update(observed_agreement=po, chance_agreement=pe)
    if pe >= 1.0 - 1e-12:
        return out
    kappa = (po - pe) / (1 - pe)
    se = math.sqrt(po * (1 - po) / (n * (1 - pe) ** 2))
    out.update(kappa=kappa, ci95=(max(-1.0, kappa - 1.959964 * se), min(1.0, kappa + 1.959964 * se)))
    return out


def auroc(scores: ArrayLike, positive: ArrayLike) -> float | None:
    """Area under the ROC curve of `scores` for telling positives (True) from negatives: the probability
    that a random positive scores higher than a random negative, ties counting half (Mann-Whitney).
    None when either group is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_bins(confidence: ArrayLike, correct: ArrayLike, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width confidence bins over [0, 1]: per bin its n, mean confidence and accuracy (None when empty)."""
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    index = np.clip((c * bins).astype(int), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = index == b
        n = int(sel.sum())
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "n": n,
                "confidence": float(c[sel].mean()) if n else None,
                "accuracy": float(ok[sel].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = 10) -> float | None:
    """ECE (Guo et al. 2017): Σ_b n_b / N · |accuracy_b − confidence_b| over equal-width bins; None when empty."""
    rows = reliability_bins(confidence, correct, bins)
    n = sum(r["n"] for r in rows)
    if n == 0:
        return None
    return float(sum(r["n"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["n"]))
