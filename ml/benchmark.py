"""The paper's experiment: train and evaluate several architectures under the same settings.

Writes `<out>/<arch>/` (checkpoints, history, `eval.json`) and, across architectures,
`comparison.json`, `comparison.md` (sensitivity, lung focus and the confound check per network) and
`sensitivity.png` (per-class sensitivity bars). Interrupted runs resume: a finished architecture (its
`eval.json` exists) is skipped, a half-trained one continues from its `last.pt`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml import CLASSES
from ml.evaluate import evaluate_checkpoint, format_table
from ml.lung_focus import DEFAULT_THRESHOLD
from ml.train import TrainConfig, train


def run_benchmark(configs: list[TrainConfig], *, out_dir: str, split: str = "test") -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for config in configs:
        arch_dir = Path(config.out_dir)
        eval_path = arch_dir / "eval.json"
        if eval_path.is_file():
            print(f"{config.arch}: already evaluated, skipping ({eval_path})")
            results[config.arch] = json.loads(eval_path.read_text())
            continue
        summary = train(config)
        report = evaluate_checkpoint(
            summary["best_checkpoint"], config.data_dirs, split=split, lung_threshold=DEFAULT_THRESHOLD
        )
        report["training"] = {
            "seconds": summary["seconds"],
            "best_val": summary["best_val"],
            "hparams": config.hparams(),
        }
        eval_path.write_text(json.dumps(report, indent=2))
        print(format_table(report))
        results[config.arch] = report
    write_comparison(results, out, split=split)
    return results


def write_comparison(results: dict[str, Any], out: Path, *, split: str) -> None:
    rows = []
    for arch, rep in results.items():
        rows.append(
            {
                "arch": arch,
                "sensitivity": {c: rep["per_class"][c]["sensitivity"] for c in CLASSES},
                "specificity": {c: rep["per_class"][c]["specificity"] for c in CLASSES},
                "f1": {c: rep["per_class"][c]["f1"] for c in CLASSES},
                "accuracy": rep["accuracy"],
                "macro_sensitivity": rep["macro_sensitivity"],
                "error_ci95": rep["error_ci95"],
                "n": rep["n"],
                "lung_focus": (rep.get("lung_focus") or {}).get("overall"),
                "three_group": _three_group_headline(rep.get("three_group")),
                "confound": rep.get("confound"),  # None for an eval.json written before it existed
            }
        )
    (out / "comparison.json").write_text(json.dumps({"split": split, "results": rows}, indent=2))

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    md = [
        f"# Architecture comparison ({split} split)",
        "",
        "| Network | "
        + " | ".join(f"Sn {c}" for c in CLASSES)
        + " | Macro Sn | Accuracy | 95% CI of error | Median lung focus | Flagged | Right & in lungs |",
        "|---" * (len(CLASSES) + 7) + "|",
    ]
    for r in rows:
        ci = r["error_ci95"]
        focus = r["lung_focus"] or {}
        md.append(
            f"| {r['arch']} | "
            + " | ".join(pct(r["sensitivity"][c]) for c in CLASSES)
            + f" | {pct(r['macro_sensitivity'])} | {pct(r['accuracy'])} | "
            + (f"{pct(ci[0])}–{pct(ci[1])}" if ci else "–")
            + f" | {pct(focus.get('median'))} | {pct(focus.get('flagged_share'))} | "
            + f"{pct(focus.get('right_for_right_reasons'))} |"
        )
    md += [
        "",
        "Lung focus: share of the predicted class's CAM evidence inside the lungs (median over the films); "
        "flagged below the threshold; 'right & in lungs' = classified correctly and not flagged.",
        *_confound_markdown(rows, pct),
    ]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    _bar_chart(rows, out / "sensitivity.png")


def _three_group_headline(three_group: dict[str, Any] | None) -> dict[str, Any] | None:
    if not three_group:
        return None
    keys = ("n", "accuracy", "covid19_sensitivity", "covid19_specificity", "confusion_matrix")
    return {k: three_group[k] for k in keys}


def _confound_markdown(rows: list[dict[str, Any]], pct: Callable[[float | None], str]) -> list[str]:
    """The shortcut check per network: three-group COVID-19 rates, then the confound table's rows."""
    rows = [r for r in rows if r["three_group"] and r["confound"]]
    if not rows:
        return []
    md = [
        "",
        "## Confound check (every film, partial labels included)",
        "",
        "Three groups: normal / non-COVID pneumonia (bacterial, viral, pneumonia) / COVID-19. "
        "Non-COVID = every film not labelled COVID-19.",
        "",
        "| Network | Rows | Non-COVID films | Called COVID-19 (%) | COVID-19 films | COVID-19 Sn | COVID-19 Sp |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tg, conf = r["three_group"], r["confound"]
        lines = [("all", conf["all"])]
        lines += [(f"age {k}", v) for k, v in conf["by_age_group"].items()]
        lines += [(f"source {k}", v) for k, v in conf["by_source"].items()]
        for label, row in lines:
            sp = pct(tg["covid19_specificity"]) if label == "all" else ""
            md.append(
                f"| {r['arch']} | {label} | {row['non_covid']} | {pct(row['non_covid_called_covid19_share'])} | "
                f"{row['covid19']} | {pct(row['covid19_sensitivity'])} | {sp} |"
            )
    return md


def _bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4))
    width = 0.8 / len(CLASSES)
    x = np.arange(len(rows))
    for i, c in enumerate(CLASSES):
        values = [100 * (r["sensitivity"][c] or 0.0) for r in rows]
        ax.bar(x + (i - (len(CLASSES) - 1) / 2) * width, values, width, label=c)
    ax.set_xticks(x, [r["arch"] for r in rows], rotation=20)
    ax.set_ylabel("sensitivity (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=len(CLASSES), loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
