"""The lung segmentation network: a compact U-Net (`LungUNet`) and what every use of it shares.

The network sees a 256×256 film standardised by its own mean and standard deviation (so exposure,
window and contrast differences between hospitals do not matter) and returns one logit per pixel, lung
vs not lung. A stride-2 stem makes it work at 128×128 internally (lung outlines are smooth, so the
bilinear upsampling of the logits back to 256×256 costs little Dice but saves ~4× CPU); six levels down
to 4×4 give it a receptive field of the whole chest, which it needs for opaque ("white") lungs whose
outline is not visible locally.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCH_NAME = "lung-unet"
INPUT_SIZE = 256


# --------------------------------------------------------------------------- network


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class LungUNet(nn.Module):
    """U-Net: B×1×H×W standardised film → B×1×H×W lung logits (H, W divisible by stem_stride·2^(levels-1)).

    Encoder level k works at H/(stem_stride·2^k) with `base_channels · multipliers[k]` channels (two
    3×3 conv-BN-ReLU each, the first one strided); the decoder upsamples bilinearly, concatenates the
    skip and applies two more. A 1×1 head gives logits at the stem's resolution, upsampled bilinearly.
    """

    def __init__(
        self, base_channels: int = 16, multipliers: Sequence[int] = (1, 2, 4, 8, 8, 8), stem_stride: int = 2
    ) -> None:
        super().__init__()
        if base_channels <= 0 or not multipliers or stem_stride not in (1, 2, 4):
            raise ValueError("need base_channels > 0, at least one level and stem_stride in {1, 2, 4}")
        channels = [base_channels * int(m) for m in multipliers]
        self.config = {
            "base_channels": base_channels,
            "multipliers": [int(m) for m in multipliers],
            "stem_stride": stem_stride,
        }
        self.stem = nn.Sequential(_conv_bn_relu(1, channels[0], stem_stride), _conv_bn_relu(channels[0], channels[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(a, b, 2), _conv_bn_relu(b, b)) for a, b in itertools.pairwise(channels)
        )
        self.up = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(deep + skip, skip), _conv_bn_relu(skip, skip))
            for deep, skip in zip(channels[:0:-1], channels[-2::-1], strict=True)
        )
        self.head = nn.Conv2d(channels[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = self.head(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


def standardize(images: torch.Tensor) -> torch.Tensor:
    """B×1×H×W images (uint8 or float in [0, 1]) → float32, each image scaled to mean 0 and std 1."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mean) / std


def build_lung_model(net_config: dict[str, Any]) -> LungUNet:
    return LungUNet(int(net_config["base_channels"]), tuple(net_config["multipliers"]), int(net_config["stem_stride"]))


def fuse_for_inference(model: LungUNet) -> LungUNet:
    """A copy of an eval-mode network with every BatchNorm folded into the convolution before it.

    Same outputs (to float rounding), ~15% less CPU time: the BN passes over the feature maps disappear.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential) and len(module) == 3:
            conv, bn, act = module
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[0] = fuse_conv_bn_eval(conv, bn)
                module[1] = nn.Identity()
                assert isinstance(act, nn.ReLU)
    return fused


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """B×1×S×S uint8 → B×1×S×S float logits (eval mode, on the model's device, returned on CPU)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = standardize(images[i : i + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out)
