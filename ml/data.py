"""Manifest datasets, the paper's three scenarios, and a decoded-image cache.

A dataset is a folder with `manifest.csv` (columns `path,label,source,patient_id,view,split`, paths
relative to the folder). Splits are taken from the manifest as they are — never reshuffled — and a
patient found in two splits is an error, so no validation or test film can leak into training.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ml import CLASSES
from ml.transforms import load_grayscale, resize_square

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "source", "patient_id", "view", "split")


class ManifestError(ValueError):
    """The manifest is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Record:
    path: Path
    label: str
    source: str
    patient_id: str
    view: str
    split: str

    @property
    def label_index(self) -> int:
        return CLASSES.index(self.label)


@dataclass(frozen=True)
class Scenario:
    name: str
    classes: tuple[str, ...]
    """The classes this scenario trains and evaluates on (a subset of CLASSES, in CLASSES order)."""
    max_train_per_class: int | None
    cap_exempt: tuple[str, ...] = ()
    description: str = ""


SCENARIOS: dict[str, Scenario] = {
    "s1": Scenario("s1", ("normal", "covid19"), None, description="normal vs COVID-19"),
    "s2": Scenario("s2", CLASSES, None, description="all four classes, all training data"),
    "s3": Scenario(
        "s3", CLASSES, 350, cap_exempt=("covid19",),
        description="four classes, at most 350 training images per non-COVID class (all COVID-19)",
    ),
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


def manifest_path(data_dir: str | os.PathLike[str]) -> Path:
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"no manifest.csv in {data_dir}")
    return path


def manifest_sha256(data_dir: str | os.PathLike[str]) -> str:
    return hashlib.sha256(manifest_path(data_dir).read_bytes()).hexdigest()


def read_manifest(data_dir: str | os.PathLike[str]) -> list[Record]:
    """All rows of `data_dir/manifest.csv`, validated.

    Raises `ManifestError` for missing columns, unknown labels or splits, or a patient in two splits.
    """
    path = manifest_path(data_dir)
    root = path.parent.resolve()
    records: list[Record] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            label = row["label"].strip()
            if label not in CLASSES:
                raise ManifestError(f"{path}:{line}: unknown label {label!r} (expected one of {CLASSES})")
            split = row["split"].strip()
            if not split:
                raise ManifestError(f"{path}:{line}: empty split")
            records.append(
                Record(
                    path=root / row["path"].strip(),
                    label=label,
                    source=row["source"].strip(),
                    patient_id=row["patient_id"].strip(),
                    view=row["view"].strip(),
                    split=split,
                )
            )
    check_patient_disjoint(records, where=str(path))
    return records


def check_patient_disjoint(records: Iterable[Record], *, where: str = "manifest") -> None:
    splits_of: dict[str, set[str]] = {}
    for r in records:
        splits_of.setdefault(r.patient_id, set()).add(r.split)
    mixed = sorted(p for p, s in splits_of.items() if len(s) > 1)
    if mixed:
        shown = ", ".join(f"{p} ({'/'.join(sorted(splits_of[p]))})" for p in mixed[:5])
        raise ManifestError(f"{where}: {len(mixed)} patient(s) appear in more than one split: {shown}")


def select(records: Sequence[Record], scenario: Scenario, split: str, *, seed: int = 0) -> list[Record]:
    """The records of one split that belong to a scenario.

    The per-class cap (scenario s3) applies to the training split only; which images are kept is a
    seeded choice, stable for a given seed and manifest.
    """
    chosen = [r for r in records if r.split == split and r.label in scenario.classes]
    if scenario.max_train_per_class is None or split != "train":
        return chosen
    rng = random.Random(seed)
    kept: list[Record] = []
    for label in scenario.classes:
        of_label = [r for r in chosen if r.label == label]
        if label not in scenario.cap_exempt and len(of_label) > scenario.max_train_per_class:
            of_label = sorted(rng.sample(of_label, scenario.max_train_per_class), key=lambda r: str(r.path))
        kept.extend(of_label)
    return kept


def class_counts(records: Iterable[Record]) -> dict[str, int]:
    counts = Counter(r.label for r in records)
    return {c: counts.get(c, 0) for c in CLASSES}


# --------------------------------------------------------------------------- decoded image cache


@dataclass
class LoadedImages:
    """Films decoded and resized to size×size, with the records they came from."""

    records: list[Record]
    images: np.ndarray  # N×S×S uint8
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of unreadable files

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label_index for r in self.records], dtype=np.int64)


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXR_CACHE_DIR") or Path.home() / ".cache" / "cxr-review")


def load_images(
    records: Sequence[Record],
    size: int,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadedImages:
    """Decode and resize every record's film. Unreadable files are skipped and listed, never silently.

    Decoded arrays are cached on disk (`cache_dir`, default `$CXR_CACHE_DIR` or ~/.cache/cxr-review),
    keyed by the files' paths, sizes and modification times, so a second run starts at once.
    """
    cache_dir = cache_dir or default_cache_dir()
    key = hashlib.sha256(str(size).encode())
    for r in records:
        try:
            st = r.path.stat()
            key.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            key.update(f"{r.path}|missing\n".encode())
    cache_file = cache_dir / f"images-{size}-{key.hexdigest()[:24]}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                ok = z["ok"]
                images = z["images"]
                errors = [str(e) for e in z["errors"]]
            kept = [r for r, good in zip(records, ok, strict=True) if good]
            bad = [r for r, good in zip(records, ok, strict=True) if not good]
            return LoadedImages(kept, images, [(str(r.path), e) for r, e in zip(bad, errors, strict=True)])
        except (OSError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable image cache %s: %s", cache_file, exc)

    arrays: list[np.ndarray] = []
    ok_flags: list[bool] = []
    skipped: list[tuple[str, str]] = []
    for i, r in enumerate(records):
        try:
            arrays.append(resize_square(load_grayscale(str(r.path)), size))
            ok_flags.append(True)
        except (OSError, ValueError, SyntaxError) as exc:
            ok_flags.append(False)
            skipped.append((str(r.path), f"{type(exc).__name__}: {exc}"))
        if progress is not None:
            progress(i + 1, len(records))
    images = np.stack(arrays) if arrays else np.zeros((0, size, size), dtype=np.uint8)
    if skipped:
        log.warning("skipped %d unreadable image(s): %s", len(skipped), "; ".join(p for p, _ in skipped[:5]))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # per-process temp name: several DDP ranks may build the same cache at once
        tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, ok=np.array(ok_flags, dtype=bool),
                 errors=np.array([e for _, e in skipped], dtype=str))
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.warning("could not write image cache %s: %s", cache_file, exc)
    kept = [r for r, good in zip(records, ok_flags, strict=True) if good]
    return LoadedImages(kept, images, skipped)


class XrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decoded films as 1×S×S uint8 tensors with class indices; `augment` runs per sample."""

    def __init__(self, loaded: LoadedImages, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.images = loaded.images
        self.labels = loaded.labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).unsqueeze(0)
        if self.augment is not None:
            image = self.augment(image)
        return image, int(self.labels[index])
