"""CAM, Grad-CAM and CNN-X's linear decomposition.

The CAM identity (eq. 6 of the paper: logit_c = mean over locations of M_c + b_c) is checked on the
bundled trained model with a real film, and on every freshly built network whose registry method is
"cam" (no ImageNet weights exist here). Grad-CAM is checked against hand-computed maps and against an
independent full-network implementation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from ml import CLASSES
from ml.architectures import CXRNet
from ml.cam import explain, upsample_normalize
from ml.inference import Predictor
from ml.registry import IMAGENET_MEAN, IMAGENET_STD, ArchSpec, CamMethod, get_arch, list_archs
from ml.transforms import to_model_input
from tests.ml.conftest import ArchProbe

CAM_ARCHS = [n for n in list_archs() if get_arch(n).cam_method == "cam"]
GRADCAM_ARCHS = [n for n in list_archs() if get_arch(n).cam_method == "gradcam"]
DECOMPOSITION_ARCHS = [n for n in list_archs() if get_arch(n).cam_method == "linear-decomposition"]


def assert_logits_close(reconstructed: torch.Tensor, logits: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal up to `rtol` of each sample's largest |logit|: untrained deep nets in eval mode reach 1e12."""
    scale = logits.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    error = ((reconstructed - logits).abs() / scale).max().item()
    assert error <= rtol, f"relative error {error:.2e} > {rtol:.0e}\n{reconstructed}\n{logits}"


# --------------------------------------------------------------------------- the CAM identity


@pytest.fixture(scope="module")
def bundled() -> Predictor:
    return Predictor.from_checkpoint()


def test_cam_identity_on_the_bundled_trained_model(bundled: Predictor, real_films: list[np.ndarray]) -> None:
    assert bundled.spec.cam_method == "cam"
    x = to_model_input(real_films, bundled.input_size, bundled.mean, bundled.std)
    out = explain(bundled.model, bundled.spec, x)
    assert out.method == "cam" and out.identity == "mean"
    classifier = bundled.model.get_submodule(bundled.spec.classifier)
    torch.testing.assert_close(out.bias, classifier.bias.detach())
    assert out.bias.abs().max() > 0, "a trained head has non-zero biases, so this checks they are added"
    reconstructed = out.raw.mean(dim=(2, 3)) + out.bias
    # trained weights keep logits small: hold it to float32 precision
    torch.testing.assert_close(reconstructed, out.logits, rtol=1e-4, atol=1e-4)
    preds = bundled.predict(real_films)
    np.testing.assert_allclose([p.logits for p in preds], out.logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CAM_ARCHS)
def test_cam_identity_mean_plus_bias_is_the_logit(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    cam = arch_probe(name).cam
    assert cam.method == "cam" and cam.identity == "mean"
    assert_logits_close(cam.raw.double().mean(dim=(2, 3)) + cam.bias.double(), cam.logits.double())


@pytest.mark.parametrize("name", DECOMPOSITION_ARCHS)
def test_linear_decomposition_sum_plus_bias_is_the_logit(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    cam = arch_probe(name).cam
    assert cam.method == "linear-decomposition" and cam.identity == "sum"
    assert_logits_close(cam.raw.double().sum(dim=(2, 3)) + cam.bias.double(), cam.logits.double())


@pytest.mark.parametrize("name", GRADCAM_ARCHS)
def test_gradcam_maps_are_non_negative(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    cam = arch_probe(name).cam
    assert cam.method == "gradcam" and cam.identity is None
    assert (cam.raw >= 0).all()
    assert cam.raw.amax() > 0, "an all-zero map would explain nothing"


# --------------------------------------------------------------------------- Grad-CAM by hand


class ToyGapNet(CXRNet):
    """conv → ReLU as the backbone; GAP → linear as the head (a CAM-able network)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, len(CLASSES))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean(dim=(2, 3)))


class ToyFlatNet(ToyGapNet):
    """Same backbone, flatten → linear head (like CNN-X): location-dependent weights."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.fc = nn.Linear(5 * side * side, len(CLASSES))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(a, 1))


def toy_spec(method: CamMethod) -> ArchSpec:
    return ArchSpec(
        "toy", lambda _p: ToyGapNet(), 6, IMAGENET_MEAN, IMAGENET_STD, "features", "fc", method, "cxr-review", None
    )


def toy_input(side: int = 6, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_gradcam_of_a_linear_head_uses_the_classifier_weights_over_hw() -> None:
    torch.manual_seed(0)
    model = ToyGapNet().eval()
    x = toy_input()
    out = explain(model, toy_spec("gradcam"), x)
    a = model.features(x).detach().numpy()  # B×5×6×6
    w = model.fc.weight.detach().numpy()  # 4×5
    h, wd = a.shape[2:]
    # Grad-CAM weights α_{c,k} = mean ∂y_c/∂A_k = W_{c,k} / (h·w), so M_c = ReLU(Σ_k W_{c,k} A_k / (h·w))
    expected = np.maximum(np.einsum("kc,bchw->bkhw", w / (h * wd), a), 0.0)
    np.testing.assert_allclose(out.raw.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert out.method == "gradcam" and out.identity is None
    torch.testing.assert_close(out.bias, torch.zeros(len(CLASSES)))
    # on such a head, Grad-CAM is the rectified CAM scaled by 1/(h·w)
    cam = explain(model, toy_spec("cam"), x)
    torch.testing.assert_close(out.raw, torch.relu(cam.raw) / (h * wd), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.logits, model(x).detach())


def test_gradcam_and_decomposition_of_a_flatten_head_by_hand() -> None:
    torch.manual_seed(0)
    side = 6
    model = ToyFlatNet(side).eval()
    nn.init.normal_(model.fc.bias)
    x = toy_input(side)
    a = model.features(x).detach().numpy()  # B×5×h×w
    w = model.fc.weight.detach().numpy().reshape(len(CLASSES), 5, side, side)  # K×C×h×w
    b = model.fc.bias.detach().numpy()

    grad = explain(model, toy_spec("gradcam"), x)
    alpha = w.mean(axis=(2, 3))  # ∂y_c/∂A_{k,y,x} = W_{c,k,y,x}
    np.testing.assert_allclose(
        grad.raw.numpy(), np.maximum(np.einsum("kc,bchw->bkhw", alpha, a), 0.0), rtol=1e-5, atol=1e-7
    )

    spec = ArchSpec(
        "toyflat",
        lambda _p: ToyFlatNet(side),
        side,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "features",
        "fc",
        "linear-decomposition",
        "cxr-review",
        None,
    )
    dec = explain(model, spec, x)
    expected = np.einsum("kchw,bchw->bkhw", w, a)
    np.testing.assert_allclose(dec.raw.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dec.bias.numpy(), b)
    np.testing.assert_allclose(expected.sum(axis=(2, 3)) + b, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_gradcam_of_alexnet_matches_a_full_network_hook_implementation() -> None:
    """The head-only gradient (A detached) equals classic Grad-CAM: hooks, backward through the whole net."""
    spec = get_arch("alexnet")
    torch.manual_seed(0)
    model = spec.build(pretrained=False).eval()
    x = torch.randn(1, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(2))
    ours = explain(model, spec, x)

    saved: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        saved.append(out)

    handle = model.get_submodule(spec.cam_layer).register_forward_hook(keep)
    try:
        logits = model.net(x)  # torchvision's own AlexNet.forward, not our split
    finally:
        handle.remove()
    (a,) = saved
    reference = []
    for c in range(len(CLASSES)):
        a.grad = None
        logits[0, c].backward(retain_graph=True)
        assert a.grad is not None
        alpha = a.grad.mean(dim=(2, 3), keepdim=True)
        reference.append(torch.relu((alpha * a).sum(dim=1)).detach())
    expected = torch.stack(reference, dim=1)
    torch.testing.assert_close(ours.logits, logits.detach(), rtol=1e-5, atol=1e-7)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours.raw, expected, rtol=1e-4, atol=1e-5 * scale)


def test_cam_refuses_a_head_it_cannot_decompose() -> None:
    spec = ArchSpec(
        "toymlp",
        lambda _p: ToyGapNet(),
        6,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "features",
        "features",
        "cam",
        "cxr-review",
        None,
    )
    with pytest.raises(TypeError, match="linear or 1x1-conv classifier"):
        explain(ToyGapNet().eval(), spec, toy_input())


def test_explain_is_safe_to_share_between_threads() -> None:
    """No hooks or shared state: concurrent calls on one model give each caller its own maps."""
    spec = get_arch("cnnx")
    torch.manual_seed(0)
    model = spec.build(pretrained=False).eval()
    inputs = [torch.randn(1, 3, 180, 180, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    sequential = [explain(model, spec, x).raw for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = explain(model, spec, inputs[i]).raw

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(sequential):
        torch.testing.assert_close(results[i], expected)


# --------------------------------------------------------------------------- upsampling


def test_upsample_normalize_scales_each_map_to_unit_range() -> None:
    raw = torch.zeros(1, 2, 3, 3)
    raw[0, 0] = torch.arange(9.0).view(3, 3) * 100 - 50  # any units, any sign
    raw[0, 1] = 7.0  # constant: no spatial evidence
    out = upsample_normalize(raw, (30, 20))
    assert out.shape == (1, 2, 30, 20)
    assert out[0, 0].min() == 0.0 and out[0, 0].max() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(out[0, 1], torch.zeros(30, 20))
    # the strongest location stays the strongest: bottom-right corner
    assert out[0, 0, -1, -1] == pytest.approx(1.0, abs=1e-6) and out[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("level", [0.0, 7.0, -3.5e4, 1e12])
def test_a_constant_map_of_any_magnitude_becomes_zeros(level: float) -> None:
    """Interpolation rounding noise (a few ulps) must not be stretched into a fake pattern."""
    out = upsample_normalize(torch.full((1, 1, 7, 7), level), (224, 224))
    assert torch.equal(out, torch.zeros(1, 1, 224, 224))


def test_a_faint_but_real_map_is_still_normalised() -> None:
    raw = (torch.arange(16.0) * 1e-9).view(1, 1, 4, 4)  # tiny logits of an untrained net are still evidence
    out = upsample_normalize(raw, (8, 8))
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0, abs=1e-6)
