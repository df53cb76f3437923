"""`cxr-review evaluate` on two real manifests with `pneumonia` rows: the report keeps its keys and adds
`by_age_group`, `three_group` and `confound`, whose figures agree with the per-film predictions CSV."""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest

from ml.checkpoints import DEFAULT_CHECKPOINT
from ml.cli import main
from ml.confound import GROUPS, label_group
from ml.data import Record
from tests.ml.conftest import pick_records, write_manifest
from tests.ml.test_evaluate import TOP_LEVEL_KEYS, check_consistent_with_confusion, check_contract

CXR_TEST = {("test", "normal"): 1, ("test", "bacterial"): 1, ("test", "covid19"): 1}  # Kermany children, Hannover
ADULT_TEST = {("test", "pneumonia"): 3, ("test", "normal"): 2, ("test", "covid19"): 2}  # NIH, cohen2


@pytest.fixture(scope="module")
def evaluated(
    real_records: list[Record], adult_records: list[Record], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("confound-eval")
    cxr, adult = tmp / "cxr", tmp / "adult"
    chosen = pick_records(real_records, CXR_TEST) + pick_records(adult_records, ADULT_TEST)
    write_manifest(cxr, chosen[:3])
    write_manifest(adult, chosen[3:])
    out, csv_path, md = tmp / "eval.json", tmp / "predictions.csv", tmp / "eval.md"
    argv = ["evaluate", "--checkpoint", str(DEFAULT_CHECKPOINT), "--data", str(cxr), "--data", str(adult)]
    argv += ["--no-lung-focus", "--json", str(out), "--predictions", str(csv_path), "--markdown", str(md)]
    assert main(argv) == 0
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"report": json.loads(out.read_text()), "rows": rows, "records": chosen, "md": md.read_text()}


def test_report_keeps_its_keys_and_adds_the_confound_ones(evaluated: dict[str, Any]) -> None:
    report = evaluated["report"]
    assert set(report) == TOP_LEVEL_KEYS - {"lung_focus"}
    check_contract(report)
    check_consistent_with_confusion(report)
    # 4-class figures over the 4-class rows (3 + 4); three-group figures over all 10, pneumonia included
    assert report["n"] == 7 and report["partial_label_rows"]["pneumonia"]["n"] == 3
    assert report["three_group"]["n"] == 10 and report["confound"]["all"]["n"] == 10
    assert set(report["by_age_group"]) == {"adult", "child"}
    assert report["by_age_group"]["child"]["n"] == 2 and report["by_age_group"]["adult"]["n"] == 5
    for rep in report["by_age_group"].values():
        check_consistent_with_confusion(rep)
    assert set(report["confound"]["by_source"]) == {"kermany", "hannover", "nih", "cohen2"}


def test_predictions_csv_has_the_age_group(evaluated: dict[str, Any]) -> None:
    rows = evaluated["rows"]
    expected = {str(r.path): r.age_group for r in evaluated["records"]}
    assert {r["path"]: r["age_group"] for r in rows} == expected
    assert sorted(r["label"] for r in rows).count("pneumonia") == 3


def test_three_group_and_confound_figures_agree_with_the_csv(evaluated: dict[str, Any]) -> None:
    report, rows = evaluated["report"], evaluated["rows"]
    cm = [[0] * 3 for _ in GROUPS]
    for r in rows:
        cm[GROUPS.index(label_group(r["label"]))][GROUPS.index(label_group(r["predicted"]))] += 1
    assert report["three_group"]["confusion_matrix"] == cm
    for key, column in (("by_age_group", "age_group"), ("by_source", "source")):
        for value, row in report["confound"][key].items():
            films = [r for r in rows if r[column] == value]
            non_covid = [r for r in films if r["label"] != "covid19"]
            covid = [r for r in films if r["label"] == "covid19"]
            assert row["non_covid"] == len(non_covid) and row["covid19"] == len(covid)
            assert row["non_covid_called_covid19"] == sum(r["predicted"] == "covid19" for r in non_covid)
            assert row["covid19_called_covid19"] == sum(r["predicted"] == "covid19" for r in covid)


def test_markdown_has_the_confound_table(evaluated: dict[str, Any]) -> None:
    md = evaluated["md"]
    adult = evaluated["report"]["confound"]["by_age_group"]["adult"]
    assert "| truth \\ predicted | normal | non-COVID pneumonia | COVID-19 |" in md
    assert f"| age adult | {adult['non_covid']} | {adult['non_covid_called_covid19']} |" in md
    assert "| age child |" in md and "| source nih |" in md
