"""`cxr-review benchmark`: two networks trained for two steps on real films, compared in md/json/png, and a
re-run resumes instead of starting over."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ml import CLASSES
from ml.cli import main

ARCHS = ["cnnx", "squeezenet1_1"]


def benchmark(data: Path, out: Path) -> list[str]:
    return [
        "benchmark",
        "--archs",
        ",".join(ARCHS),
        "--scenario",
        "s2",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--batch-size",
        "8",
        "--no-augment",
        "--data",
        str(data),
        "--out",
        str(out),
        "--split",
        "test",
    ]


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def first_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert main(benchmark(small_dataset, out)) == 0
    return out


def test_writes_one_folder_per_architecture(first_run: Path) -> None:
    for arch in ARCHS:
        files = {p.name for p in (first_run / arch).iterdir()}
        assert {"best.pt", "last.pt", "history.json", "eval.json"} <= files
        report = json.loads((first_run / arch / "eval.json").read_text())
        assert report["checkpoint"]["arch"] == arch
        assert report["data"]["split"] == "test" and report["n"] == 12
        assert report["training"]["hparams"]["max_steps_per_epoch"] == 2


def test_comparison_json_and_markdown_match_the_evaluations(first_run: Path) -> None:
    comparison = json.loads((first_run / "comparison.json").read_text())
    assert comparison["split"] == "test"
    assert [r["arch"] for r in comparison["results"]] == ARCHS
    md = (first_run / "comparison.md").read_text().splitlines()
    assert md[0] == "# Architecture comparison (test split)"
    header = [c.strip() for c in md[2].strip("|").split("|")]
    assert header == [
        "Network", *[f"Sn {c}" for c in CLASSES], "Macro Sn", "Accuracy", "95% CI of error",
        "Median lung focus", "Flagged", "Right & in lungs",
    ]  # fmt: skip
    table = md[4 : md.index("", 4)]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table}
    assert list(rows) == ARCHS
    for result in comparison["results"]:
        report: dict[str, Any] = json.loads((first_run / result["arch"] / "eval.json").read_text())
        assert result["accuracy"] == report["accuracy"]
        assert result["sensitivity"] == {c: report["per_class"][c]["sensitivity"] for c in CLASSES}
        cells = rows[result["arch"]]
        assert cells[1:5] == [f"{100 * report['per_class'][c]['sensitivity']:.1f}" for c in CLASSES]
        assert cells[6] == f"{100 * report['accuracy']:.1f}"
        focus = report["lung_focus"]["overall"]
        assert result["lung_focus"] == focus
        assert cells[8:] == [f"{100 * focus[k]:.1f}" for k in ("median", "flagged_share", "right_for_right_reasons")]
        three = report["three_group"]
        assert result["three_group"]["covid19_sensitivity"] == three["covid19_sensitivity"]
        assert result["confound"] == report["confound"]


def test_comparison_markdown_has_the_confound_check(first_run: Path) -> None:
    comparison = json.loads((first_run / "comparison.json").read_text())
    md = (first_run / "comparison.md").read_text().splitlines()
    assert "## Confound check (every film, partial labels included)" in md
    for result in comparison["results"]:
        kermany = result["confound"]["by_source"]["kermany"]  # the small dataset's children, all non-COVID
        share = kermany["non_covid_called_covid19_share"]
        assert f"| {result['arch']} | source kermany | 9 | {100 * share:.1f} | 0 | – |  |" in md
        rows = [line for line in md if line.startswith(f"| {result['arch']} | ")]
        assert [line.split("|")[2].strip() for line in rows if "| age " in line] == ["age adult", "age child"]


def test_sensitivity_chart_is_a_png(first_run: Path) -> None:
    data = (first_run / "sensitivity.png").read_bytes()
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.width > 300 and img.height > 200


def test_second_run_skips_finished_architectures(
    first_run: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {arch: mtimes(first_run / arch) for arch in ARCHS}
    comparison_before = (first_run / "comparison.json").read_text()
    capsys.readouterr()
    assert main(benchmark(small_dataset, first_run)) == 0
    out = capsys.readouterr().out
    for arch in ARCHS:
        assert f"{arch}: already evaluated, skipping" in out
        assert mtimes(first_run / arch) == before[arch], f"{arch} was trained or evaluated again"
    assert "training" not in out
    assert (first_run / "comparison.json").read_text() == comparison_before


def test_a_trained_but_unevaluated_architecture_is_evaluated_not_retrained(
    first_run: Path, small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interruption after training: last.pt is complete, eval.json missing."""
    run = tmp_path / "bench"
    shutil.copytree(first_run, run)
    arch = ARCHS[1]
    (run / arch / "eval.json").unlink()
    weights_before = {n: t for n, t in mtimes(run / arch).items() if n.endswith(".pt")}
    capsys.readouterr()
    assert main(benchmark(small_dataset, run)) == 0
    out = capsys.readouterr().out
    assert f"{ARCHS[0]}: already evaluated, skipping" in out
    assert f"resuming {arch} from epoch 2" in out
    after = mtimes(run / arch)
    assert {n: t for n, t in after.items() if n.endswith(".pt")} == weights_before
    assert "eval.json" in after
