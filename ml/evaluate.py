"""Evaluate a checkpoint on one split of a manifest dataset, overall and per source.

The report's keys are a contract (see the README): `per_class.<class>.{sensitivity,specificity,f1,
support}`, `accuracy`, `macro_sensitivity`, `error_ci95`, `confusion_matrix` (rows = truth, columns
= prediction, CLASSES order) and `by_source` (the same, per `source`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from ml import CLASSES
from ml.checkpoints import file_sha256, load_model
from ml.data import get_scenario, load_images, manifest_sha256, read_manifest, select
from ml.metrics import classification_report
from ml.registry import get_arch
from ml.train import class_mask, predict_logits
from ml.transforms import apply_intensity


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    batch_size: int = 32,
    predictions_csv: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    model, meta = load_model(checkpoint)
    spec = get_arch(meta["arch"])
    active = tuple(meta.get("active_classes", CLASSES))
    scenario = get_scenario(meta.get("scenario", "s2"))
    records = read_manifest(data_dir)
    chosen = select(records, scenario, split)
    if not chosen:
        raise ValueError(f"split {split!r} of {data_dir} has no images of classes {', '.join(active)}")
    loaded = load_images(chosen, int(meta["input_size"]))
    loaded.images = apply_intensity(loaded.images, meta.get("intensity", "raw"))
    logits = predict_logits(
        model, loaded.images, meta["mean"], meta["std"], mask=class_mask(active), batch_size=batch_size
    )
    probs = torch.softmax(logits, dim=1)
    y_true = loaded.labels.tolist()
    y_pred = probs.argmax(1).tolist()

    report = classification_report(y_true, y_pred)
    by_source: dict[str, Any] = {}
    for source in sorted({r.source for r in loaded.records}):
        idx = [i for i, r in enumerate(loaded.records) if r.source == source]
        by_source[source] = classification_report([y_true[i] for i in idx], [y_pred[i] for i in idx])
    report["by_source"] = by_source
    report["skipped_unreadable"] = [{"path": p, "error": e} for p, e in loaded.skipped]
    report["checkpoint"] = {
        "path": str(checkpoint),
        "sha256": file_sha256(checkpoint),
        "arch": meta["arch"],
        "scenario": meta.get("scenario"),
        "input_size": meta["input_size"],
        "epoch": meta.get("epoch"),
        "code_version": meta.get("code_version"),
    }
    report["data"] = {
        "data_dir": str(Path(data_dir).resolve()),
        "manifest_sha256": manifest_sha256(data_dir),
        "split": split,
    }
    report["cam_method"] = spec.cam_method

    if predictions_csv:
        Path(predictions_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(predictions_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "source", "label", "predicted", *[f"p_{c}" for c in CLASSES]])
            for r, pred, p in zip(loaded.records, y_pred, probs.tolist(), strict=True):
                w.writerow([str(r.path), r.source, r.label, CLASSES[pred], *[f"{v:.6f}" for v in p]])
    return report


def _pct(v: float | None) -> str:
    return "  –  " if v is None else f"{100 * v:5.1f}"


def format_table(report: dict[str, Any], name: str | None = None) -> str:
    """The paper's Table 2 layout: per class Sn / Sp / F1 (in %), then accuracy and the error's 95% CI."""
    name = name or report.get("checkpoint", {}).get("arch", "model")
    head1 = f"{'':<14}" + "".join(f"| {c:^19} " for c in CLASSES) + "| " + f"{'':>5} | {'95% CI of error':^15}"
    head2 = (
        f"{'Network':<14}"
        + "".join(f"| {'Sn':>5} {'Sp':>5} {'F1':>5}   " for _ in CLASSES)
        + f"| {'Acc':>5} | {'':^15}"
    )
    lines = [head1, head2, "-" * len(head2)]

    def row(label: str, rep: dict[str, Any]) -> str:
        cells = "".join(
            f"| {_pct(rep['per_class'][c]['sensitivity'])} {_pct(rep['per_class'][c]['specificity'])} "
            f"{_pct(rep['per_class'][c]['f1'])}   "
            for c in CLASSES
        )
        ci = rep.get("error_ci95")
        ci_s = f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else "–"
        return f"{label:<14}{cells}| {_pct(rep['accuracy'])} | {ci_s:^15}"

    lines.append(row(name[:14], report))
    for source, rep in report.get("by_source", {}).items():
        lines.append(row(f"  {source}"[:14], rep))
    ms = report.get("macro_sensitivity")
    lines.append(
        f"macro sensitivity: {_pct(ms).strip()}%   images: {report['n']}   "
        f"support: " + ", ".join(f"{c} {report['per_class'][c]['support']}" for c in CLASSES)
    )
    if report.get("skipped_unreadable"):
        lines.append(f"skipped unreadable images: {len(report['skipped_unreadable'])}")
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """The same table as `format_table`, as Markdown (model cards, reports), plus confusion matrices."""
    head = (
        "| Rows | n | "
        + " | ".join(f"{c} Sn / Sp / F1" for c in CLASSES)
        + " | Accuracy | Macro Sn | 95% CI of error |"
    )
    lines = [head, "|---" * (len(CLASSES) + 5) + "|"]

    def row(label: str, rep: dict[str, Any]) -> str:
        cells = " | ".join(
            " / ".join(_pct(rep["per_class"][c][k]).strip() for k in ("sensitivity", "specificity", "f1"))
            for c in CLASSES
        )
        ci = rep.get("error_ci95")
        ci_s = f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else "–"
        return (
            f"| {label} | {rep['n']} | {cells} | {_pct(rep['accuracy']).strip()} | "
            f"{_pct(rep['macro_sensitivity']).strip()} | {ci_s} |"
        )

    lines.append(row("all", report))
    for source, rep in report.get("by_source", {}).items():
        lines.append(row(source, rep))
    lines += [
        "",
        "Confusion matrix (rows = truth, columns = prediction):",
        "",
        "| truth \\ predicted | " + " | ".join(CLASSES) + " |",
        "|---" * (len(CLASSES) + 1) + "|",
    ]
    for c, counts in zip(CLASSES, report["confusion_matrix"], strict=True):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in counts) + " |")
    return "\n".join(lines) + "\n"
