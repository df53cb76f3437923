"""The algorithm shared by every CAM method; each method overrides `class_maps` only.

Nothing here registers hooks: the network is split into `forward_features` and `forward_head`
(`ml.architectures.CXRNet`), so concurrent requests on one shared model cannot see each other's
feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ml.architectures import CXRNet
from ml.registry import ArchSpec


@dataclass
class CAMOutput:
    """One forward pass, explained.

    logits: B×K class scores (before any class mask).
    raw:    B×K×h×w maps at the feature map's resolution, unnormalised, in logit units.
    bias:   K per-class offsets such that `reduce(raw) + bias == logits` (see `identity`).
    method: "cam", "gradcam" or "linear-decomposition".
    identity: "mean" when logit = spatial mean of the map + bias (CAM, eq. 6 of the paper),
              "sum" when logit = spatial sum + bias (CNN-X's linear decomposition),
              None when no such identity holds (Grad-CAM).
    pooled: B×C spatial mean of the feature map A: the same pass's image embedding, which `ml.risk`
            compares with the training films' (None only where a caller builds an output without it).
    """

    logits: torch.Tensor
    raw: torch.Tensor
    bias: torch.Tensor
    method: str
    identity: str | None
    pooled: torch.Tensor | None = None


class BaseCAM:
    method = ""
    identity: str | None = None

    def __init__(self, model: CXRNet, spec: ArchSpec) -> None:
        self.model = model
        self.spec = spec

    def __call__(self, x: torch.Tensor) -> CAMOutput:
        with torch.no_grad():
            features = self.model.forward_features(x)
        logits, raw, bias = self.class_maps(features)
        pooled = features.detach().float().mean(dim=(2, 3))
        return CAMOutput(logits.detach(), raw.detach(), bias.detach(), self.method, self.identity, pooled)

    def class_maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the feature map A (B×C×h×w): logits (B×K), maps (B×K×h×w), bias (K)."""
        raise NotImplementedError


def upsample_normalize(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×K×h×w raw maps → B×K×H×W maps in [0, 1]: bilinear upsampling, then per-map min-max scaling.

    A constant map (no spatial evidence at all) becomes all zeros. "Constant" is judged relative to the
    map's magnitude: bilinear interpolation of a constant map differs from it by a few float32 ulps,
    and stretching that rounding noise to [0, 1] would paint a pattern that is not in the data.
    """
    up = F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    lo = flat.min(dim=2, keepdim=True).values
    hi = flat.max(dim=2, keepdim=True).values
    span = hi - lo
    flat_enough = 1e-5 * torch.maximum(hi.abs(), lo.abs()) + 1e-12
    scaled = torch.where(span > flat_enough, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return scaled.clamp_(0.0, 1.0).view_as(up)
