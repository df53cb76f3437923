"""The architecture registry, tested over every registered network (a new one is covered the moment it is
registered): it builds, runs on real films at its input size, gives four probabilities and four CAMs,
and its dotted `cam_layer` / `classifier` paths name the modules the code really uses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ml import CLASSES
from ml.cam import upsample_normalize
from ml.cam.overlay import normalized_map
from ml.cli import parameter_count
from ml.registry import ArchSpec, get_arch, list_archs, register_arch
from tests.ml.conftest import ArchProbe

ARCHS = list_archs()

# How A = forward_features(x) is obtained from the cam_layer module's output, where it is not that output
# itself: torchvision's DenseNet applies its last ReLU functionally, outside any module (see its spec note).
AFTER_CAM_LAYER: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"densenet201": torch.relu}


def test_the_paper_networks_are_registered() -> None:
    assert set(ARCHS) >= {
        "alexnet",
        "vgg16",
        "vgg19",
        "resnet18",
        "resnet50",
        "resnet101",
        "googlenet",
        "inception_v3",
        "squeezenet1_1",
        "densenet201",
        "inception_resnet_v2",
        "xception",
        "cnnx",
    }
    assert sorted(ARCHS) == ARCHS


def test_duplicate_registration_is_refused() -> None:
    spec = get_arch("resnet18")
    with pytest.raises(ValueError, match="already registered"):
        register_arch(spec)
    with pytest.raises(ValueError, match="already registered"):
        register_arch(
            ArchSpec(
                "resnet18",
                spec.builder,
                64,
                spec.mean,
                spec.std,
                spec.cam_layer,
                spec.classifier,
                "cam",
                "torchvision",
                None,
            )
        )
    assert get_arch("resnet18") is spec


def test_unknown_name_raises_key_error_listing_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_arch("resnet19")
    message = str(info.value)
    assert "resnet19" in message
    for name in ARCHS:
        assert name in message


@pytest.mark.parametrize("name", ARCHS)
def test_spec_is_consistent(name: str) -> None:
    spec = get_arch(name)
    assert spec.name == name
    assert spec.cam_method in ("cam", "gradcam", "linear-decomposition")
    assert 32 <= spec.input_size <= 1024
    assert len(spec.mean) == len(spec.std) == 3 and all(s > 0 for s in spec.std)
    assert (spec.pretrained_weights is None) == (name == "cnnx")


@pytest.mark.parametrize("name", ARCHS)
def test_builds_and_runs_at_its_input_size(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    probe = arch_probe(name)
    size = probe.spec.input_size
    assert probe.input_shape == (probe.batch, 3, size, size)
    assert probe.cam.logits.shape == (probe.batch, len(CLASSES))
    assert torch.isfinite(probe.cam.logits).all()
    # explain's logits are the network's own: forward_head applied to forward_features
    torch.testing.assert_close(probe.cam.logits, probe.head_logits)


@pytest.mark.parametrize("name", ARCHS)
def test_predictor_gives_four_probabilities_summing_to_one(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    probe = arch_probe(name)
    assert len(probe.predictions) == probe.batch
    for i, pred in enumerate(probe.predictions):
        assert list(pred.probabilities) == list(CLASSES)
        values = np.array(list(pred.probabilities.values()))
        assert ((values >= 0) & (values <= 1)).all()
        assert values.sum() == pytest.approx(1.0, abs=1e-5)
        assert pred.predicted_class == CLASSES[int(values.argmax())]
        # the Predictor's pass is the same computation as explain's
        expected = torch.softmax(probe.cam.logits[i].double(), dim=0).numpy()
        np.testing.assert_allclose(values, expected, atol=1e-5)
        assert pred.cam_method == probe.spec.cam_method


@pytest.mark.parametrize("name", ARCHS)
def test_four_cams_of_input_size_in_unit_range(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    probe = arch_probe(name)
    raw = probe.cam.raw
    b, k, h, w = raw.shape
    assert (b, k) == (probe.batch, len(CLASSES))
    assert 1 < h < probe.spec.input_size and 1 < w < probe.spec.input_size
    assert (h, w) == tuple(probe.features.shape[2:]), "the maps live on the feature map's grid"
    size = probe.spec.input_size
    maps = upsample_normalize(raw, (size, size))
    assert maps.shape == (b, k, size, size)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for i, pred in enumerate(probe.predictions):
        assert pred.cam_raw.shape == (k, h, w) and pred.cam_raw.dtype == np.float32
        np.testing.assert_allclose(pred.cam_raw, raw[i].numpy(), rtol=1e-4, atol=1e-6 * float(raw.abs().max()))
        m = normalized_map(pred.cam_raw[0], 50, 40)
        assert m.shape == (50, 40) and m.min() >= 0.0 and m.max() <= 1.0


@pytest.mark.parametrize("name", ARCHS)
def test_cam_layer_and_classifier_paths_resolve(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    probe = arch_probe(name)
    # get_submodule ran in the probe; the classifier is the layer with one output per class
    assert probe.classifier_type in ("Linear", "Conv2d")
    assert probe.classifier_outputs == len(CLASSES)


@pytest.mark.parametrize("name", ARCHS)
def test_cam_layer_output_is_the_feature_map(name: str, arch_probe: Callable[[str], ArchProbe]) -> None:
    """A forward hook on `spec.cam_layer` sees exactly what `forward_features` returns (the CAM's A)."""
    probe = arch_probe(name)
    after = AFTER_CAM_LAYER.get(name, lambda t: t)
    torch.testing.assert_close(after(probe.cam_layer_output), probe.features, rtol=0, atol=0)


def test_cnnx_has_about_1_4_million_parameters(arch_probe: Callable[[str], ArchProbe]) -> None:
    probe = arch_probe("cnnx")
    assert 1_300_000 <= probe.parameters <= 1_500_000
    assert probe.spec.fixed_input_size and probe.spec.input_size == 180


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_count_without_building_matches_the_real_network(
    name: str, arch_probe: Callable[[str], ArchProbe]
) -> None:
    """`cxr-review archs` counts on the meta device; the count must be the real network's."""
    assert parameter_count(name) == arch_probe(name).parameters
