"""One registry of architectures: name → builder, input size, normalisation, CAM layer and CAM method.

Training, inference, CAM and the CLI all look architectures up here, so a network registered once is
trained, explained and tested everywhere (the tests are parametrised over `list_archs()`).

Shape of the registry follows torchvision's `_api.py`: `register_arch` refuses duplicates, `get_arch`
raises a clear `KeyError` listing the known names, `list_archs` is sorted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
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


def _ensure_loaded() -> None:
    # The specs live next to the network code; importing it fills the registry once.
    import ml.architectures  # noqa: F401


def get_arch(name: str) -> ArchSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None


def list_archs() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)
