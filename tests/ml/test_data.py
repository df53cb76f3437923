"""Manifests, scenarios and image loading: synthetic manifests for the error cases, the real one for its promises."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml import CLASSES
from ml.data import (
    LABELS,
    SCENARIOS,
    ManifestError,
    Record,
    XrayDataset,
    class_counts,
    get_scenario,
    load_images,
    manifest_sha256,
    read_manifest,
    read_manifests,
    select,
    target_matches,
)

HEADER = "path,label,source,patient_id,view,split\n"


def write_film(path: Path, value: int, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Four readable films (one per class) and a manifest, patient-disjoint across splits."""
    rows = [
        ("images/a.png", "normal", "kermany", "p1", "AP", "train"),
        ("images/b.jpg", "bacterial", "kermany", "p2", "AP", "train"),
        ("images/c.png", "viral", "kermany", "p3", "AP", "val"),
        ("images/d.png", "covid19", "cohen", "p4", "PA", "test"),
    ]
    for i, row in enumerate(rows):
        write_film(tmp_path / row[0], 50 * (i + 1))
    (tmp_path / "manifest.csv").write_text(HEADER + "".join(",".join(r) + "\n" for r in rows))
    return tmp_path


def test_manifest_rows_become_records_with_resolved_paths(tiny_dataset: Path) -> None:
    records = read_manifest(tiny_dataset)
    assert [r.label for r in records] == list(CLASSES)
    assert records[0] == Record(tiny_dataset.resolve() / "images/a.png", "normal", "kermany", "p1", "AP", "train")
    assert all(r.path.is_file() for r in records)
    assert [r.label_index for r in records] == [0, 1, 2, 3]
    assert manifest_sha256(tiny_dataset) == hashlib.sha256((tiny_dataset / "manifest.csv").read_bytes()).hexdigest()


def test_pneumonia_is_a_partial_label_and_age_columns_are_read(tmp_path: Path) -> None:
    header = HEADER.strip() + ",age,age_group\n"
    rows = "a.png,pneumonia,nih,p1,AP,train,48,adult\nb.png,normal,kermany,p2,AP,train,,\n"
    (tmp_path / "manifest.csv").write_text(header + rows)
    pneumonia, normal = read_manifest(tmp_path)
    assert (pneumonia.label, pneumonia.label_index, pneumonia.is_partial) == ("pneumonia", len(CLASSES), True)
    assert (pneumonia.age, pneumonia.age_group) == (48, "adult")
    assert (normal.age, normal.age_group, normal.is_partial) == (None, "", False)
    assert (*CLASSES, "pneumonia") == LABELS
    # a pneumonia film called bacterial or viral is right, called normal or COVID-19 wrong
    assert [target_matches(len(CLASSES), p) for p in range(len(CLASSES))] == [False, True, True, False]


def test_manifest_without_age_columns_still_reads(tiny_dataset: Path) -> None:
    assert {(r.age, r.age_group) for r in read_manifest(tiny_dataset)} == {(None, "")}


def test_bad_age_is_refused_with_its_line(tmp_path: Path) -> None:
    header = HEADER.strip() + ",age,age_group\n"
    (tmp_path / "manifest.csv").write_text(
        header + "a.png,normal,k,p1,AP,train,40,adult\nb.png,normal,k,p2,AP,train,4x,\n"
    )
    with pytest.raises(ManifestError, match=r":3: age must be whole years"):
        read_manifest(tmp_path)


def write_rows(folder: Path, rows: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_text(HEADER + rows)
    return folder


def test_several_manifests_read_together_keep_their_rows_and_sources(tmp_path: Path) -> None:
    a = write_rows(tmp_path / "a", "x.png,normal,kermany,p1,AP,train\n")
    b = write_rows(tmp_path / "b", "y.png,pneumonia,nih,p2,PA,val\nz.png,covid19,cohen,p1,PA,train\n")
    records = read_manifests([a, b])
    assert [(r.path, r.source, r.split) for r in records] == [
        (a.resolve() / "x.png", "kermany", "train"),
        (b.resolve() / "y.png", "nih", "val"),
        (b.resolve() / "z.png", "cohen", "train"),  # p1 in both manifests, one split: fine
    ]


def test_patient_with_two_splits_across_manifests_is_refused_naming_both(tmp_path: Path) -> None:
    a = write_rows(tmp_path / "a", "x.png,normal,kermany,p1,AP,train\nw.png,normal,kermany,p3,AP,test\n")
    b = write_rows(tmp_path / "b", "y.png,covid19,cohen,p2,PA,train\nz.png,covid19,cohen,p3,PA,val\n")
    with pytest.raises(ManifestError) as caught:
        read_manifests([a, b])
    message = str(caught.value)
    assert "patient p3" in message and "'test'" in message and "'val'" in message
    assert str(a / "manifest.csv") in message and str(b / "manifest.csv") in message
    with pytest.raises(ManifestError, match="given twice"):
        read_manifests([a, tmp_path / "a" / "."])
    with pytest.raises(ManifestError, match="no dataset folder"):
        read_manifests([])


def test_manifest_may_point_at_films_elsewhere_by_absolute_path(tiny_dataset: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    film = (tiny_dataset / "images/a.png").resolve()
    (other / "manifest.csv").write_text(HEADER + f"{film},normal,kermany,p1,AP,train\n")
    (record,) = read_manifest(other)
    assert record.path == film


def test_missing_manifest_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest\.csv"):
        read_manifest(tmp_path)


def test_missing_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,label,source,view,split\nx.png,normal,kermany,AP,train\n")
    with pytest.raises(ManifestError, match="patient_id"):
        read_manifest(tmp_path)


def test_unknown_label_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(HEADER + "a.png,normal,k,p1,AP,train\nb.png,tuberculosis,k,p2,AP,train\n")
    with pytest.raises(ManifestError, match=r":3: unknown label 'tuberculosis'"):
        read_manifest(tmp_path)


def test_empty_split_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(HEADER + "a.png,normal,k,p1,AP,\n")
    with pytest.raises(ManifestError, match="empty split"):
        read_manifest(tmp_path)


def test_patient_in_two_splits_is_refused(tmp_path: Path) -> None:
    rows = "a.png,normal,k,p1,AP,train\nb.png,normal,k,p2,AP,val\nc.png,viral,k,p1,AP,test\n"
    (tmp_path / "manifest.csv").write_text(HEADER + rows)
    with pytest.raises(ManifestError, match=r"1 patient\(s\) appear in more than one split: p1 \(test/train\)"):
        read_manifest(tmp_path)


# --------------------------------------------------------------------------- scenarios


def fake_records(counts: dict[tuple[str, str], int]) -> list[Record]:
    """In-memory records (no files) with one patient per record."""
    out = []
    for (split, label), n in counts.items():
        for i in range(n):
            out.append(
                Record(Path(f"/x/{split}/{label}/{i:04d}.jpg"), label, "kermany", f"{label}{split}{i}", "AP", split)
            )
    return out


BIG = fake_records(
    {
        ("train", "normal"): 500,
        ("train", "bacterial"): 400,
        ("train", "viral"): 120,
        ("train", "covid19"): 600,
        ("val", "normal"): 400,
        ("val", "covid19"): 380,
    }
)


def test_scenario_s1_keeps_only_normal_and_covid() -> None:
    chosen = select(BIG, SCENARIOS["s1"], "train")
    assert class_counts(chosen) == {"normal": 500, "bacterial": 0, "viral": 0, "covid19": 600}
    assert SCENARIOS["s1"].classes == ("normal", "covid19")


def test_scenario_s2_keeps_everything_of_the_split() -> None:
    assert class_counts(select(BIG, SCENARIOS["s2"], "train")) == {
        "normal": 500,
        "bacterial": 400,
        "viral": 120,
        "covid19": 600,
    }
    assert len(select(BIG, SCENARIOS["s2"], "val")) == 780


def test_scenario_s3_caps_non_covid_training_classes_at_350() -> None:
    chosen = select(BIG, SCENARIOS["s3"], "train", seed=0)
    assert class_counts(chosen) == {"normal": 350, "bacterial": 350, "viral": 120, "covid19": 600}
    # a subset of the split, no duplicates
    assert len({r.path for r in chosen}) == len(chosen)
    assert {r.path for r in chosen} <= {r.path for r in BIG}
    # validation is never capped
    assert class_counts(select(BIG, SCENARIOS["s3"], "val")) == {
        "normal": 400,
        "bacterial": 0,
        "viral": 0,
        "covid19": 380,
    }


PNEUMONIA = fake_records({("train", "pneumonia"): 400, ("val", "pneumonia"): 30})


def test_s1_leaves_pneumonia_out_s2_keeps_it() -> None:
    assert class_counts(select(BIG + PNEUMONIA, SCENARIOS["s1"], "train")) == class_counts(
        select(BIG, SCENARIOS["s1"], "train")
    )
    s2 = class_counts(select(BIG + PNEUMONIA, SCENARIOS["s2"], "train"))
    assert s2 == {"normal": 500, "bacterial": 400, "viral": 120, "covid19": 600, "pneumonia": 400}
    assert class_counts(select(BIG + PNEUMONIA, SCENARIOS["s2"], "val"))["pneumonia"] == 30


def test_s3_caps_pneumonia_as_its_own_group() -> None:
    chosen = select(BIG + PNEUMONIA, SCENARIOS["s3"], "train", seed=0)
    assert class_counts(chosen) == {"normal": 350, "bacterial": 350, "viral": 120, "covid19": 600, "pneumonia": 350}
    assert class_counts(select(BIG + PNEUMONIA, SCENARIOS["s3"], "val"))["pneumonia"] == 30  # never capped


def test_scenario_s3_choice_is_deterministic_for_a_seed() -> None:
    first = select(BIG, SCENARIOS["s3"], "train", seed=7)
    again = select(list(BIG), SCENARIOS["s3"], "train", seed=7)
    other = select(BIG, SCENARIOS["s3"], "train", seed=8)
    assert first == again
    assert {r.path for r in first} != {r.path for r in other}


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="s1, s2, s3"):
        get_scenario("s4")


# --------------------------------------------------------------------------- loading images


def test_unreadable_images_are_skipped_and_reported(tiny_dataset: Path, tmp_path: Path, caplog) -> None:
    (tiny_dataset / "images/b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    missing = Record(tiny_dataset / "images/gone.png", "viral", "kermany", "p9", "AP", "train")
    records = [*read_manifest(tiny_dataset), missing]
    with caplog.at_level(logging.WARNING, logger="ml.data"):
        loaded = load_images(records, 16, cache_dir=tmp_path / "cache")
    assert [r.label for r in loaded.records] == ["normal", "viral", "covid19"]
    assert loaded.images.shape == (3, 16, 16) and loaded.images.dtype == np.uint8
    assert [Path(p).name for p, _ in loaded.skipped] == ["b.jpg", "gone.png"]
    assert all(err for _, err in loaded.skipped)
    assert "skipped 2 unreadable image(s)" in caplog.text
    np.testing.assert_array_equal(loaded.labels, [0, 2, 3])
    # the films' own grey levels came through the resize (they are flat)
    assert loaded.images[0].min() == loaded.images[0].max() == 50

    # a second call is served from the cache and reports the same skips
    again = load_images(records, 16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    np.testing.assert_array_equal(again.images, loaded.images)
    assert again.records == loaded.records and again.skipped == loaded.skipped


def test_cache_is_invalidated_when_a_film_changes(tiny_dataset: Path, tmp_path: Path) -> None:
    records = read_manifest(tiny_dataset)
    before = load_images(records, 8, cache_dir=tmp_path)
    write_film(tiny_dataset / "images/a.png", 222, size=(41, 30))  # new size → new cache key
    after = load_images(records, 8, cache_dir=tmp_path)
    assert before.images[0, 0, 0] == 50 and after.images[0, 0, 0] == 222


def test_dataset_yields_single_channel_uint8_films(tiny_dataset: Path, tmp_path: Path) -> None:
    loaded = load_images(read_manifest(tiny_dataset), 12, cache_dir=tmp_path)
    ds = XrayDataset(loaded)
    assert len(ds) == 4
    image, label = ds[3]
    assert image.shape == (1, 12, 12) and image.dtype == torch.uint8 and label == 3


# --------------------------------------------------------------------------- the real manifest


def test_real_manifest_is_patient_disjoint_and_has_every_class_in_every_split(real_records: list[Record]) -> None:
    splits_of: dict[str, set[str]] = {}
    for r in real_records:
        splits_of.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert {r.split for r in real_records} == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        counts = class_counts(r for r in real_records if r.split == split)
        assert all(counts[c] > 0 for c in CLASSES), (split, counts)
    assert all(r.path.is_file() for r in real_records[:50])


def test_s3_on_the_real_training_split(real_records: list[Record]) -> None:
    full = class_counts(select(real_records, SCENARIOS["s2"], "train"))
    capped = class_counts(select(real_records, SCENARIOS["s3"], "train", seed=0))
    assert capped["covid19"] == full["covid19"]
    for c in ("normal", "bacterial", "viral"):
        assert capped[c] == min(full[c], 350)
    assert full["bacterial"] > 350, "the real data has more bacterial films than the cap"


def test_both_real_manifests_read_together(cxr_data_dir: Path, cxr_adult_data_dir: Path) -> None:
    records = read_manifests([cxr_data_dir, cxr_adult_data_dir])
    train = select(records, SCENARIOS["s2"], "train")
    assert len(train) == 1253 + 679
    assert class_counts(train)["pneumonia"] == 250
    assert {r.age_group for r in records} == {"child", "adult"}
    assert len(select(records, SCENARIOS["s1"], "train")) == len([r for r in train if r.label in ("normal", "covid19")])
