"""Evaluate a checkpoint on one split of a manifest dataset, overall and per source.

The report's keys are a contract (see the README): `per_class.<class>.{sensitivity,specificity,f1,
support}`, `accuracy`, `macro_sensitivity`, `error_ci95`, `confusion_matrix` (rows = truth, columns
= prediction, CLASSES order) and `by_source` (the same, per `source`). These 4-class figures are over
the 4-class rows only: rows with a partial label (`pneumonia`, bacterial or viral) are evaluated
but left out of them; `partial_label_rows` counts them and how many were called one of their
candidate classes. `by_age_group` is the 4-class report per `age_group` (blank: `unknown`). Over
every row, partial labels included, `three_group` (normal / non-COVID pneumonia / COVID-19) and the
`confound` table (non-COVID films called COVID-19 and COVID-19 sensitivity, per age group and per
source) show whether the model learned the data's age/source shortcut (`ml.confound`). Several
manifest folders may be evaluated together (`ml.data.read_manifests`).

Films go through the web service's per-film pipeline (`ml.inference.analyze_films`), so a film scores
here exactly as its upload would. Lung focus ("right for the right reasons"): unless turned off, every
film is also segmented (the bundled lung segmenter, or `lungseg_checkpoint`) and the predicted class's
CAM, taken from the same forward pass, is scored against the lung mask (`ml.lung_focus`).
`lung_focus` holds, overall, per true class and per source: `n`, `median` lung focus, `flagged_share`
(share of predictions whose evidence lies mostly outside the lungs, `ml.lung_focus.is_flagged` at the
`threshold` used), `right_for_right_reasons` (share of films classified correctly AND not flagged) and
`median_lung_area` (the chance level).

`error_risk` (`ml.risk_report.risk_summary`): ECE before and after temperature scaling; for each signal
and for the error risk of a calibrated checkpoint (`cxr-review calibrate`), the AUROC for telling wrong
from right predictions and the share of wrong and right predictions warned, overall, per source and for
the COVID-19 films and calls; the risk–coverage curve (`plot_figures` draws both PNGs).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml import CLASSES
from ml.confound import confound_figures, format_confound_markdown, format_confound_text
from ml.data import (
    LABELS,
    PARTIAL_LABELS,
    Record,
    get_scenario,
    is_full_label,
    manifest_sha256,
    read_manifests,
    select,
    target_matches,
)
from ml.inference import Prediction, Predictor, analyze_films
from ml.lung_focus import LungFocus, check_threshold
from ml.lungseg import LungSegmenter
from ml.metrics import classification_report
from ml.risk import Signals
from ml.risk_report import format_risk_markdown, format_risk_text, risk_summary
from ml.transforms import load_grayscale


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    split: str = "test",
    batch_size: int = 32,
    predictions_csv: str | os.PathLike[str] | None = None,
    with_lung_focus: bool = True,
    lungseg_checkpoint: str | os.PathLike[str] | None = None,
    lung_threshold: float,
) -> dict[str, Any]:
    """Evaluate `checkpoint` on `split` of `data_dirs` (one manifest folder or several) through the
    per-film pipeline the web service uses (`ml.inference.analyze_films`), so its figures are those of
    the service's results; a prediction's lung focus is flagged below `lung_threshold` (the command
    line's default is `DEFAULT_THRESHOLD`)."""
    lung_threshold = check_threshold(lung_threshold)
    if batch_size <= 0:
        raise ValueError("batch size must be > 0")
    segmenter = LungSegmenter.from_checkpoint(lungseg_checkpoint) if with_lung_focus else None
    predictor = Predictor.from_checkpoint(checkpoint, segmenter=segmenter)
    meta = predictor.meta
    if predictor.needs_lung_mask and not with_lung_focus:
        raise ValueError("this model was trained on lung-cropped films: it cannot be evaluated without the segmenter")
    scenario = get_scenario(meta.scenario or "s2")
    dirs = [data_dirs] if isinstance(data_dirs, str | os.PathLike) else list(data_dirs)
    chosen = select(read_manifests(dirs), scenario, split)
    if not chosen:
        where = ", ".join(str(d) for d in dirs)
        raise ValueError(f"split {split!r} of {where} has no images of classes {', '.join(meta.active_classes)}")
    records: list[Record] = []
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(chosen), batch_size):
        films = []
        for r in chosen[start : start + batch_size]:
            try:
                films.append(load_grayscale(str(r.path)))
                records.append(r)
            except (OSError, ValueError, SyntaxError) as exc:
                skipped.append((str(r.path), f"{type(exc).__name__}: {exc}"))
        predictions += [film.predictions[0] for film in analyze_films(films, [predictor], segmenter)]
    y_true = [r.label_index for r in records]
    y_pred = [CLASSES.index(p.predicted_class) for p in predictions]
    focus = None
    if segmenter is not None:  # every film was segmented: each prediction has its lung focus
        focus = [f.at(lung_threshold) for p in predictions if (f := p.predicted_lung_focus) is not None]
        assert len(focus) == len(predictions)

    full = [i for i, t in enumerate(y_true) if is_full_label(t)]

    report = classification_report([y_true[i] for i in full], [y_pred[i] for i in full])
    by_source: dict[str, Any] = {}
    for source in sorted({r.source for r in records}):
        idx = [i for i in full if records[i].source == source]
        by_source[source] = classification_report([y_true[i] for i in idx], [y_pred[i] for i in idx])
    report["by_source"] = by_source
    report.update(  # by_age_group (4-class rows), three_group and confound (every row)
        confound_figures(
            [LABELS[t] for t in y_true],
            [CLASSES[p] for p in y_pred],
            sources=[r.source for r in records],
            age_groups=[r.age_group for r in records],
        )
    )
    report["partial_label_rows"] = partial_label_rows(y_true, y_pred)
    report["skipped_unreadable"] = [{"path": p, "error": e} for p, e in skipped]
    report["checkpoint"] = {
        "path": str(checkpoint),
        "sha256": predictor.checkpoint_sha256,
        "arch": meta.arch,
        "scenario": meta.scenario,
        "input_size": meta.input_size,
        "epoch": meta.epoch,
        "code_version": meta.code_version,
        "input_mode": meta.input_mode,
    }
    report["data"] = {
        # the first manifest (the only one before several could be given); `manifests` lists every one
        "data_dir": str(Path(dirs[0]).resolve()),
        "manifest_sha256": manifest_sha256(dirs[0]),
        "manifests": [{"data_dir": str(Path(d).resolve()), "sha256": manifest_sha256(d)} for d in dirs],
        "split": split,
    }
    report["cam_method"] = predictor.cam_method
    report["input_mode"] = meta.input_mode  # also at the top: reports shown to users drop `checkpoint` (local paths)
    if focus is not None and segmenter is not None:
        sources = [r.source for r in records]
        report["lung_focus"] = lung_focus_summary(y_true, y_pred, focus, sources, lung_threshold)
        report["lung_focus"]["segmenter_sha256"] = segmenter.checkpoint_sha256
    report["error_risk"] = risk_summary(y_true, predictions, [r.source for r in records])
    if predictions_csv:
        write_predictions_csv(predictions_csv, records, predictions, focus)
    return report


def partial_label_rows(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, dict[str, int]]:
    """Per partial label: its rows `n`, and how many were called one of its candidate classes."""
    out = {}
    for label in PARTIAL_LABELS:
        of_label = [p for t, p in zip(y_true, y_pred, strict=True) if t == LABELS.index(label)]
        out[label] = {
            "n": len(of_label),
            "called_a_candidate": sum(CLASSES[p] in PARTIAL_LABELS[label] for p in of_label),
        }
    return out


def write_predictions_csv(
    path: str | os.PathLike[str],
    records: Sequence[Record],
    predictions: Sequence[Prediction],
    focus: Sequence[LungFocus] | None,
) -> None:
    """One row per film: path, source, age group, label, predicted class, the four probabilities, its
    lung focus, its error risk (blank: not calibrated), its warning codes (`;`-separated) and its signals
    (`signal_<name>`, `ml.risk.Signals`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "path",
                "source",
                "age_group",
                "label",
                "predicted",
                *[f"p_{c}" for c in CLASSES],
                "lung_focus",
                "lung_area",
                "lung_flagged",
                "error_risk",
                "warnings",
                *[f"signal_{name}" for name in SIGNAL_NAMES],
            ]
        )
        for i, (r, p) in enumerate(zip(records, predictions, strict=True)):
            f = focus[i] if focus is not None else None
            lung = [
                "" if f is None or f.score is None else f"{f.score:.4f}",
                "" if f is None else f"{f.lung_area:.4f}",
                "" if f is None else str(int(f.flagged)),
            ]
            w.writerow(
                [
                    str(r.path),
                    r.source,
                    r.age_group,
                    r.label,
                    p.predicted_class,
                    *[f"{p.probabilities[c]:.6f}" for c in CLASSES],
                    *lung,
                    "" if p.error_risk is None else f"{p.error_risk:.4f}",
                    ";".join(w.code for w in p.warnings),
                    *_signal_cells(p),
                ]
            )


SIGNAL_NAMES = tuple(f.name for f in dataclasses.fields(Signals) if f.name != "predicted_class")  # its own column


def _signal_cells(p: Prediction) -> list[str]:
    values = p.signals.to_dict() if p.signals is not None else {}
    return ["" if values.get(n) is None else f"{values[n]:.6g}" for n in SIGNAL_NAMES]


def _focus_stats(rows: Sequence[tuple[bool, LungFocus]]) -> dict[str, Any]:
    scores = [f.score for _, f in rows if f.score is not None]
    n = len(rows)
    return {
        "n": n,
        "median": statistics.median(scores) if scores else None,
        "flagged_share": sum(f.flagged for _, f in rows) / n if n else None,
        "right_for_right_reasons": sum(ok and not f.flagged for ok, f in rows) / n if n else None,
        "median_lung_area": statistics.median(f.lung_area for _, f in rows) if n else None,
    }


def lung_focus_summary(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    focus: Sequence[LungFocus],
    sources: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """Lung focus of the predicted class's CAM, overall, per true class and per source (see module doc)."""
    rows = [(target_matches(t, p), f) for t, p, f in zip(y_true, y_pred, focus, strict=True)]
    per_class = {
        c: _focus_stats([row for row, t in zip(rows, y_true, strict=True) if t == k]) for k, c in enumerate(CLASSES)
    }
    by_source = {
        s: _focus_stats([row for row, src in zip(rows, sources, strict=True) if src == s]) for s in sorted(set(sources))
    }
    scores = np.array([f.score for f in focus if f.score is not None], dtype=np.float64)
    return {
        "threshold": threshold,
        "overall": _focus_stats(rows),
        "per_class": per_class,
        "by_source": by_source,
        "histogram": np.histogram(scores, bins=10, range=(0.0, 1.0))[0].tolist(),
    }


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
    for group, rep in report.get("by_age_group", {}).items():
        lines.append(row(f"  age {group}"[:14], rep))
    ms = report.get("macro_sensitivity")
    lines.append(
        f"macro sensitivity: {_pct(ms).strip()}%   images: {report['n']}   "
        f"support: " + ", ".join(f"{c} {report['per_class'][c]['support']}" for c in CLASSES)
    )
    for label, counts in (report.get("partial_label_rows") or {}).items():
        if counts["n"]:
            lines.append(
                f"{label} rows (partial label, not in the 4-class figures): {counts['n']}, "
                f"called {' or '.join(PARTIAL_LABELS[label])}: {counts['called_a_candidate']}"
            )
    confound = format_confound_text(report)
    if confound:
        lines += ["", confound]
    if report.get("skipped_unreadable"):
        lines.append(f"skipped unreadable images: {len(report['skipped_unreadable'])}")
    if report.get("error_risk"):
        lines += ["", format_risk_text(report["error_risk"])]
    if report.get("lung_focus"):
        lf = report["lung_focus"]
        lines += ["", f"Lung focus of the predicted class's CAM (flagged below {lf['threshold']:.2f}; all in %):"]
        head = (
            f"{'rows':<14}| {'n':>4} | {'Sn/acc':>6} | {'median focus':>12} | {'lung area':>9} | "
            f"{'flagged':>7} | {'right & in lungs':>16}"
        )
        lines += [head, "-" * len(head)]
        for label, stats, sens in lung_focus_rows(report):
            lines.append(
                f"{label[:14]:<14}| {stats['n']:>4} | {_pct(sens):>6} | {_pct(stats['median']):>12} | "
                f"{_pct(stats['median_lung_area']):>9} | {_pct(stats['flagged_share']):>7} | "
                f"{_pct(stats['right_for_right_reasons']):>16}"
            )
    return "\n".join(lines)


def lung_focus_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any], float | None]]:
    """(label, lung-focus stats, sensitivity or accuracy) rows: each true class with films, all, each source."""
    lf = report["lung_focus"]
    rows: list[tuple[str, dict[str, Any], float | None]] = [
        (c, lf["per_class"][c], report["per_class"][c]["sensitivity"]) for c in CLASSES if lf["per_class"][c]["n"]
    ]
    rows.append(("all", lf["overall"], report["accuracy"]))
    for source, stats in lf.get("by_source", {}).items():
        rows.append((source, stats, report.get("by_source", {}).get(source, {}).get("accuracy")))
    return rows


def format_lung_focus_markdown(report: dict[str, Any]) -> str:
    """The lung-focus table as Markdown ('' when the report has none)."""
    if not report.get("lung_focus"):
        return ""
    lf = report["lung_focus"]
    lines = [
        f"Lung focus of the predicted class's CAM (share of its positive evidence inside the lungs; "
        f"flagged below {lf['threshold']:.2f}). Sn for a class row, accuracy for the others; "
        "'right & in lungs' = classified correctly and not flagged.",
        "",
        "| Rows | n | Sn / acc | Median lung focus | Median lung area (chance) | Flagged | Right & in lungs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, stats, sens in lung_focus_rows(report):
        lines.append(
            f"| {label} | {stats['n']} | {_pct(sens).strip()} | {_pct(stats['median']).strip()} | "
            f"{_pct(stats['median_lung_area']).strip()} | {_pct(stats['flagged_share']).strip()} | "
            f"{_pct(stats['right_for_right_reasons']).strip()} |"
        )
    return "\n".join(lines) + "\n"


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
    for group, rep in report.get("by_age_group", {}).items():
        lines.append(row(f"age {group}", rep))
    lines += [
        "",
        "Confusion matrix (rows = truth, columns = prediction):",
        "",
        "| truth \\ predicted | " + " | ".join(CLASSES) + " |",
        "|---" * (len(CLASSES) + 1) + "|",
    ]
    for c, counts in zip(CLASSES, report["confusion_matrix"], strict=True):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in counts) + " |")
    confound = format_confound_markdown(report)
    focus = format_lung_focus_markdown(report)
    risk = format_risk_markdown(report.get("error_risk") or {})
    return "\n".join(lines) + "\n" + "".join("\n" + part for part in (confound, focus, risk) if part)
