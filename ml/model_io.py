"""A classifier's inputs and outputs that training, evaluation and inference share: the class mask of a
scenario and batched logits of pre-resized films.

A scenario that trains a subset of the classes (s1: normal vs COVID-19) masks the other logits with
-inf, so those classes get probability 0 everywhere, in training and at inference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ml import CLASSES
from ml.transforms import normalize_batch

MASKED_LOGIT = float("-inf")


def class_mask(active: tuple[str, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """0 for active classes, -inf for the others: added to logits, it gives the others probability 0."""
    return torch.tensor([0.0 if c in active else MASKED_LOGIT for c in CLASSES], device=device)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    *,
    mask: torch.Tensor,
    batch_size: int = 32,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Logits (N×4, masked) for N×S×S uint8 films, in eval mode."""
    device = device or torch.device("cpu")
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).unsqueeze(1)
        x = normalize_batch(batch, mean, std).to(device)
        out.append((model(x) + mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, len(CLASSES)))
