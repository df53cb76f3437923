"""One registry of architectures: name → builder, input size, normalisation, CAM layer and CAM method.

Training, inference, CAM and the CLI all look architectures up here, so a network registered once is
trained, explained and tested everywhere (the tests are parametrised over `list_archs()`). The network
code (`ml.architectures`) knows nothing of the registry; the table at the end of this module names the
paper's 13 networks, and `register_arch` adds others.

Shape of the registry follows torchvision's `_api.py`: `register_arch` refuses duplicates, `get_arch`
raises a clear `KeyError` listing the known names, `list_archs` is sorted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torchvision.models as tvm

from ml import architectures as nets
from ml.architectures import CXRNet

CamMethod = Literal["cam", "gradcam", "linear-decomposition"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ArchSpec:
    """Everything the rest of the project needs to know about one architecture.

    `builder(pretrained)` returns a `CXRNet` with a head for the four classes. `cam_layer` and
    `classifier` are dotted module paths inside that network (resolved with `get_submodule`):
    the module whose output is the feature map A the CAM is made from, and the final layer whose
    weights turn A into class scores.
    """

    name: str
    builder: Callable[[bool], CXRNet]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_layer: str
    classifier: str
    cam_method: CamMethod
    family: Literal["torchvision", "timm", "cxr-review"]
    pretrained_weights: str | None
    """`torchvision:<WeightsEnum>.<member>` or `timm:<model name>`; None when none exist (CNN-X)."""
    note: str = ""
    fixed_input_size: bool = False
    """True when the head depends on the input size (CNN-X's flatten → linear): no size override."""

    def build(self, *, pretrained: bool = False) -> CXRNet:
        return self.builder(pretrained)


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None


def list_archs() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- the paper's 13 networks


def _register_the_papers_networks() -> None:
    tv: Literal["torchvision"] = "torchvision"
    for name, fn, weights, layers in (
        ("resnet18", tvm.resnet18, "ResNet18_Weights.IMAGENET1K_V1", "net.layer4"),
        ("resnet50", tvm.resnet50, "ResNet50_Weights.IMAGENET1K_V1", "net.layer4"),
        ("resnet101", tvm.resnet101, "ResNet101_Weights.IMAGENET1K_V1", "net.layer4"),
    ):
        register_arch(
            ArchSpec(
                name,
                nets.resnet_builder(fn, weights),
                224,
                IMAGENET_MEAN,
                IMAGENET_STD,
                layers,
                "net.fc",
                "cam",
                tv,
                f"{tv}:{weights}",
            )
        )
    register_arch(
        ArchSpec(
            "densenet201",
            nets.build_densenet201,
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "net.features",
            "net.classifier",
            "cam",
            tv,
            f"{tv}:DenseNet201_Weights.IMAGENET1K_V1",
            note="A = relu(net.features(x)): torchvision applies that ReLU functionally",
        )
    )
    register_arch(
        ArchSpec(
            "googlenet",
            nets.build_googlenet,
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "net.inception5b",
            "net.fc",
            "cam",
            tv,
            f"{tv}:GoogLeNet_Weights.IMAGENET1K_V1",
        )
    )
    register_arch(
        ArchSpec(
            "inception_v3",
            nets.build_inception_v3,
            299,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "net.Mixed_7c",
            "net.fc",
            "cam",
            tv,
            f"{tv}:Inception_V3_Weights.IMAGENET1K_V1",
        )
    )
    register_arch(
        ArchSpec(
            "squeezenet1_1",
            nets.build_squeezenet1_1,
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "net.features",
            "net.classifier.1",
            "cam",
            tv,
            f"{tv}:SqueezeNet1_1_Weights.IMAGENET1K_V1",
            note="CAM = relu(conv1x1(A)), the class-score map that SqueezeNet averages into its logits",
        )
    )
    for name, fn, weights, layer in (
        ("alexnet", tvm.alexnet, "AlexNet_Weights.IMAGENET1K_V1", "net.features.11"),
        ("vgg16", tvm.vgg16, "VGG16_Weights.IMAGENET1K_V1", "net.features.29"),
        ("vgg19", tvm.vgg19, "VGG19_Weights.IMAGENET1K_V1", "net.features.35"),
    ):
        register_arch(
            ArchSpec(
                name,
                nets.plain_builder(fn, weights),
                224,
                IMAGENET_MEAN,
                IMAGENET_STD,
                layer,
                "net.classifier.6",
                "gradcam",
                tv,
                f"{tv}:{weights}",
            )
        )
    register_arch(
        ArchSpec(
            "inception_resnet_v2",
            nets.timm_builder("inception_resnet_v2"),
            299,
            INCEPTION_MEAN,
            INCEPTION_STD,
            "net.conv2d_7b",
            "net.classif",
            "cam",
            "timm",
            "timm:inception_resnet_v2.tf_in1k",
        )
    )
    register_arch(
        ArchSpec(
            "xception",
            nets.timm_builder("legacy_xception"),
            299,
            INCEPTION_MEAN,
            INCEPTION_STD,
            "net.act4",
            "net.fc",
            "cam",
            "timm",
            "timm:legacy_xception.tf_in1k",
            note="timm's legacy_xception, the Keras/Chollet Xception the paper used",
        )
    )
    register_arch(
        ArchSpec(
            "cnnx",
            nets.build_cnnx,
            nets.CNNX.input_size,
            INCEPTION_MEAN,
            INCEPTION_STD,
            "pool",
            "fc",
            "linear-decomposition",
            "cxr-review",
            None,
            note="the paper's shallow CNN; no ImageNet weights exist",
            fixed_input_size=True,
        )
    )


_register_the_papers_networks()
