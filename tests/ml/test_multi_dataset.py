"""Training and evaluating on two manifests at once (real films of cxr and cxr-adult), with the partial
label `pneumonia` in both the training and the evaluated rows."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from ml import CLASSES
from ml.checkpoints import read_meta
from ml.cli import CLIError, default_dataset_dirs, main
from ml.data import Record, manifest_sha256
from ml.evaluate import evaluate_checkpoint, format_table
from ml.train import TrainConfig, train
from tests.ml.conftest import pick_records, write_manifest

CXR_SUBSET = {
    **{("train", c): 2 for c in CLASSES},
    **{("val", c): 1 for c in CLASSES},
    **{("test", c): 1 for c in CLASSES},
}
ADULT_SUBSET = {
    ("train", "pneumonia"): 4,
    ("train", "normal"): 2,
    ("train", "covid19"): 2,
    ("val", "pneumonia"): 2,
    ("val", "normal"): 1,
    ("val", "covid19"): 1,
    ("test", "pneumonia"): 3,
    ("test", "normal"): 1,
    ("test", "covid19"): 1,
}


@pytest.fixture(scope="module")
def two_manifests(
    real_records: list[Record], adult_records: list[Record], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    cxr = tmp_path_factory.mktemp("cxr-part")
    adult = tmp_path_factory.mktemp("adult-part")
    write_manifest(cxr, pick_records(real_records, CXR_SUBSET))
    write_manifest(adult, pick_records(adult_records, ADULT_SUBSET))
    return cxr, adult


@pytest.fixture(scope="module")
def trained(two_manifests: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cxr, adult = two_manifests
    events: list[dict[str, Any]] = []
    config = TrainConfig(
        arch="resnet18",
        data_dirs=[str(cxr), str(adult)],
        out_dir=str(tmp_path_factory.mktemp("two-manifests")),
        epochs=2,
        batch_size=8,
        input_size=64,
        augment=False,
        optimizer="adamw",
        weight_decay=0.05,
        lr_schedule="onecycle",
        label_smoothing=0.1,
        max_steps_per_epoch=2,
    )
    return {"summary": train(config, callback=events.append), "events": events}


def test_two_manifests_train_with_the_partial_label(trained: dict[str, Any], two_manifests: tuple[Path, Path]) -> None:
    cxr, adult = two_manifests
    start = trained["events"][0]
    assert start["type"] == "start" and start["train_images"] == 8 + 8 and start["val_images"] == 4 + 4
    history = trained["summary"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    meta = read_meta(trained["summary"]["best_checkpoint"])
    data = meta.data
    assert data is not None
    assert list(data.manifests.items()) == [
        (str(cxr.resolve()), manifest_sha256(cxr)),
        (str(adult.resolve()), manifest_sha256(adult)),
    ]
    assert data.train_counts == {"normal": 4, "bacterial": 2, "viral": 2, "covid19": 4, "pneumonia": 4}
    assert data.val_counts["pneumonia"] == 2
    assert meta.hparams["optimizer"] == "adamw" and meta.hparams["lr_schedule"] == "onecycle"
    # validation's 4-class metrics count the 4-class rows only (6 of 8)
    assert sum(map(sum, meta.metrics["val"]["confusion_matrix"])) == 6


def test_evaluate_a_manifest_with_pneumonia_rows(trained: dict[str, Any], two_manifests: tuple[Path, Path]) -> None:
    _, adult = two_manifests
    report = evaluate_checkpoint(trained["summary"]["best_checkpoint"], adult, split="test", lung_threshold=0.5)
    # 4-class figures over the normal and COVID-19 films; the 3 pneumonia films are counted apart
    assert report["n"] == 2 and sum(map(sum, report["confusion_matrix"])) == 2
    assert report["per_class"]["normal"]["support"] == 1 and report["per_class"]["covid19"]["support"] == 1
    assert report["partial_label_rows"]["pneumonia"]["n"] == 3
    assert 0 <= report["partial_label_rows"]["pneumonia"]["called_a_candidate"] <= 3
    # per source as well: nih's pneumonia films are not in its 4-class figures
    assert set(report["by_source"]) == {"nih", "cohen2"} and report["by_source"]["nih"]["n"] == 1
    assert report["lung_focus"]["overall"]["n"] == 5  # every film, pneumonia included
    assert "pneumonia rows (partial label, not in the 4-class figures): 3" in format_table(report)


def test_evaluate_cli_takes_several_data_folders(
    trained: dict[str, Any], two_manifests: tuple[Path, Path], tmp_path: Path
) -> None:
    cxr, adult = two_manifests
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--checkpoint", trained["summary"]["best_checkpoint"], "--no-lung-focus"]
    assert main([*argv, "--data", str(cxr), "--data", str(adult), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [m["data_dir"] for m in report["data"]["manifests"]] == [str(cxr.resolve()), str(adult.resolve())]
    assert report["n"] == 4 + 2 and report["partial_label_rows"]["pneumonia"]["n"] == 3


def test_default_data_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CXR_DATASET_DIRS", raising=False)
    monkeypatch.delenv("CXR_DATASET_DIR", raising=False)
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    assert default_dataset_dirs() == [str(shared / "cxr"), str(shared / "cxr-adult")]
    monkeypatch.setenv("CXR_DATASET_DIR", str(tmp_path / "one"))
    assert default_dataset_dirs() == [str(tmp_path / "one")]
    monkeypatch.setenv("CXR_DATASET_DIRS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert default_dataset_dirs() == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_default_data_folders_as_a_json_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_DATASET_DIRS", json.dumps([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert default_dataset_dirs() == [str(tmp_path / "a"), str(tmp_path / "b")]
    monkeypatch.setenv("CXR_DATASET_DIRS", "[not json")
    with pytest.raises(CLIError, match="CXR_DATASET_DIRS looks like a JSON list"):
        default_dataset_dirs()
