"""Class activation maps: CAM (Zhou et al. 2016), Grad-CAM, and CNN-X's exact linear decomposition.

`explain(model, spec, x)` runs one forward pass and returns the logits together with the raw
low-resolution maps of all four classes, made by the method the registry names for the network
(`ArchSpec.cam_method`). The algorithm they share is `ml.cam.base`; each method is one small module
that overrides `class_maps`, and `METHODS` below is the one table of them: a new method is one module
plus one entry here.
"""

from __future__ import annotations

import torch

from ml.architectures import CXRNet
from ml.cam.base import BaseCAM, CAMOutput, upsample_normalize
from ml.cam.cam import ClassActivationMap
from ml.cam.decomposition import LinearDecomposition
from ml.cam.gradcam import GradCAM
from ml.registry import ArchSpec

METHODS: dict[str, type[BaseCAM]] = {
    "cam": ClassActivationMap,
    "gradcam": GradCAM,
    "linear-decomposition": LinearDecomposition,
}
"""`ArchSpec.cam_method` → the class that computes it."""


def cam_for(model: CXRNet, spec: ArchSpec) -> BaseCAM:
    """The CAM method the registry names for `spec`, bound to `model` (stateless: safe to share)."""
    return METHODS[spec.cam_method](model, spec)


def explain(model: CXRNet, spec: ArchSpec, x: torch.Tensor) -> CAMOutput:
    """One forward pass of `x` (B×3×S×S): logits and the raw maps of all four classes."""
    return cam_for(model, spec)(x)


__all__ = ["METHODS", "BaseCAM", "CAMOutput", "cam_for", "explain", "upsample_normalize"]
