"""Class activation maps: CAM (Zhou et al. 2016), Grad-CAM, and CNN-X's exact linear decomposition.

`explain(model, spec, x)` runs one forward pass and returns the logits together with the raw
low-resolution maps of all four classes, made by the method the registry names for the network.
"""

from ml.cam.base import CAMOutput, cam_for, explain, upsample_normalize

__all__ = ["CAMOutput", "cam_for", "explain", "upsample_normalize"]
