"""How well the warnings predict errors, for `evaluate`: calibration, per-signal AUROC, warned shares, risk–coverage.

`risk_summary` is the report's `error_risk` section:
- `calibration`: ECE (10 equal-width bins, over the 4-class rows) of the largest probability before
  (T = 1) and after temperature scaling, with both reliability tables;
- `signals`: per signal of `ml.risk.Signals` and for `error_risk`, the AUROC for telling wrong from right
  predictions, with the signal oriented so that higher means riskier (`ORIENTATION`);
- `warnings`: per warning code and for any warning, the share of wrong and of right predictions it
  marks, overall, per source, for the COVID-19 films (`covid19_films`: truth COVID-19) and for the
  COVID-19 calls (`covid19_calls`: predicted COVID-19);
- `risk_coverage`: predictions sorted by error risk, lowest first; at each coverage (share kept) the
  error rate among those kept, and its area (AURC; lower is better) beside that of 1 − max probability.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml import CLASSES
from ml.data import LABELS, is_full_label, target_matches
from ml.inference import Prediction
from ml.metrics import auroc, expected_calibration_error, reliability_bins
from ml.risk import MESSAGES

ORIENTATION = {
    "max_prob": -1,
    "entropy": 1,
    "energy": 1,
    "class_distance": 1,
    "ood_distance": 1,
    "relative_distance": 1,
    "feature_residual": 1,
    "lung_focus": -1,
    "lung_focus_ratio": -1,
    "lung_area": -1,
    "lung_balance": -1,
    "lung_fill": -1,
    "lung_two_share": -1,
    "lung_layout": -1,
}
"""+1: a higher value means a likelier error; −1: a lower one does."""


def _shares(warned: np.ndarray, wrong: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    w, r = rows & wrong, rows & ~wrong
    return {
        "wrong": int(w.sum()),
        "right": int(r.sum()),
        "wrong_warned": float(warned[w].mean()) if w.any() else None,
        "right_warned": float(warned[r].mean()) if r.any() else None,
    }


def risk_coverage(risk: np.ndarray, wrong: np.ndarray, points: int = 50) -> dict[str, Any]:
    order = np.argsort(risk, kind="mergesort")
    errors = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    idx = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).round().astype(int))
    return {
        "coverage": [float((i + 1) / len(order)) for i in idx],
        "error_rate": [float(errors[i]) for i in idx],
        "aurc": float(errors.mean()),
    }


def risk_summary(targets: Sequence[int], predictions: Sequence[Prediction], sources: Sequence[str]) -> dict[str, Any]:
    """The `error_risk` section of an evaluation report (module docstring); `targets` are LABELS indices."""
    y = np.array(targets)
    pred = np.array([CLASSES.index(p.predicted_class) for p in predictions])
    wrong = np.array([not target_matches(int(t), int(k)) for t, k in zip(y, pred, strict=True)])
    full = np.array([is_full_label(int(t)) for t in y])
    raw_conf = np.array([max(p.probabilities.values()) for p in predictions])
    out: dict[str, Any] = {"n": len(predictions), "wrong": int(wrong.sum())}
    calibration: dict[str, Any] = {
        "ece_before": expected_calibration_error(raw_conf[full], ~wrong[full]),
        "reliability_before": reliability_bins(raw_conf[full], ~wrong[full]),
    }
    calibrated = all(p.signals is not None and p.error_risk is not None for p in predictions) and predictions
    if not calibrated:
        reasons = sorted({p.error_risk_reason or "" for p in predictions if p.error_risk is None})
        out.update(calibration=calibration, available=False, reason="; ".join(reasons))
        return out
    conf = np.array([p.signals.max_prob for p in predictions])  # type: ignore[union-attr]
    calibration.update(
        ece_after=expected_calibration_error(conf[full], ~wrong[full]),
        reliability_after=reliability_bins(conf[full], ~wrong[full]),
    )
    risk = np.array([p.error_risk for p in predictions], dtype=np.float64)
    signals: dict[str, Any] = {"error_risk": {"auroc": auroc(risk, wrong), "orientation": 1}}
    for name, sign in ORIENTATION.items():
        values = [getattr(p.signals, name) for p in predictions]
        keep = np.array([v is not None for v in values])
        score = np.array([sign * v if v is not None else 0.0 for v in values])
        signals[name] = {"auroc": auroc(score[keep], wrong[keep]), "orientation": sign, "n": int(keep.sum())}
    src = np.array(sources)
    groups = {
        "all": np.ones(len(y), bool),
        "covid19_films": y == LABELS.index("covid19"),
        "covid19_calls": pred == CLASSES.index("covid19"),
    }
    groups |= {f"source {s}": src == s for s in sorted(set(sources))}
    codes = {c: np.array([any(w.code == c for w in p.warnings) for p in predictions]) for c in MESSAGES}
    any_warned = np.array([bool(p.warnings) for p in predictions])
    out.update(
        available=True,
        calibration=calibration,
        signals=signals,
        warnings={
            g: {"any": _shares(any_warned, wrong, rows), **{c: _shares(w, wrong, rows) for c, w in codes.items()}}
            for g, rows in groups.items()
        },
        auroc_by_source={
            g[7:]: {"error_risk": auroc(risk[rows], wrong[rows]), "max_prob": auroc(-conf[rows], wrong[rows])}
            for g, rows in groups.items()
            if g.startswith("source ")
        },
        risk_coverage=risk_coverage(risk, wrong),
        risk_coverage_max_prob=risk_coverage(-raw_conf, wrong),
    )
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def format_risk_markdown(section: dict[str, Any]) -> str:
    """The section as Markdown tables ('' without one)."""
    if not section:
        return ""
    cal = section["calibration"]
    lines = [
        f"Calibration: ECE before temperature scaling {_pct(cal['ece_before'])} %"
        + (f", after {_pct(cal['ece_after'])} %" if "ece_after" in cal else "")
        + "."
    ]
    if not section.get("available"):
        return "\n".join([*lines, "", f"No error risk: {section.get('reason')}"]) + "\n"
    lines += [
        "",
        f"Telling the {section['wrong']} wrong from the {section['n'] - section['wrong']} right predictions:",
        "",
        "| Signal | AUROC (higher = riskier) |",
        "|---|---|",
    ]
    for name, row in section["signals"].items():
        direction = "" if row["orientation"] > 0 else " (low = risky)"
        lines.append(f"| {name}{direction} | {_pct(row['auroc'])} |")
    rc, rc0 = section["risk_coverage"], section["risk_coverage_max_prob"]
    lines += [
        "",
        f"Risk–coverage area (mean error rate kept, lower is better): error_risk {_pct(rc['aurc'])} %, "
        f"1 − max probability {_pct(rc0['aurc'])} %.",
        "",
        "| Rows | wrong | right | wrong warned | right warned | "
        + " | ".join(f"{c}: wrong / right" for c in MESSAGES)
        + " |",
        "|---" * (5 + len(MESSAGES)) + "|",
    ]
    for group, row in section["warnings"].items():
        a = row["any"]
        cells = " | ".join(f"{_pct(row[c]['wrong_warned'])} / {_pct(row[c]['right_warned'])}" for c in MESSAGES)
        lines.append(
            f"| {group} | {a['wrong']} | {a['right']} | {_pct(a['wrong_warned'])} | "
            f"{_pct(a['right_warned'])} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def format_risk_text(section: dict[str, Any]) -> str:
    return format_risk_markdown(section)


def plot_figures(section: dict[str, Any], folder: str | os.PathLike[str]) -> list[Path]:
    """reliability.png (before/after temperature scaling) and risk_coverage.png in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    cal = section["calibration"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for key, label in (("reliability_before", "before"), ("reliability_after", "after")):
        rows = [r for r in cal.get(key) or [] if r["n"]]
        if rows:
            ece = cal["ece_before" if label == "before" else "ece_after"]
            ax.plot(
                [r["confidence"] for r in rows],
                [r["accuracy"] for r in rows],
                marker="o",
                label=f"{label} temperature scaling (ECE {_pct(ece)} %)",
            )
    ax.set(
        xlabel="confidence (largest probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability diagram",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=120)
    plt.close(fig)
    written.append(out / "reliability.png")
    if section.get("available"):
        fig, ax = plt.subplots(figsize=(5, 4))
        for key, label in (("risk_coverage", "error_risk"), ("risk_coverage_max_prob", "1 − max probability")):
            rc = section[key]
            ax.plot(rc["coverage"], rc["error_rate"], label=f"{label} (AURC {_pct(rc['aurc'])} %)")
        ax.set(
            xlabel="coverage (share of predictions kept, least risky first)",
            ylabel="error rate among kept",
            title="Risk–coverage",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "risk_coverage.png", dpi=120)
        plt.close(fig)
        written.append(out / "risk_coverage.png")
    return written
