"""Checkpoints that describe themselves, and the one place their description is read and written.

A checkpoint is `torch.save({"meta": {...}, "state_dict": {...}})`. `meta` holds only plain types (so
`torch.load(weights_only=True)` reads it safely). In code it is typed: `CheckpointMeta` for a classifier
(architecture, classes, input size, normalisation, input mode, scenario, training config and
hyper-parameters, data manifests and their sha256, metrics, code version, ...), `LungSegMeta` for the
lung segmenter. Their `from_dict` / `to_dict` here are the only code that knows the keys: a key missing
from an older checkpoint gets its default, and a key this version does not know is kept in `extra` and
written back unchanged. Weights may be stored in float16 to keep bundled models small; they are
restored to float32 on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch

from ml import CLASSES
from ml.architectures import CXRNet
from ml.lung_crop import DEFAULT_INPUT_MODE, DEFAULT_MARGIN
from ml.network import build_network
from ml.registry import ArchSpec, get_arch

FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_CHECKPOINT = BUNDLED_DIR / "cxr_default.pt"


class CheckpointError(ValueError):
    """The file is not a cxr-review checkpoint, or does not match its architecture."""


# --------------------------------------------------------------------------- metadata


@dataclass
class TrainingDataMeta:
    """What a classifier was trained on."""

    manifests: dict[str, str] = field(default_factory=dict)
    """Every data folder the run read its splits from (resolved path → sha256 of its manifest.csv), in
    order; the first is the primary one."""
    extra_train_manifests: dict[str, str] = field(default_factory=dict)
    """Folders that added training films only (e.g. reviewed uploads): path → manifest sha256."""
    train_counts: dict[str, int] = field(default_factory=dict)
    val_counts: dict[str, int] = field(default_factory=dict)
    skipped_unreadable: int = 0
    reviewer_regions: dict[str, int] = field(default_factory=dict)
    """Training films with reviewers' boxes and the boxes of each kind the run read (`films`,
    `wrong_evidence`, `finding`; `ml.explanation.region_counts`); {} in checkpoints from before boxes."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest_sha256(self) -> str | None:
        """The primary (first) data folder's manifest sha256, what a registered model records."""
        return next(iter(self.manifests.values()), None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingDataMeta:
        d = dict(d)
        listed = d.pop("manifests", None) or []
        manifests = {str(m["data_dir"]): str(m["sha256"]) for m in listed}
        data_dir, sha = d.pop("data_dir", None), d.pop("manifest_sha256", None)  # before `manifests`: one folder
        if not manifests and data_dir is not None and sha is not None:
            manifests = {str(data_dir): str(sha)}
        return cls(
            manifests=manifests,
            extra_train_manifests={str(k): str(v) for k, v in (d.pop("extra_train_manifests", None) or {}).items()},
            train_counts={str(k): int(v) for k, v in (d.pop("train_counts", None) or {}).items()},
            val_counts={str(k): int(v) for k, v in (d.pop("val_counts", None) or {}).items()},
            skipped_unreadable=int(d.pop("skipped_unreadable", 0) or 0),
            reviewer_regions={str(k): int(v) for k, v in (d.pop("reviewer_regions", None) or {}).items()},
            extra=d,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "data_dir": next(iter(self.manifests), None),  # the primary folder, as one-folder readers expect
            "manifest_sha256": self.manifest_sha256,
            "manifests": [{"data_dir": d, "sha256": sha} for d, sha in self.manifests.items()],
            "extra_train_manifests": dict(self.extra_train_manifests),
            "train_counts": dict(self.train_counts),
            "val_counts": dict(self.val_counts),
            "skipped_unreadable": self.skipped_unreadable,
            "reviewer_regions": dict(self.reviewer_regions),
        }


@dataclass
class RiskMeta:
    """A classifier's error-risk calibration (`ml.risk`), fitted by `cxr-review calibrate` on the model's own
    data: the temperature, the training films' feature statistics, the error-risk logistic regression and
    the warnings' cut-offs. Plain lists of floats, so `weights_only` loading reads it."""

    temperature: float
    """Softmax temperature fitted on the validation split by NLL (probabilities = softmax(logits / T))."""
    feature_mean: list[float]
    """D: mean pooled feature of the training films."""
    feature_components: list[list[float]]
    """P×D orthonormal rows: the leading principal directions of the training films' pooled features."""
    class_means: dict[str, list[float]]
    """Active class → its training films' mean in the P principal coordinates."""
    precision: list[list[float]]
    """P×P inverse of the shared (tied, shrunk) within-class covariance."""
    inputs: list[str]
    """The logistic regression's inputs, in order (names of `ml.risk.RISK_INPUTS`)."""
    input_mean: list[float]
    input_std: list[float]
    coef: list[float]
    intercept: float
    background_precision: list[list[float]] = field(default_factory=list)
    """P×P inverse of the shrunk covariance of all training films around their mean (the origin of the principal
    coordinates), classes pooled: the "background" of the relative Mahalanobis distance. Empty in sections
    fitted before it was recorded."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """The warnings' cut-offs (`ml.risk.Thresholds` fields)."""
    fit: dict[str, Any] = field(default_factory=dict)
    """How and on what it was fitted: counts, validation figures, data manifests, settings, time."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RiskMeta:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: d.pop(k) for k in list(d) if k in known}
        try:
            values.update(
                temperature=float(values["temperature"]),
                feature_mean=[float(v) for v in values["feature_mean"]],
                feature_components=[[float(v) for v in row] for row in values["feature_components"]],
                class_means={str(k): [float(v) for v in row] for k, row in values["class_means"].items()},
                precision=[[float(v) for v in row] for row in values["precision"]],
                inputs=[str(v) for v in values["inputs"]],
                input_mean=[float(v) for v in values["input_mean"]],
                input_std=[float(v) for v in values["input_std"]],
                coef=[float(v) for v in values["coef"]],
                intercept=float(values["intercept"]),
                background_precision=[[float(v) for v in row] for row in values.get("background_precision") or []],
                thresholds={str(k): float(v) for k, v in (values.get("thresholds") or {}).items()},
                fit=dict(values.get("fit") or {}),
            )
            return cls(**values, extra=d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint risk section is malformed: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out


@dataclass
class CheckpointMeta:
    """The description of a classifier checkpoint."""

    arch: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = CLASSES
    """The head's classes, in order (always CLASSES)."""
    active_classes: tuple[str, ...] = CLASSES
    """The classes the scenario trained; the others are masked to probability 0."""
    cam_method: str = ""
    intensity: str = "raw"
    input_mode: str = DEFAULT_INPUT_MODE
    crop_margin: float = DEFAULT_MARGIN
    lungseg_sha256: str | None = None
    """lung-crop models: the segmenter that made the training crops."""
    scenario: str | None = None
    pretrained: bool = False
    dilate_last_stage: bool = False
    """ResNets: the last stage runs with stride 1 and dilation 2 (2x finer maps, `ml.network`); the network
    is rebuilt so by `load_model`."""
    init_checkpoint_sha256: str | None = None
    """The checkpoint whose weights the run started from (`init_checkpoint`), when it did not start fresh."""
    name: str | None = None
    """The name it is registered under (the retraining worker's `<architecture>-<scenario>`)."""
    train_config: dict[str, Any] = field(default_factory=dict)
    """The whole training config, as written (feeding it back reproduces the run's settings)."""
    hparams: dict[str, Any] = field(default_factory=dict)
    data: TrainingDataMeta | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """{"val": report, ...}; the worker adds "test"."""
    epoch: int | None = None
    world_size: int = 1
    code_version: str | None = None
    created_at: str | None = None
    training_job: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    """last.pt only, with `history` and `best_val`: what resuming a run needs."""
    history: list[dict[str, Any]] | None = None
    best_val: dict[str, Any] | None = None
    risk: RiskMeta | None = None
    """The error-risk calibration (`cxr-review calibrate`); None in checkpoints from before it."""
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept as they were."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointMeta:
        """The description stored in a checkpoint; CheckpointError when it is not a classifier's."""
        d = dict(d)
        if d.get("kind") not in (None, "classifier"):
            raise CheckpointError(f"not a classifier checkpoint (kind {d['kind']!r})")
        missing = [k for k in ("arch", "input_size", "mean", "std") if k not in d]
        if missing:
            raise CheckpointError(f"checkpoint meta lacks {', '.join(missing)}")
        d.pop("kind", None)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: d.pop(k) for k in list(d) if k in known}
        try:
            classes = tuple(str(c) for c in values.get("classes") or CLASSES)
            data = values.get("data")
            risk = values.get("risk")
            values.update(
                arch=str(values["arch"]),
                input_size=int(values["input_size"]),
                mean=tuple(float(v) for v in values["mean"]),
                std=tuple(float(v) for v in values["std"]),
                classes=classes,
                active_classes=tuple(str(c) for c in values.get("active_classes") or classes),
                cam_method=str(values.get("cam_method") or ""),
                crop_margin=float(values.get("crop_margin", DEFAULT_MARGIN)),
                hparams=dict(values.get("hparams") or {}),
                train_config=dict(values.get("train_config") or {}),
                metrics=dict(values.get("metrics") or {}),
                data=TrainingDataMeta.from_dict(data) if isinstance(data, Mapping) else None,
                risk=RiskMeta.from_dict(risk) if isinstance(risk, Mapping) else None,
            )
            return cls(**values, extra=d)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint meta is malformed: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain types only; optional entries that are unset are left out."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in _OMIT_WHEN_UNSET):
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, TrainingDataMeta | RiskMeta):
                value = value.to_dict()
            out[f.name] = value
        return out


_OMIT_WHEN_UNSET = {
    "name", "data", "training_job", "optimizer", "history", "best_val", "init_checkpoint_sha256", "risk"
}  # fmt: skip


def base_meta(spec: ArchSpec, *, input_size: int, scenario_classes: tuple[str, ...]) -> CheckpointMeta:
    """The description of a new classifier of `spec`, before training fills in the rest."""
    return CheckpointMeta(
        arch=spec.name,
        input_size=input_size,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        active_classes=tuple(scenario_classes),
        cam_method=spec.cam_method,
        code_version=code_version(),
        created_at=now_iso(),
    )


@dataclass
class LungSegMeta:
    """The description of a lung segmentation checkpoint (`ml.lungseg`)."""

    KIND: ClassVar[str] = "lung-segmentation"

    net: dict[str, Any]
    """The network's constructor arguments (base_channels, multipliers, stem_stride)."""
    arch: str = "lung-unet"
    input_size: int = 256
    threshold: float = 0.5
    """Lung where the predicted probability is at least this."""
    normalization: str = ""
    parameters: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    val: dict[str, Any] = field(default_factory=dict)
    """The validation figures of the saved weights (val_dice, per_image, dice_as_stored, ...)."""
    train_seconds: float | None = None
    code_version: str | None = None
    created_at: str | None = None
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LungSegMeta:
        d = dict(d)
        if d.get("kind") != cls.KIND:
            raise CheckpointError(f"not a lung segmentation checkpoint (kind {d.get('kind')!r})")
        if not isinstance(d.get("net"), Mapping):
            raise CheckpointError("lung segmentation meta lacks its network description ('net')")
        d.pop("kind")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: d.pop(k) for k in list(d) if k in known}
        try:
            values.update(
                net=dict(values["net"]),
                input_size=int(values.get("input_size", 256)),
                threshold=float(values.get("threshold", 0.5)),
            )
            return cls(**values, extra=d)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"lung segmentation meta is malformed: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = {**self.extra, "kind": self.KIND}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one (`0.1.0+g1a2b3c4`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("cxr-review")
    except PackageNotFoundError:
        base = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{base}+g{sha}" if sha else base
    except (OSError, subprocess.SubprocessError):
        return base


# --------------------------------------------------------------------------- files


def write_checkpoint(
    path: str | os.PathLike[str],
    meta: CheckpointMeta | LungSegMeta,
    state_dict: Mapping[str, torch.Tensor],
    *,
    read_only: bool = False,
) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint; `read_only`: 0444."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"meta": meta.to_dict(), "state_dict": dict(state_dict)}, tmp)
    if read_only:
        tmp.chmod(0o444)
    os.replace(tmp, path)
    return path


def save_checkpoint(
    path: str | os.PathLike[str], model: torch.nn.Module, meta: CheckpointMeta | LungSegMeta, *, half: bool = False
) -> Path:
    """`model`'s weights (float16 when `half`) with `meta`, written atomically."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    return write_checkpoint(path, meta, state)


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path} is not a cxr-review checkpoint (no meta/state_dict)")
    return blob["meta"], blob["state_dict"]


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """A classifier checkpoint's description and its stored weights (as stored: maybe float16)."""
    meta, state = _read(path)
    try:
        return CheckpointMeta.from_dict(meta), state
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    return read_checkpoint(path)[0]


def read_lungseg_checkpoint(path: str | os.PathLike[str]) -> tuple[LungSegMeta, dict[str, torch.Tensor]]:
    meta, state = _read(path)
    try:
        return LungSegMeta.from_dict(meta), state
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_model(path: str | os.PathLike[str]) -> tuple[CXRNet, CheckpointMeta]:
    """Rebuild the network named in the checkpoint (no pretrained download; its last stage dilated when
    the checkpoint says `dilate_last_stage`, see `ml.network`) and load its weights."""
    meta, state = read_checkpoint(path)
    try:
        spec = get_arch(meta.arch)
        model = build_network(spec, dilated=meta.dilate_last_stage)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit architecture {spec.name}: {exc}") from exc
    return model.eval(), meta


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_init_weights(model: torch.nn.Module, path: str | os.PathLike[str], *, arch: str) -> CheckpointMeta:
    """Load a checkpoint's weights into a freshly built `arch` network (fine-tuning, `init_checkpoint`).

    The checkpoint must be of the same architecture; a normal and a dilated-last-stage ResNet share every
    weight's shape, so either loads into either. Returns the checkpoint's meta. CheckpointError otherwise.
    """
    meta, state = read_checkpoint(path)
    if meta.arch != arch:
        raise CheckpointError(f"init checkpoint {path} is a {meta.arch} network; this run trains {arch}")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"init checkpoint {path}: weights do not fit architecture {arch}: {exc}") from exc
    return meta
