"""Reviewed uploads as extra training data, without leaking held-out images into training.

An upload counts as reviewed when some verdict on it gives a diagnosis; its label is the latest
such diagnosis (any reviewer, any model). `export_reviewed_uploads` writes them as a manifest
folder whose rows are all in the `train` split (paths point at the stored decoded films), so
`ml train --extra-train-dir` adds them to the training set only; the dataset's own splits are
never touched or reshuffled.

Reviewers' boxes go with them: the manifest's `regions` column holds, per film, the boxes of the verdicts
that count (the latest per result and reviewer, any model), as JSON. Training with the explanation loss
turns "wrong evidence" boxes into forbidden and "finding" boxes into allowed regions for that film
(`ml.explanation`); the counts are returned with the export and shown in the job's report.

An upload is excluded when its original bytes (sha256) or its decoded pixels equal an image of the
validation or test split of any of the job's dataset folders: retraining on a held-out film would
make the new version's test figures meaningless. The exclusions are counted and recorded with the job.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Image, Prediction, Verdict
from app.services.errors import InvalidInputError
from app.services.reviews import latest_verdict_ids
from app.services.storage import FileStore, sha256_bytes
from ml import CLASSES
from ml.data import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, manifest_sha256, read_manifest, read_manifests, scenario_labels
from ml.imageio import ImageDecodeError, decode_image

log = logging.getLogger(__name__)

HOLDOUT_MAX_PIXELS = 100_000_000
UPLOAD_SOURCE = "upload"


def dataset_choices(settings: Settings) -> list[dict[str, Any]]:
    """The configured dataset folders as a job may name them: `name` and whether its manifest is there."""
    return [
        {"name": name, "available": (folder / "manifest.csv").is_file()}
        for name, folder in settings.resolved_dataset_dirs.items()
    ]


def chosen_dataset_dirs(settings: Settings, names: Sequence[str] | None) -> dict[str, Path]:
    """name → folder of the datasets a job names (None: every configured one, in the configured
    order). `InvalidInputError` (422) for a name that is not configured, listing the configured ones."""
    configured = settings.resolved_dataset_dirs
    if names is None:
        return dict(configured)
    unknown = [n for n in names if n not in configured]
    if unknown:
        raise InvalidInputError(
            f"unknown dataset(s) {', '.join(repr(n) for n in unknown)}; configured: {', '.join(configured)} "
            "(CXR_DATASET_DIRS)"
        )
    return {n: configured[n] for n in names}


def dataset_info(folders: dict[str, Path]) -> dict[str, Any]:
    """What a job records of its data: every folder's name, path and manifest sha256 (`manifests`);
    `data_dir` and `manifest_sha256` are the first folder's (as before several could be used)."""
    manifests = [{"name": n, "data_dir": str(d), "sha256": manifest_sha256(d)} for n, d in folders.items()]
    return {"data_dir": manifests[0]["data_dir"], "manifest_sha256": manifests[0]["sha256"], "manifests": manifests}


def pixel_sha256(gray: np.ndarray) -> str:
    """Content hash of a decoded 8-bit film (shape included)."""
    h = hashlib.sha256(f"{gray.shape[0]}x{gray.shape[1]}|".encode())
    h.update(np.ascontiguousarray(gray, dtype=np.uint8).tobytes())
    return h.hexdigest()


def reviewed_uploads(*, session: Session) -> dict[str, str]:
    """image sha256 → the latest reviewer diagnosis given for it (verdicts without one are ignored)."""
    rows = session.execute(
        select(Image.sha256, Verdict.diagnosis)
        .join(Prediction, Prediction.id == Verdict.prediction_id)
        .join(Image, Image.id == Prediction.image_id)
        .where(Verdict.diagnosis.is_not(None))
        .order_by(Verdict.id.desc())
    )
    latest: dict[str, str] = {}
    for sha, diagnosis in rows:
        if sha not in latest and diagnosis in CLASSES:
            latest[sha] = diagnosis
    return latest


def reviewed_regions(*, session: Session) -> dict[str, list[dict[str, Any]]]:
    """image sha256 → the reviewers' boxes on it, from the verdicts that count (latest per result and
    reviewer; see `reviews.latest_verdict_ids`), without repeats, oldest verdict first."""
    verdicts = list(session.scalars(select(Verdict).order_by(Verdict.id)))
    counting = latest_verdict_ids(verdicts)
    out: dict[str, list[dict[str, Any]]] = {}
    for v in verdicts:
        if v.id in counting and v.regions:
            boxes = out.setdefault(v.result.prediction.image.sha256, [])
            boxes += [r for r in v.regions if r not in boxes]
    return out


def holdout_hashes(
    dataset_dir: Path, *, cache_dir: Path, tick: Callable[[], None] = lambda: None
) -> dict[str, set[str]]:
    """sha256 of the bytes and of the decoded pixels of every non-train image of the dataset.

    Cached per manifest sha256 in `cache_dir` (decoding a few hundred films takes seconds).
    `tick()` is called every few images (the worker heartbeats from it).
    """
    key = manifest_sha256(dataset_dir)
    cache = cache_dir / f"holdout-hashes-{key[:24]}.json"
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            return {"bytes": set(data["bytes"]), "pixels": set(data["pixels"])}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable hash cache %s: %s", cache, exc)
    byte_hashes: set[str] = set()
    pixel_hashes: set[str] = set()
    for i, record in enumerate(r for r in read_manifest(dataset_dir) if r.split != "train"):
        if i % 25 == 0:
            tick()
        try:
            data = record.path.read_bytes()
        except OSError:
            continue  # unreadable: training skips it too
        byte_hashes.add(sha256_bytes(data))
        try:
            pixel_hashes.add(pixel_sha256(decode_image(data, max_pixels=HOLDOUT_MAX_PIXELS).gray))
        except ImageDecodeError:
            continue
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bytes": sorted(byte_hashes), "pixels": sorted(pixel_hashes)}))
    tmp.replace(cache)
    return {"bytes": byte_hashes, "pixels": pixel_hashes}


def holdout_hashes_of(
    dataset_dirs: Sequence[Path], *, cache_dir: Path, tick: Callable[[], None] = lambda: None
) -> dict[str, set[str]]:
    """`holdout_hashes` of several dataset folders together (each cached on its own)."""
    out: dict[str, set[str]] = {"bytes": set(), "pixels": set()}
    for folder in dataset_dirs:
        hashes = holdout_hashes(folder, cache_dir=cache_dir, tick=tick)
        out["bytes"] |= hashes["bytes"]
        out["pixels"] |= hashes["pixels"]
    return out


def export_reviewed_uploads(
    *,
    session: Session,
    store: FileStore,
    dataset_dirs: Sequence[Path],
    out_dir: Path,
    cache_dir: Path,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Write `out_dir/manifest.csv` (train split only) of the reviewed uploads that are not held-out
    images of any of `dataset_dirs`. Returns counts: `reviewed`, `added`, `excluded_holdout`,
    `missing_files`, `regions` (of the added films: how many carry boxes, and the boxes of each kind), and
    the manifest's sha256 (None when nothing was added and no folder was written)."""
    labels = reviewed_uploads(session=session)
    boxes = reviewed_regions(session=session)
    info: dict[str, Any] = {"reviewed": len(labels), "added": 0, "excluded_holdout": 0, "missing_files": 0}
    info["regions"] = {"films": 0, "wrong_evidence": 0, "finding": 0}
    if not labels:
        info["manifest_sha256"] = None
        return info
    holdout = holdout_hashes_of(dataset_dirs, cache_dir=cache_dir, tick=tick)
    rows: list[dict[str, str]] = []
    for i, (sha, label) in enumerate(sorted(labels.items())):
        if i % 25 == 0:
            tick()
        try:
            gray = store.read_gray(sha)  # the decoded film: derived from the original on first use
        except (FileNotFoundError, ImageDecodeError):
            info["missing_files"] += 1
            continue
        if sha in holdout["bytes"] or pixel_sha256(gray) in holdout["pixels"]:
            info["excluded_holdout"] += 1
            continue
        rows.append(
            {
                "path": str(store.gray_path(sha).resolve()),
                "label": label,
                "source": UPLOAD_SOURCE,
                "patient_id": f"upload-{sha[:16]}",  # no patient identity is stored; one film, one 'patient'
                "view": "",
                "split": "train",
                "regions": json.dumps(boxes[sha]) if boxes.get(sha) else "",
            }
        )
        for region in boxes.get(sha, []):
            info["regions"][region["kind"]] += 1
        info["regions"]["films"] += bool(boxes.get(sha))
    info["added"] = len(rows)
    if not rows:
        info["manifest_sha256"] = None
        return info
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*REQUIRED_COLUMNS, "regions"])
        writer.writeheader()
        writer.writerows(rows)
    info["manifest_sha256"] = manifest_sha256(out_dir)
    return info


def write_comparison_manifest(
    dataset_dirs: Sequence[Path], out_dir: Path, *, split: str, classes: tuple[str, ...]
) -> Path:
    """One manifest of the `split` rows of `dataset_dirs` that a model of these `classes` is evaluated
    on: the classes, plus each partial label all of whose candidates are among them (`pneumonia` for
    four classes, not for normal vs COVID-19). Absolute paths; `age` and `age_group` kept.

    The active model is evaluated on it, so that it is compared with a new version on the very films
    the new version was tested on, even when the two were trained on different scenarios (e.g. the
    active four-class model against a new normal-vs-COVID-19 one).
    """
    labels = scenario_labels(classes)
    rows = []
    for record in read_manifests(list(dataset_dirs)):
        if record.split == split and record.label in labels:
            row = {c: str(getattr(record, c)) for c in ("label", "source", "patient_id", "view", "split")}
            age = "" if record.age is None else str(record.age)
            rows.append({**row, "path": str(record.path), "age": age, "age_group": record.age_group})
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return out_dir
