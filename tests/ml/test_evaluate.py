"""`evaluate`: the report's keys are a contract, its numbers agree with its own confusion matrix, and the
command line prints the paper's Table 2 layout for the bundled model by default."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import CLASSES
from ml.checkpoints import DEFAULT_CHECKPOINT, file_sha256
from ml.cli import main
from ml.evaluate import evaluate_checkpoint, format_table

RATE_KEYS = {"sensitivity", "specificity", "f1", "support"}
TOP_LEVEL_KEYS = {
    "n",
    "per_class",
    "accuracy",
    "macro_sensitivity",
    "error_ci95",
    "confusion_matrix",  # the contract
    "by_source",
    "skipped_unreadable",
    "checkpoint",
    "data",
    "cam_method",
    "input_mode",  # provenance
    "lung_focus",  # right for the right reasons
    "partial_label_rows",  # pneumonia (bacterial or viral) rows, kept out of the 4-class figures
    "by_age_group",
    "three_group",
    "confound",  # the age/source shortcut (ml.confound)
    "error_risk",  # calibration and warnings that predict errors (ml.risk_report)
}
FOCUS_KEYS = {"n", "median", "flagged_share", "right_for_right_reasons", "median_lung_area"}


@pytest.fixture(scope="module")
def report(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    csv_path = tmp_path_factory.mktemp("eval") / "predictions.csv"
    rep = evaluate_checkpoint(
        DEFAULT_CHECKPOINT, small_dataset, split="test", predictions_csv=csv_path, lung_threshold=0.5
    )
    rep["_csv"] = str(csv_path)
    return rep


def check_contract(rep: dict[str, Any]) -> None:
    assert set(rep["per_class"]) == set(CLASSES)
    for c in CLASSES:
        assert set(rep["per_class"][c]) >= RATE_KEYS
    cm = np.array(rep["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == rep["n"]
    assert isinstance(rep["accuracy"], float) and isinstance(rep["macro_sensitivity"], float)
    low, high = rep["error_ci95"]
    assert 0.0 <= low <= 1.0 - rep["accuracy"] <= high <= 1.0


def check_consistent_with_confusion(rep: dict[str, Any]) -> None:
    """Every number recomputed from the report's own confusion matrix (rows = truth)."""
    cm = np.array(rep["confusion_matrix"], dtype=float)
    n = cm.sum()
    assert rep["accuracy"] == pytest.approx(np.trace(cm) / n)
    present = []
    for i, c in enumerate(CLASSES):
        row, col, tp = cm[i].sum(), cm[:, i].sum(), cm[i, i]
        pc = rep["per_class"][c]
        assert pc["support"] == row
        if row:
            assert pc["sensitivity"] == pytest.approx(tp / row)
            present.append(tp / row)
        else:
            assert pc["sensitivity"] is None
        negatives = n - row
        if negatives:
            assert pc["specificity"] == pytest.approx((negatives - (col - tp)) / negatives)
        else:  # e.g. the Hannover films are all COVID-19: no negatives, no specificity
            assert pc["specificity"] is None
        if row + col:
            assert pc["f1"] == pytest.approx(2 * tp / (row + col))
    assert rep["macro_sensitivity"] == pytest.approx(np.mean(present))
    e = 1 - rep["accuracy"]
    half = 1.96 * np.sqrt(e * (1 - e) / n)
    assert rep["error_ci95"] == pytest.approx([max(0.0, e - half), min(1.0, e + half)])


def test_report_keys_are_the_contract(report: dict[str, Any]) -> None:
    rep = {k: v for k, v in report.items() if k != "_csv"}
    assert set(rep) == TOP_LEVEL_KEYS
    check_contract(rep)
    assert set(rep["by_source"]) == {"kermany", "hannover"}
    for by in rep["by_source"].values():
        check_contract(by)
    json.dumps(rep)  # plain JSON types only


def test_report_agrees_with_its_confusion_matrix(report: dict[str, Any]) -> None:
    check_consistent_with_confusion(report)
    for by in report["by_source"].values():
        check_consistent_with_confusion(by)


def test_confusion_matrix_rows_are_the_truth(report: dict[str, Any]) -> None:
    # the small dataset's test split has 3 films of each class; the Hannover films are all COVID-19
    assert np.array(report["confusion_matrix"]).sum(axis=1).tolist() == [3, 3, 3, 3]
    assert np.array(report["by_source"]["hannover"]["confusion_matrix"]).sum(axis=1).tolist() == [0, 0, 0, 3]
    per_source = sum(np.array(r["confusion_matrix"]) for r in report["by_source"].values())
    assert per_source.tolist() == report["confusion_matrix"]


def test_report_names_the_checkpoint_and_data(report: dict[str, Any], small_dataset: Path) -> None:
    assert report["checkpoint"]["sha256"] == file_sha256(DEFAULT_CHECKPOINT)
    assert report["checkpoint"]["arch"] == "resnet18"
    assert report["data"]["split"] == "test"
    assert report["data"]["data_dir"] == str(small_dataset.resolve())
    assert report["cam_method"] == "cam"
    assert report["skipped_unreadable"] == []


def test_predictions_csv_matches_the_report(report: dict[str, Any]) -> None:
    with open(report["_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["n"]
    cm = np.zeros((4, 4), dtype=int)
    for r in rows:
        p = [float(r[f"p_{c}"]) for c in CLASSES]
        assert sum(p) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted"] == CLASSES[int(np.argmax(p))]
        cm[CLASSES.index(r["label"]), CLASSES.index(r["predicted"])] += 1
    assert cm.tolist() == report["confusion_matrix"]


def test_empty_split_is_a_clear_error(small_dataset: Path) -> None:
    with pytest.raises(ValueError, match=r"'validation' of .* has no images"):
        evaluate_checkpoint(DEFAULT_CHECKPOINT, small_dataset, split="validation", lung_threshold=0.5)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def test_table_has_the_papers_table_2_layout(report: dict[str, Any]) -> None:
    text = format_table(report)
    first_table, rest = text.split("macro sensitivity", 1)
    lines = [*first_table.splitlines(), "macro sensitivity" + rest.splitlines()[0]]
    # header: one group per class (in CLASSES order) of Sn / Sp / F1, then accuracy and the error's CI
    positions = [lines[0].index(c) for c in CLASSES]
    assert positions == sorted(positions)
    assert lines[1].split("|")[0].strip() == "Network"
    assert [cell.split() for cell in lines[1].split("|")[1:5]] == [["Sn", "Sp", "F1"]] * 4
    assert "Acc" in lines[1] and "95% CI of error" in lines[0]
    # the model's row and one row per source, numbers in percent as in the paper
    rows = {line.split("|")[0].strip(): line for line in lines[3:] if "|" in line}
    assert set(rows) == {"resnet18", "hannover", "kermany", "age adult", "age child"}
    cells = [c.split() for c in rows["resnet18"].split("|")[1:]]
    expected = [[pct(report["per_class"][c][k]) for k in ("sensitivity", "specificity", "f1")] for c in CLASSES]
    assert cells[:4] == expected
    assert cells[4] == [pct(report["accuracy"])]
    low, high = report["error_ci95"]
    assert cells[5] == [f"{100 * low:.1f}–{100 * high:.1f}%"]
    assert re.search(r"macro sensitivity: +[\d.]+%", lines[-1])


def test_cli_evaluate_uses_the_bundled_model_by_default(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cxr-review evaluate` with no --checkpoint evaluates the bundled default model (the console script
    runs this same `ml.cli` parser; tests/ml/test_cli.py runs the script itself)."""
    out_json = tmp_path / "report.json"
    assert main(["evaluate", "--data", str(small_dataset), "--split", "test", "--json", str(out_json)]) == 0
    stdout = capsys.readouterr().out
    rep = json.loads(out_json.read_text())
    assert Path(rep["checkpoint"]["path"]).resolve() == DEFAULT_CHECKPOINT.resolve()
    assert rep["checkpoint"]["sha256"] == file_sha256(DEFAULT_CHECKPOINT)
    check_contract(rep)
    assert format_table(rep) in stdout
    assert f"wrote {out_json}" in stdout


def test_lung_focus_agrees_with_the_per_image_csv(report: dict[str, Any]) -> None:
    """The lung-focus summary is recomputed from the predictions CSV's per-film scores: per true class and
    overall median, share flagged (score below the threshold) and share right and not flagged."""
    lf = report["lung_focus"]
    assert lf["threshold"] == 0.5
    assert set(lf["overall"]) == FOCUS_KEYS and set(lf["per_class"]) == set(CLASSES)
    assert set(lf["by_source"]) == {"kermany", "hannover"}
    with open(report["_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        assert 0.0 <= float(r["lung_focus"]) <= 1.0 and 0.05 < float(r["lung_area"]) < 0.8
        assert r["lung_flagged"] == str(int(float(r["lung_focus"]) < 0.5))

    def stats(subset: list[dict[str, str]]) -> dict[str, float]:
        return {
            "n": len(subset),
            "median": float(np.median([float(r["lung_focus"]) for r in subset])),
            "flagged_share": float(np.mean([r["lung_flagged"] == "1" for r in subset])),
            "right_for_right_reasons": float(
                np.mean([r["lung_flagged"] == "0" and r["label"] == r["predicted"] for r in subset])
            ),
            "median_lung_area": float(np.median([float(r["lung_area"]) for r in subset])),
        }

    for key, expected in stats(rows).items():
        assert lf["overall"][key] == pytest.approx(expected, abs=1e-4)
    for c in CLASSES:
        for key, expected in stats([r for r in rows if r["label"] == c]).items():
            assert lf["per_class"][c][key] == pytest.approx(expected, abs=1e-4)
    assert report["checkpoint"]["input_mode"] == report["input_mode"] == "full"


def test_lung_focus_table_sits_next_to_sensitivity(report: dict[str, Any]) -> None:
    text = format_table(report)
    section = text[text.index("Lung focus of the predicted class's CAM") :].splitlines()
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in section[3:]}
    assert set(rows) == {*CLASSES, "all", "hannover", "kermany"}
    for c in CLASSES:
        n, sens, median, area, flagged, right = rows[c]
        stats = report["lung_focus"]["per_class"][c]
        assert int(n) == stats["n"] and sens == pct(report["per_class"][c]["sensitivity"])
        assert [median, area, flagged, right] == [
            pct(stats[k]) for k in ("median", "median_lung_area", "flagged_share", "right_for_right_reasons")
        ]
    assert rows["all"][1] == pct(report["accuracy"])


def test_evaluate_without_lung_focus_and_with_another_threshold(small_dataset: Path, report: dict[str, Any]) -> None:
    plain = evaluate_checkpoint(
        DEFAULT_CHECKPOINT, small_dataset, split="test", with_lung_focus=False, lung_threshold=0.5
    )
    assert "lung_focus" not in plain and "Lung focus" not in format_table(plain)
    assert plain["confusion_matrix"] == report["confusion_matrix"]  # the CAM pass gives the same predictions
    strict = evaluate_checkpoint(DEFAULT_CHECKPOINT, small_dataset, split="test", lung_threshold=1.0)
    assert strict["lung_focus"]["overall"]["flagged_share"] == 1.0
    assert strict["lung_focus"]["overall"]["median"] == pytest.approx(report["lung_focus"]["overall"]["median"])


def test_error_risk_section_tells_wrong_from_right(report: dict[str, Any], tmp_path: Path) -> None:
    from ml.risk_report import plot_figures

    section = report["error_risk"]
    assert section["available"] is True and section["n"] == report["n"] + report["partial_label_rows"]["pneumonia"]["n"]
    cal = section["calibration"]
    assert 0.0 <= cal["ece_before"] <= 1.0 and 0.0 <= cal["ece_after"] <= 1.0
    assert sum(b["n"] for b in cal["reliability_before"]) == report["n"]  # over the 4-class rows
    assert {"error_risk", "max_prob", "class_distance", "lung_focus_ratio"} <= set(section["signals"])
    rows = section["warnings"]["all"]["any"]
    assert rows["wrong"] == section["wrong"] and rows["wrong"] + rows["right"] == section["n"]
    assert set(section["warnings"]) >= {"all", "covid19_films", "covid19_calls", "source kermany", "source hannover"}
    rc = section["risk_coverage"]
    assert rc["coverage"][-1] == 1.0 and rc["error_rate"][-1] == pytest.approx(section["wrong"] / section["n"])
    written = plot_figures(section, tmp_path)
    assert [p.name for p in written] == ["reliability.png", "risk_coverage.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    with open(report["_csv"], newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert all(0.0 <= float(r["error_risk"]) <= 1.0 for r in csv_rows)
    warned = sum(bool(r["warnings"]) for r in csv_rows)
    assert warned == round(sum(rows[k] * rows[f"{k}_warned"] for k in ("wrong", "right") if rows[k]))
