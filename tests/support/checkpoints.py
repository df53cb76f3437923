"""Small real checkpoints for tests that need more than the bundled model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ml import CLASSES
from ml.checkpoints import base_meta, save_checkpoint
from ml.registry import get_arch

UNTRAINED_CNNX = "cnnx-untrained"


def write_untrained_cnnx(
    path: Path, *, name: str = UNTRAINED_CNNX, seed: int = 0, metrics: dict[str, Any] | None = None
) -> Path:
    """A random-weight CNN-X checkpoint (1.4 M parameters, 180 px): a cheap second model whose heat maps
    come from a different method (linear decomposition) than the bundled ResNet's CAM. Its outputs mean
    nothing clinically; tests use it to exercise multi-model pages and APIs. `metrics` (an
    ml.evaluate-shaped report per split) is recorded as given, for pages that display metrics."""
    spec = get_arch("cnnx")
    torch.manual_seed(seed)
    model = spec.builder(False)
    meta = replace(base_meta(spec, input_size=spec.input_size, scenario_classes=CLASSES), name=name)
    if metrics is not None:
        meta = replace(meta, metrics=metrics)
    return save_checkpoint(path, model, meta)
