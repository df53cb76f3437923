"""The report of a finished training job: figures from `ml.evaluate` reports, drawn as PNG pictures
(matplotlib, Agg backend: no display, safe in a worker process).

- `curves.png`: training loss per step and per epoch, validation loss; validation accuracy and
  macro sensitivity per epoch.
- `confusion.png`: the test-split confusion matrix (rows = truth, columns = prediction, counts).
- `comparison.png`: per-class sensitivity of the new version beside the active model's on the
  same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.models import CLASS_LABELS
from ml import CLASSES


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render_curves(path: Path, *, history: list[dict[str, Any]], step_losses: list[tuple[float, float]]) -> Path:
    """`history`: ml.train's per-epoch rows; `step_losses`: (epoch position, loss) per logged step."""
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    if step_losses:
        xs, ys = zip(*step_losses, strict=True)
        ax_loss.plot(xs, ys, color="#9aa5b1", linewidth=0.8, alpha=0.8, label="train loss (step)")
    epochs = [h["epoch"] for h in history]
    if history:
        ax_loss.plot(epochs, [h.get("train_loss") for h in history], "o-", color="#1f77b4", label="train loss (epoch)")
        ax_loss.plot(epochs, [h.get("val_loss") for h in history], "s-", color="#d62728", label="validation loss")
        ax_val.plot(epochs, [100 * (h.get("val_accuracy") or 0) for h in history], "o-", label="accuracy")
        ax_val.plot(
            epochs, [100 * (h.get("val_macro_sensitivity") or 0) for h in history], "s-", label="macro sensitivity"
        )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    ax_loss.legend(fontsize=8)
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("%")
    ax_val.set_ylim(0, 100)
    ax_val.set_title("Validation")
    ax_val.legend(fontsize=8)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def render_confusion(path: Path, *, report: dict[str, Any], title: str) -> Path:
    plt = _pyplot()
    import numpy as np

    matrix = np.array(report["confusion_matrix"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    labels = [CLASS_LABELS[c] for c in CLASSES]
    ax.set_xticks(range(len(CLASSES)), labels, rotation=20)
    ax.set_yticks(range(len(CLASSES)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(
                j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black", fontsize=11,
            )  # fmt: skip
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def render_comparison(
    path: Path, *, new: dict[str, Any], active: dict[str, Any] | None, new_label: str, active_label: str
) -> Path:
    plt = _pyplot()
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(CLASSES))
    series = [(new_label, new, "#1f77b4")]
    if active is not None:
        series.append((active_label, active, "#ff7f0e"))
    width = 0.8 / len(series)
    for k, (label, report, color) in enumerate(series):
        values = [100 * (report["per_class"][c].get("sensitivity") or 0.0) for c in CLASSES]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label, color=color)
    ax.set_xticks(x, [CLASS_LABELS[c] for c in CLASSES])
    ax.set_ylabel("sensitivity (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test split: sensitivity per class", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an ml.evaluate report (what a job's `metrics.test` shows)."""
    return {
        "n": report.get("n"),
        "accuracy": report.get("accuracy"),
        "macro_sensitivity": report.get("macro_sensitivity"),
        "error_ci95": report.get("error_ci95"),
        "sensitivity": {c: report["per_class"][c].get("sensitivity") for c in CLASSES},
        "lung_focus": _lung_focus_headline(report.get("lung_focus")),
        "three_group": _three_group_headline(report.get("three_group")),
        "confound": _confound_headline(report.get("confound")),
        "error_risk": _risk_headline(report.get("error_risk")),
    }


def _risk_headline(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """Calibration (ECE before / after temperature scaling) and how well the warnings predict errors:
    error-risk AUROC beside max probability's, shares of wrong and right predictions warned (None: a
    report made before it existed)."""
    if not section:
        return None
    cal = section.get("calibration") or {}
    out: dict[str, Any] = {"ece_before": cal.get("ece_before"), "ece_after": cal.get("ece_after")}
    if section.get("available"):
        signals, warned = section["signals"], section["warnings"]["all"]["any"]
        out |= {
            "auroc": signals["error_risk"]["auroc"],
            "auroc_max_prob": signals["max_prob"]["auroc"],
            "wrong_warned": warned["wrong_warned"],
            "right_warned": warned["right_warned"],
        }
    else:
        out["reason"] = section.get("reason")
    return out


def _three_group_headline(three_group: dict[str, Any] | None) -> dict[str, Any] | None:
    """Normal / non-COVID pneumonia / COVID-19 over every film (None: a report made before it existed)."""
    if not three_group:
        return None
    return {k: three_group.get(k) for k in ("n", "accuracy", "covid19_sensitivity", "covid19_specificity")}


def _confound_headline(confound: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per age group and per source: the share of non-COVID films called COVID-19 and the COVID-19
    sensitivity (the age/source shortcut check; see ml.confound)."""
    if not confound:
        return None
    keys = ("non_covid", "non_covid_called_covid19_share", "covid19", "covid19_sensitivity")
    return {
        "all": {k: confound["all"].get(k) for k in keys},
        **{
            by: {name: {k: row.get(k) for k in keys} for name, row in confound[by].items()}
            for by in ("by_age_group", "by_source")
        },
    }


def _lung_focus_headline(lung_focus: dict[str, Any] | None) -> dict[str, Any] | None:
    """Overall median lung focus, share flagged and share right for the right reasons (None: not measured)."""
    if not lung_focus:
        return None
    overall = lung_focus["overall"]
    return {
        "threshold": lung_focus["threshold"],
        "median": overall["median"],
        "flagged_share": overall["flagged_share"],
        "right_for_right_reasons": overall["right_for_right_reasons"],
    }
