"""ImageNet weights: local files are found where the messages say, and an offline machine fails fast and clearly."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from ml.pretrained import (
    DEFAULT_DOWNLOAD_TIMEOUT_S,
    PretrainedWeightsUnavailable,
    download_timeout,
    load_torchvision_state_dict,
    pretrained_available,
)
from ml.registry import get_arch

RESNET18 = "ResNet18_Weights.IMAGENET1K_V1"
RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture
def no_weights_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    weights, torch_home = tmp_path / "weights", tmp_path / "torch-home"
    weights.mkdir()
    torch_home.mkdir()
    monkeypatch.setenv("CXR_PRETRAINED_DIR", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return weights, torch_home


def imagenet_resnet18_file(path: Path) -> dict[str, torch.Tensor]:
    """A stand-in for the real download: a 1000-class ResNet-18 state dict (random weights)."""
    torch.manual_seed(3)
    state = tvm.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_offline_download_fails_fast_with_where_to_put_the_file(
    no_weights_anywhere: tuple[Path, Path], unresponsive_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, torch_home = no_weights_anywhere
    monkeypatch.setenv("CXR_DOWNLOAD_TIMEOUT", "1")
    started = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        load_torchvision_state_dict(RESNET18)
    assert time.monotonic() - started < 15, "a silent network must not hang the command"
    message = str(info.value)
    assert f"download https://download.pytorch.org/models/{RESNET18_FILE}" in message
    assert str(weights / RESNET18_FILE) in message
    assert str(torch_home / "hub" / "checkpoints" / RESNET18_FILE) in message
    assert "--no-pretrained" in message
    assert socket.getdefaulttimeout() is None, "the download's socket bound is lifted afterwards"
    assert not (torch_home / "hub" / "checkpoints" / RESNET18_FILE).exists()


def test_weights_in_cxr_pretrained_dir_are_used(no_weights_anywhere: tuple[Path, Path]) -> None:
    weights, _ = no_weights_anywhere
    assert not pretrained_available(get_arch("resnet18").pretrained_weights)
    saved = imagenet_resnet18_file(weights / RESNET18_FILE)
    assert pretrained_available(get_arch("resnet18").pretrained_weights)
    model = get_arch("resnet18").build(pretrained=True)
    got = model.state_dict()
    torch.testing.assert_close(got["net.conv1.weight"], saved["conv1.weight"])
    torch.testing.assert_close(got["net.layer4.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])
    assert got["net.fc.weight"].shape == (4, 512), "the ImageNet head is replaced by a 4-class one"


def test_weights_in_the_torch_hub_cache_are_used(no_weights_anywhere: tuple[Path, Path]) -> None:
    _, torch_home = no_weights_anywhere
    saved = imagenet_resnet18_file(torch_home / "hub" / "checkpoints" / RESNET18_FILE)
    torch.testing.assert_close(load_torchvision_state_dict(RESNET18)["conv1.weight"], saved["conv1.weight"])


def test_timm_weights_in_cxr_pretrained_dir_are_used(no_weights_anywhere: tuple[Path, Path]) -> None:
    import timm
    from safetensors.torch import save_file

    weights, _ = no_weights_anywhere
    spec = get_arch("xception")
    assert not pretrained_available(spec.pretrained_weights)
    torch.manual_seed(4)
    saved = timm.create_model("legacy_xception", pretrained=False).state_dict()
    save_file(saved, str(weights / "legacy_xception.safetensors"))
    assert pretrained_available(spec.pretrained_weights)
    got = spec.build(pretrained=True).state_dict()
    torch.testing.assert_close(got["net.conv1.weight"], saved["conv1.weight"])
    assert got["net.fc.weight"].shape[0] == 4


def test_nothing_to_look_for_without_weights() -> None:
    assert pretrained_available(None) is False
    with pytest.raises(ValueError, match="cnnx has no ImageNet weights"):
        get_arch("cnnx").build(pretrained=True)


def test_download_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_DOWNLOAD_TIMEOUT", raising=False)
    assert download_timeout() == DEFAULT_DOWNLOAD_TIMEOUT_S
    monkeypatch.setenv("CXR_DOWNLOAD_TIMEOUT", "2.5")
    assert download_timeout() == 2.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("CXR_DOWNLOAD_TIMEOUT", bad)
        assert download_timeout() == DEFAULT_DOWNLOAD_TIMEOUT_S
