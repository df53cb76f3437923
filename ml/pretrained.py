"""ImageNet weights for transfer learning, from local files first and the libraries' own download last.

Lookup order for a torchvision checkpoint such as `resnet18-f37072fd.pth`:

1. `$CXR_PRETRAINED_DIR/<file>` (the project's weights folder, e.g. `../shared/weights`);
2. torch hub's cache, `$TORCH_HOME/hub/checkpoints/<file>` (what torchvision downloads into);
3. torchvision's normal download (works on a machine with internet).

timm models look in `$CXR_PRETRAINED_DIR` for `<model>.safetensors|.pth|.bin` (or the file name in
timm's URL), then use timm's normal Hugging Face download / cache. When nothing works the caller gets
`PretrainedWeightsUnavailable`, whose message says which file to put where.

Downloads through torch.hub (all torchvision weights, and timm weights hosted outside the Hugging Face
hub) use `urlopen` without a timeout: on a network that silently drops packets they would wait for
the operating system's TCP timeouts on connect and forever on a stalled read. While such a download
runs, every blocking socket operation is bounded by `$CXR_DOWNLOAD_TIMEOUT` seconds (default 20), so
an offline machine gets the clear error instead of a hung command. The bound is per operation, not
per file: a slow but progressing download of a large file still completes. It is set through
`socket.setdefaulttimeout`, which is process-wide for the download's duration: sockets other threads
open meanwhile get the same bound. Hugging Face hub downloads keep their own timeouts and retries
(set HF_HUB_OFFLINE=1 to skip them on a machine known to be offline).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but are neither on disk nor downloadable."""


DEFAULT_DOWNLOAD_TIMEOUT_S = 20.0


def download_timeout() -> float:
    """Seconds any one blocking socket operation of a weights download may take (`$CXR_DOWNLOAD_TIMEOUT`)."""
    try:
        value = float(os.environ.get("CXR_DOWNLOAD_TIMEOUT") or DEFAULT_DOWNLOAD_TIMEOUT_S)
    except ValueError:
        return DEFAULT_DOWNLOAD_TIMEOUT_S
    return value if value > 0 else DEFAULT_DOWNLOAD_TIMEOUT_S


@contextmanager
def bounded_downloads() -> Iterator[None]:
    """Bound blocking socket operations opened meanwhile by `download_timeout()` (see module docstring)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout())
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def pretrained_dir() -> Path | None:
    value = os.environ.get("CXR_PRETRAINED_DIR")
    return Path(value) if value else None


def _torchvision_weights(weights: str):
    import torchvision.models as tvm

    return tvm.get_weight(weights)


def torchvision_candidates(weights: str) -> list[Path]:
    """Local files that may hold `weights`, in lookup order."""
    filename = os.path.basename(_torchvision_weights(weights).url)
    candidates = []
    if (d := pretrained_dir()) is not None:
        candidates.append(d / filename)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    return candidates


def load_torchvision_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """State dict of a torchvision weights enum member, e.g. `ResNet18_Weights.IMAGENET1K_V1`."""
    entry = _torchvision_weights(weights)
    for path in torchvision_candidates(weights):
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    try:
        with bounded_downloads():
            return entry.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # no network, proxy errors, bad hash: all mean "not available"
        where = " or ".join(str(p) for p in torchvision_candidates(weights))
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights {weights} are not available: download {entry.url} and put it at {where} "
            f"(or set CXR_PRETRAINED_DIR / TORCH_HOME); or train from scratch with --no-pretrained. "
            f"[{type(exc).__name__}: {exc}]"
        ) from exc


def timm_candidates(model_name: str) -> list[Path]:
    d = pretrained_dir()
    if d is None:
        return []
    import timm

    names = [f"{model_name}{ext}" for ext in (".safetensors", ".pth", ".bin")]
    url = timm.models.get_pretrained_cfg(model_name).url  # type: ignore[union-attr]
    if isinstance(url, str) and url:
        names.append(os.path.basename(url))
    return [d / n for n in names]


def load_timm_pretrained(model_name: str, *, num_classes: int) -> nn.Module:
    """A timm model with ImageNet weights and a fresh `num_classes` head."""
    import timm

    for path in timm_candidates(model_name):
        if path.is_file():
            return timm.create_model(
                model_name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(path)}
            )
    try:
        with bounded_downloads():
            return timm.create_model(model_name, pretrained=True, num_classes=num_classes)
    except Exception as exc:
        where = str(pretrained_dir() or "$CXR_PRETRAINED_DIR")
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for timm model {model_name} are not available: put {model_name}.safetensors "
            f"(from the Hugging Face hub, timm/{model_name}) in {where}, or let timm download it "
            f"into its Hugging Face cache (HF_HOME); or train from scratch with --no-pretrained. "
            f"[{type(exc).__name__}: {exc}]"
        ) from exc


def pretrained_available(spec_weights: str | None) -> bool:
    """Whether the weights named in an `ArchSpec` are on this machine now (no download attempted)."""
    if spec_weights is None:
        return False
    library, _, name = spec_weights.partition(":")
    if library == "torchvision":
        return any(p.is_file() for p in torchvision_candidates(name))
    model_name = name.split(".")[0]
    if any(p.is_file() for p in timm_candidates(model_name)):
        return True
    try:  # timm's Hugging Face cache, looked up without touching the network
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None)
        if hub_id:
            for fname in ("model.safetensors", "pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(hub_id, fname), str):
                    return True
        url = getattr(cfg, "url", None)
        if url:
            return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()
    except Exception:
        return False
    return False
