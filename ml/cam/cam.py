"""CAM for networks ending in global average pooling + one linear layer (Zhou et al. 2016).

M_c(x, y) = Σ_u w_{c,u} A_u(x, y). Because pooling and the linear layer commute,
logit_c = mean_{x,y} M_c(x, y) + b_c (eq. 6 of the paper), so all four class maps come from the
same forward pass that produced the probabilities, at the cost of one small matrix product.

SqueezeNet's head is conv1×1 → ReLU → GAP: its class-score map relu(conv(A)) is the CAM, its mean
is the logit and the bias is already inside the map (reported bias: 0).
"""

from __future__ import annotations

import torch
from torch import nn

from ml.cam.base import BaseCAM


class ClassActivationMap(BaseCAM):
    method = "cam"
    identity = "mean"

    def class_maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        classifier = self.model.get_submodule(self.spec.classifier)
        with torch.no_grad():
            logits = self.model.forward_head(features)
            bias: torch.Tensor
            if isinstance(classifier, nn.Linear):
                raw = torch.einsum("kc,bchw->bkhw", classifier.weight, features)
                bias = classifier.bias if classifier.bias is not None else torch.zeros(raw.shape[1])
            elif isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1):
                raw = torch.relu(classifier(features))
                bias = torch.zeros(raw.shape[1], device=raw.device)
            else:
                raise TypeError(
                    f"{self.spec.name}: CAM needs a linear or 1x1-conv classifier, found {type(classifier).__name__}"
                )
        return logits, raw, bias
