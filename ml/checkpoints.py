"""Checkpoints that describe themselves.

A checkpoint is `torch.save({"meta": {...}, "state_dict": {...}})`. `meta` holds only plain types
(so `torch.load(weights_only=True)` reads it safely): architecture, classes, input size,
normalisation, input mode, scenario, hyper-parameters, data manifest sha256, validation metrics,
code version. Weights may be stored in float16 to keep bundled models small; they are restored to
float32 on load.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ml import CLASSES
from ml.architectures import CXRNet
from ml.network import build_network
from ml.registry import ArchSpec, get_arch

FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_CHECKPOINT = BUNDLED_DIR / "cxr_default.pt"


class CheckpointError(ValueError):
    """The file is not a cxr-review checkpoint, or does not match its architecture."""


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


def base_meta(spec: ArchSpec, *, input_size: int, scenario_classes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "arch": spec.name,
        "classes": list(CLASSES),
        "active_classes": list(scenario_classes),
        "input_size": input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input_mode": "full",
        "cam_method": spec.cam_method,
        "code_version": code_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_checkpoint(
    path: str | os.PathLike[str], model: torch.nn.Module, meta: dict[str, Any], *, half: bool = False
) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"meta": meta, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise CheckpointError(f"{path} is not a cxr-review checkpoint (no meta/state_dict)")
    return blob["meta"], blob["state_dict"]


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    return read_checkpoint(path)[0]


def load_model(path: str | os.PathLike[str]) -> tuple[CXRNet, dict[str, Any]]:
    """Rebuild the network named in the checkpoint (no pretrained download; its last stage dilated when
    the checkpoint says `dilate_last_stage`, see `ml.network`) and load its weights."""
    meta, state = read_checkpoint(path)
    try:
        spec = get_arch(meta["arch"])
        model = build_network(spec, dilated=bool(meta.get("dilate_last_stage", False)))
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


def load_init_weights(model: torch.nn.Module, path: str | os.PathLike[str], *, arch: str) -> dict[str, Any]:
    """Load a checkpoint's weights into a freshly built `arch` network (fine-tuning, `init_checkpoint`).

    The checkpoint must be of the same architecture; a normal and a dilated-last-stage ResNet share every
    weight's shape, so either loads into either. Returns the checkpoint's meta. CheckpointError otherwise.
    """
    meta, state = read_checkpoint(path)
    if meta.get("arch") != arch:
        raise CheckpointError(f"init checkpoint {path} is a {meta.get('arch')} network; this run trains {arch}")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"init checkpoint {path}: weights do not fit architecture {arch}: {exc}") from exc
    return meta
