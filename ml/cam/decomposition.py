"""Exact per-location decomposition of a flatten → linear head (CNN-X).

logit_c = Σ_{k,y,x} W_{c,k,y,x} A_{k,y,x} + b_c, so M_c(y, x) = Σ_k W_{c,k,y,x} A_{k,y,x} splits
the logit over locations without approximation: Σ_{y,x} M_c + b_c = logit_c.
"""

from __future__ import annotations

import torch
from torch import nn

from ml.cam.base import BaseCAM


class LinearDecomposition(BaseCAM):
    method = "linear-decomposition"
    identity = "sum"

    def class_maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fc = self.model.get_submodule(self.spec.classifier)
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"{self.spec.name}: linear decomposition needs a Linear classifier")
        _b, c, h, w = features.shape
        with torch.no_grad():
            weight = fc.weight.view(fc.out_features, c, h, w)
            raw = torch.einsum("kchw,bchw->bkhw", weight, features)
            logits = self.model.forward_head(features)
            bias = fc.bias if fc.bias is not None else torch.zeros(fc.out_features)
        return logits, raw, bias
