"""Grad-CAM (Selvaraju et al. 2017) for networks without a GAP head (AlexNet, VGG).

α_{c,k} = mean_{x,y} ∂y_c/∂A_k ;  M_c = ReLU(Σ_k α_{c,k} A_k).

Gradients are taken through the head only: A is detached from the backbone and made a leaf, so a
map for each class costs one small backward pass over the classifier, not the whole network.
"""

from __future__ import annotations

import torch

from ml.cam.base import BaseCAM


class GradCAM(BaseCAM):
    method = "gradcam"
    identity = None

    def class_maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            a = features.detach().requires_grad_(True)
            logits = self.model.forward_head(a)
            maps = []
            for c in range(logits.shape[1]):
                (grad,) = torch.autograd.grad(logits[:, c].sum(), a, retain_graph=c < logits.shape[1] - 1)
                alpha = grad.mean(dim=(2, 3), keepdim=True)
                maps.append(torch.relu((alpha * a).sum(dim=1)))
        raw = torch.stack(maps, dim=1).detach()
        return logits.detach(), raw, torch.zeros(logits.shape[1], device=logits.device)
