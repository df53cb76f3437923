"""The network a run or a checkpoint asks for: the registry's builder plus an optional dilated last stage.

Finer maps where they are cheap. A ResNet's CAM is as coarse as its last stage: 7×7 cells at 224 px,
each 32 px of the input wide, so a map cannot say "this lobe" rather than "this side of the chest",
and any score or loss computed on it inherits that. `dilate_last_stage` runs the last stage (layer4)
with stride 1 and dilation 2 instead of stride 2, as DeepLab does ("atrous" convolution): the feature
map, and with it every CAM, becomes 14×14 at 224 px, while every weight keeps its shape, so a normal
checkpoint's weights load into the dilated network unchanged and can be fine-tuned there.

The rule, block by block through layer4: the strided convolution (and the 1×1 shortcut) get stride 1;
every 3×3 convolution after it gets dilation 2 (and padding 2), because it used to see a grid twice as
coarse. Then the dilated feature map sampled at its even positions, `A[..., ::2, ::2]`, equals the
normal network's feature map exactly; only the global average pool now also averages the cells in
between, so the logits of a normal checkpoint move a little until it is fine-tuned.

Cost: layer4 now computes 4× the positions (bench/cam_overhead.py measures it). A checkpoint records
`dilate_last_stage: true` in its meta, and `ml.checkpoints.load_model` rebuilds the same network.
"""

from __future__ import annotations

from torch import nn

from ml.architectures import CXRNet, ResNetNet
from ml.registry import ArchSpec

DILATABLE_ARCHS = ("resnet18", "resnet50", "resnet101")
"""The registry's networks with a ResNet last stage (`net.layer4`) that `dilate_last_stage` can rewrite."""


def check_dilatable(spec: ArchSpec) -> None:
    """ValueError naming the architectures that can, unless `spec` is one of them."""
    if spec.name not in DILATABLE_ARCHS:
        raise ValueError(
            f"dilate last stage needs a ResNet ({', '.join(DILATABLE_ARCHS)}); {spec.name} has no ResNet last stage"
        )


def dilate_last_stage(model: CXRNet) -> CXRNet:
    """Rewrite a ResNet's layer4 in place to stride 1, dilation 2 (see the module docstring); returns it."""
    if not isinstance(model, ResNetNet):
        raise ValueError(f"dilate last stage needs a ResNet, got {type(model).__name__}")
    if is_dilated(model):
        return model
    after_stride = False
    for block in model.net.layer4:
        for conv in block.children():
            if not isinstance(conv, nn.Conv2d):
                continue
            if conv.stride == (2, 2):
                conv.stride = (1, 1)
                after_stride = True
            elif after_stride and conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (2, 2), (2, 2)
        shortcut = getattr(block, "downsample", None)
        if shortcut is not None:
            for conv in shortcut.modules():
                if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
                    conv.stride = (1, 1)
    return model


def is_dilated(model: nn.Module) -> bool:
    """Whether a ResNet's last stage already runs with dilation (stride 1)."""
    if not isinstance(model, ResNetNet):
        return False
    return any(isinstance(m, nn.Conv2d) and m.dilation != (1, 1) for m in model.net.layer4.modules())


def build_network(spec: ArchSpec, *, pretrained: bool = False, dilated: bool = False) -> CXRNet:
    """`spec`'s network (ImageNet weights when `pretrained`), with its last stage dilated when asked."""
    if dilated:
        check_dilatable(spec)
    model = spec.build(pretrained=pretrained)
    return dilate_last_stage(model) if dilated else model
