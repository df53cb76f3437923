"""The retraining job's data helpers on manifests with partial-label (`pneumonia`) rows, one or several folders."""

from __future__ import annotations

import csv
from pathlib import Path

from app.services.storage import sha256_bytes
from app.services.training_data import holdout_hashes, holdout_hashes_of, write_comparison_manifest
from ml import CLASSES
from ml.data import read_manifest
from tests.support.training import write_tiny_manifest

S1 = ("normal", "covid19")


def adult_subset(adult_dir: Path, out: Path) -> list[dict[str, str]]:
    """A manifest of 2 val pneumonia films, 1 val normal film and 1 train pneumonia film (absolute paths)."""
    with (adult_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    want = {("val", "pneumonia"): 2, ("val", "normal"): 1, ("train", "pneumonia"): 1}
    chosen = []
    for (split, label), n in want.items():
        chosen += [r for r in rows if r["split"] == split and r["label"] == label][:n]
    for r in chosen:
        r["path"] = str((adult_dir / r["path"]).resolve())
    out.mkdir(parents=True)
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(chosen[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return chosen


def test_holdout_hashes_and_comparison_manifest_accept_pneumonia_rows(cxr_adult_data_dir: Path, tmp_path: Path) -> None:
    rows = adult_subset(cxr_adult_data_dir, tmp_path / "adult")
    hashes = holdout_hashes(tmp_path / "adult", cache_dir=tmp_path / "cache")
    held_out = {sha256_bytes(Path(r["path"]).read_bytes()) for r in rows if r["split"] != "train"}
    assert hashes["bytes"] == held_out and len(hashes["pixels"]) == 3  # pneumonia val films are held out too

    # a four-class model is compared on the pneumonia films too (three-group and confound figures count
    # them); a normal-vs-COVID-19 model on the normal film only
    compared = write_comparison_manifest([tmp_path / "adult"], tmp_path / "cmp", split="val", classes=CLASSES)
    assert sorted(r.label for r in read_manifest(compared)) == ["normal", "pneumonia", "pneumonia"]
    assert {r.age_group for r in read_manifest(compared)} == {"adult"}
    s1 = write_comparison_manifest([tmp_path / "adult"], tmp_path / "cmp-s1", split="val", classes=S1)
    assert [r.label for r in read_manifest(s1)] == ["normal"]


def test_holdout_and_comparison_cover_every_dataset_folder(
    cxr_data_dir: Path, cxr_adult_data_dir: Path, tmp_path: Path
) -> None:
    adult = adult_subset(cxr_adult_data_dir, tmp_path / "adult")
    cxr = write_tiny_manifest(
        cxr_data_dir, tmp_path / "cxr", {("val", "normal", "kermany"): 1, ("train", "normal", "kermany"): 1}
    )
    folders = [tmp_path / "cxr", tmp_path / "adult"]
    hashes = holdout_hashes_of(folders, cache_dir=tmp_path / "cache")
    held_out = [r["path"] for r in adult if r["split"] != "train"]
    held_out += [r.path for r in read_manifest(cxr) if r.split == "val"]
    assert hashes["bytes"] == {sha256_bytes(Path(p).read_bytes()) for p in held_out} and len(hashes["bytes"]) == 4
    compared = read_manifest(write_comparison_manifest(folders, tmp_path / "cmp", split="val", classes=CLASSES))
    assert sorted((r.source, r.label) for r in compared) == [
        ("kermany", "normal"), ("nih", "normal"), ("nih", "pneumonia"), ("nih", "pneumonia"),
    ]  # fmt: skip
