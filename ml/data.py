"""Manifest datasets, the paper's three scenarios, and a decoded-image cache.

A dataset is a folder with `manifest.csv` (columns `path,label,source,patient_id,view,split`, paths
relative to the folder; optional `age`, `age_group` and `regions`, reviewers' boxes as JSON, see
`Region`). Splits are taken from the manifest as they are — never reshuffled — and a patient found in
two splits is an error, so no validation or test film can leak into training. `read_manifests` reads
several folders at once; there a patient must also have one split across all of them.

Labels are the four CLASSES or a *partial* label (`PARTIAL_LABELS`): `pneumonia` is non-COVID
pneumonia of unknown organism, i.e. "bacterial or viral". A record's `label_index` (the training
target) is its class index 0..3, or `len(CLASSES) + k` for the k-th partial label. A scenario keeps a
partial label's rows only when all of its candidate classes are active (s1 drops `pneumonia`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ml import CLASSES
from ml.lung_crop import DEFAULT_INPUT_MODE, DEFAULT_MARGIN, Box, check_input_mode, crop, lung_box
from ml.transforms import load_grayscale, resize_square

if TYPE_CHECKING:
    from ml.lungseg.inference import LungSegmenter

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "source", "patient_id", "view", "split")
OPTIONAL_COLUMNS = ("age", "age_group", "regions")
REGION_KINDS = ("wrong_evidence", "finding")

PARTIAL_LABELS: dict[str, tuple[str, ...]] = {"pneumonia": ("bacterial", "viral")}
"""Partial label → the classes it may be (the film is one of them; which one is unknown)."""
LABELS: tuple[str, ...] = (*CLASSES, *PARTIAL_LABELS)
"""Every label a manifest may hold, in target-index order: CLASSES first, then the partial labels."""


class ManifestError(ValueError):
    """The manifest is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Region:
    """A reviewer's box on a film: `wrong_evidence` (the model looked there and should not: text, a device,
    outside the lungs) or `finding` (where the finding really is). `box` is (x0, y0, x1, y1) as fractions of
    the film's width (x) and height (y), 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1."""

    kind: str
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise ValueError(f"region kind must be one of {', '.join(REGION_KINDS)}, got {self.kind!r}")
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"region box must have 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1, got {list(self.box)}")

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "box": list(self.box)}


def parse_regions(text: str) -> tuple[Region, ...]:
    """The `regions` manifest cell: blank, or a JSON list of {"kind", "box": [x0, y0, x1, y1]}. ValueError if not."""
    if not text.strip():
        return ()
    items = json.loads(text)
    if not isinstance(items, list) or not all(isinstance(i, dict) and set(i) == {"kind", "box"} for i in items):
        raise ValueError('regions must be a JSON list of {"kind", "box"} objects')
    out = []
    for item in items:
        box = item["box"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            raise ValueError(f"a region box must be four numbers [x0, y0, x1, y1], got {box!r}")
        out.append(Region(str(item["kind"]), (float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
    return tuple(out)


@dataclass(frozen=True)
class Record:
    path: Path
    label: str
    source: str
    patient_id: str
    view: str
    split: str
    age: int | None = None
    age_group: str = ""
    """`child`, `adult` or "" (blank or no such column)."""
    regions: tuple[Region, ...] = ()
    """Reviewers' boxes on this film (reviewed uploads), used by the explanation loss (`ml.explanation`)."""

    @property
    def label_index(self) -> int:
        """The training target: 0..3 for CLASSES, `len(CLASSES) + k` for the k-th partial label."""
        return LABELS.index(self.label)

    @property
    def is_partial(self) -> bool:
        return self.label in PARTIAL_LABELS


def is_full_label(target: int) -> bool:
    """Whether a target index is one of the four CLASSES (not a partial label)."""
    return 0 <= target < len(CLASSES)


def target_matches(target: int, predicted: int) -> bool:
    """A prediction (a class index) is right for a target: the class itself, or a partial label's candidate."""
    if is_full_label(target):
        return target == predicted
    return CLASSES[predicted] in PARTIAL_LABELS[LABELS[target]]


def scenario_labels(classes: Iterable[str]) -> tuple[str, ...]:
    """The labels whose rows a scenario with these active classes keeps: the classes, plus every partial
    label all of whose candidates are active."""
    active = tuple(classes)
    return (*active, *(p for p, cands in PARTIAL_LABELS.items() if set(cands) <= set(active)))


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
        "s3",
        CLASSES,
        350,
        cap_exempt=("covid19",),
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

    Raises `ManifestError` for missing columns, unknown labels or splits, a bad age, or a patient in
    two splits. `age` and `age_group` are optional columns (blank: None and "").
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
            if label not in LABELS:
                raise ManifestError(f"{path}:{line}: unknown label {label!r} (expected one of {LABELS})")
            split = row["split"].strip()
            if not split:
                raise ManifestError(f"{path}:{line}: empty split")
            age_text = (row.get("age") or "").strip()
            if age_text and not (age_text.isdigit() and int(age_text) < 150):
                raise ManifestError(f"{path}:{line}: age must be whole years (0-149) or blank, got {age_text!r}")
            try:
                regions = parse_regions(row.get("regions") or "")
            except ValueError as exc:
                raise ManifestError(f"{path}:{line}: {exc}") from None
            records.append(
                Record(
                    path=root / row["path"].strip(),
                    label=label,
                    source=row["source"].strip(),
                    patient_id=row["patient_id"].strip(),
                    view=row["view"].strip(),
                    split=split,
                    age=int(age_text) if age_text else None,
                    age_group=(row.get("age_group") or "").strip(),
                    regions=regions,
                )
            )
    check_patient_disjoint(records, where=str(path))
    return records


def read_manifests(data_dirs: Sequence[str | os.PathLike[str]]) -> list[Record]:
    """The rows of several manifest folders, in order (each keeps its `source`).

    A patient found in two manifests must have one split in both, else `ManifestError` naming the
    patient and both manifests. A folder given twice is an error too (its rows would count twice).
    """
    if not data_dirs:
        raise ManifestError("no dataset folder given")
    seen_dirs: dict[Path, str] = {}
    first_seen: dict[str, tuple[str, str]] = {}  # patient -> (split, manifest)
    records: list[Record] = []
    for data_dir in data_dirs:
        path = manifest_path(data_dir)
        resolved = path.resolve()
        if resolved in seen_dirs:
            raise ManifestError(f"dataset folder given twice: {data_dir} (same manifest as {seen_dirs[resolved]})")
        seen_dirs[resolved] = str(data_dir)
        rows = read_manifest(data_dir)
        for r in rows:
            split, where = first_seen.setdefault(r.patient_id, (r.split, str(path)))
            if where != str(path) and split != r.split:
                raise ManifestError(
                    f"patient {r.patient_id} is in split {split!r} of {where} but in split {r.split!r} of {path}: "
                    "a patient must have one split across all manifests"
                )
        records += rows
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

    Partial-label rows are kept when all their candidate classes are active (`scenario_labels`). The
    per-class cap (scenario s3) applies to the training split only, and a partial label is capped as
    its own group; which images are kept is a seeded choice, stable for a given seed and manifest.
    """
    labels = scenario_labels(scenario.classes)
    chosen = [r for r in records if r.split == split and r.label in labels]
    if scenario.max_train_per_class is None or split != "train":
        return chosen
    rng = random.Random(seed)
    kept: list[Record] = []
    for label in labels:
        of_label = [r for r in chosen if r.label == label]
        if label not in scenario.cap_exempt and len(of_label) > scenario.max_train_per_class:
            of_label = sorted(rng.sample(of_label, scenario.max_train_per_class), key=lambda r: str(r.path))
        kept.extend(of_label)
    return kept


def class_counts(records: Iterable[Record]) -> dict[str, int]:
    """Images per class (every one of CLASSES, 0 included), then per partial label present."""
    counts = Counter(r.label for r in records)
    return {c: counts.get(c, 0) for c in CLASSES} | {p: counts[p] for p in PARTIAL_LABELS if counts.get(p)}


# --------------------------------------------------------------------------- decoded image cache


@dataclass
class LoadedImages:
    """Films decoded and resized to size×size (or their lung crops), with the records they came from."""

    records: list[Record]
    images: np.ndarray  # N×S×S uint8
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of unreadable files
    lung_masks: np.ndarray | None = None
    """N×S×S bool lung masks in the frame of `images` (when loaded with a segmenter)."""
    boxes: list[Box | None] | None = None
    """The film region each image shows (lung-crop mode; None entries: the whole film)."""

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
    input_mode: str = DEFAULT_INPUT_MODE,
    segmenter: LungSegmenter | None = None,
    crop_margin: float = DEFAULT_MARGIN,
) -> LoadedImages:
    """Decode and resize every record's film. Unreadable files are skipped and listed, never silently.

    With a `segmenter`, each film's lung mask is computed too (`lung_masks`, in the images' frame);
    `input_mode="lung-crop"` (which needs one) crops each film to its lungs' box plus `crop_margin`
    before resizing (see `ml.lung_crop`). Decoded arrays are cached on disk (`cache_dir`, default
    `$CXR_CACHE_DIR` or ~/.cache/cxr-review), keyed by the files' paths, sizes and modification times,
    the mode and the segmenter's checksum, so a second run starts at once.
    """
    check_input_mode(input_mode)
    if input_mode == "lung-crop" and segmenter is None:
        raise ValueError("input mode 'lung-crop' needs a lung segmenter")
    cache_dir = cache_dir or default_cache_dir()
    key = hashlib.sha256(str(size).encode())
    prefix = f"images-{size}"
    if segmenter is not None:
        key.update(f"|{input_mode}|{crop_margin}|{segmenter.checkpoint_sha256}|{segmenter.threshold}\n".encode())
        prefix = f"images-{size}-{input_mode}"
    for r in records:
        try:
            st = r.path.stat()
            key.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            key.update(f"{r.path}|missing\n".encode())
    cache_file = cache_dir / f"{prefix}-{key.hexdigest()[:24]}.npz"
    cached = _read_cache(cache_file, records, size, with_masks=segmenter is not None)
    if cached is not None:
        return cached

    arrays: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    boxes: list[Box | None] = []
    ok_flags: list[bool] = []
    skipped: list[tuple[str, str]] = []
    for i, r in enumerate(records):
        try:
            gray = load_grayscale(str(r.path))
            if segmenter is None:
                arrays.append(resize_square(gray, size))
            else:
                film_mask = segmenter.predict_small(gray)
                box = lung_box(film_mask, crop_margin) if input_mode == "lung-crop" else None
                arrays.append(resize_square(crop(gray, box), size))
                masks.append(resize_mask(crop(film_mask, box), size))
                boxes.append(box)
            ok_flags.append(True)
        except (OSError, ValueError, SyntaxError) as exc:
            ok_flags.append(False)
            skipped.append((str(r.path), f"{type(exc).__name__}: {exc}"))
        if progress is not None:
            progress(i + 1, len(records))
    images = np.stack(arrays) if arrays else np.zeros((0, size, size), dtype=np.uint8)
    if skipped:
        log.warning("skipped %d unreadable image(s): %s", len(skipped), "; ".join(p for p, _ in skipped[:5]))
    extra: dict[str, np.ndarray] = {}
    mask_array = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)
    if segmenter is not None:
        extra = {
            "masks": np.packbits(mask_array, axis=-1),
            "boxes": np.array([b.as_tuple() if b else (-1.0,) * 4 for b in boxes], dtype=np.float64).reshape(-1, 4),
        }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # per-process temp name: several DDP ranks may build the same cache at once
        tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
        payload = {
            "images": images,
            "ok": np.array(ok_flags, dtype=bool),
            "errors": np.array([e for _, e in skipped], dtype=str),
            **extra,
        }
        np.savez(tmp, **payload)  # type: ignore[arg-type]  # numpy's stub types **kwds as its bool option
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.warning("could not write image cache %s: %s", cache_file, exc)
    kept = [r for r, good in zip(records, ok_flags, strict=True) if good]
    if segmenter is None:
        return LoadedImages(kept, images, skipped)
    return LoadedImages(kept, images, skipped, lung_masks=mask_array, boxes=boxes)


def _read_cache(cache_file: Path, records: Sequence[Record], size: int, *, with_masks: bool) -> LoadedImages | None:
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            ok = z["ok"]
            images = z["images"]
            errors = [str(e) for e in z["errors"]]
            masks = np.unpackbits(z["masks"], axis=-1, count=size).astype(bool) if with_masks else None
            boxes = [None if b[0] < 0 else Box(*(float(v) for v in b)) for b in z["boxes"]] if with_masks else None
        kept = [r for r, good in zip(records, ok, strict=True) if good]
        bad = [r for r, good in zip(records, ok, strict=True) if not good]
        return LoadedImages(
            kept, images, [(str(r.path), e) for r, e in zip(bad, errors, strict=True)], lung_masks=masks, boxes=boxes
        )
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable image cache %s: %s", cache_file, exc)
        return None


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """H×W bool → size×size bool (bilinear, then ≥ 0.5)."""
    m = np.asarray(mask).astype(np.uint8) * 255
    if m.shape == (size, size):
        return m >= 128
    return np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.BILINEAR)) >= 128


class XrayDataset(Dataset[tuple[Any, ...]]):
    """Decoded films as 1×S×S uint8 tensors with target indices (`Record.label_index`): (image, target).

    With `allowed` (N×S×S bool, `ml.explanation.allowed_masks`) each item is (image, target, mask), the mask
    1×S×S uint8 (1: allowed), and `augment` (per sample) moves image and mask by the same random affine
    (torchvision v2: the mask as a `tv_tensors.Mask`, nearest-neighbour; intensity changes touch the image only).
    """

    def __init__(
        self, loaded: LoadedImages, augment: Callable[..., Any] | None = None, allowed: np.ndarray | None = None
    ):
        if allowed is not None and allowed.shape != loaded.images.shape:
            raise ValueError(f"allowed masks {allowed.shape} do not match the images {loaded.images.shape}")
        self.images = loaded.images
        self.labels = loaded.labels
        self.augment = augment
        self.allowed = allowed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image = torch.from_numpy(self.images[index]).unsqueeze(0)
        label = int(self.labels[index])
        if self.allowed is None:
            return (self.augment(image) if self.augment is not None else image), label
        mask = torch.from_numpy(self.allowed[index].astype(np.uint8)).unsqueeze(0)
        if self.augment is not None:
            image, mask = self.augment(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), label, mask.as_subclass(torch.Tensor)
