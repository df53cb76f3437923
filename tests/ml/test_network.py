"""Finer maps (`ml.network.dilate_last_stage`) and fine-tuning from a checkpoint (`init_checkpoint`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ml import CLASSES
from ml.cam import explain
from ml.checkpoints import (
    CheckpointError,
    base_meta,
    file_sha256,
    load_init_weights,
    load_model,
    read_meta,
    save_checkpoint,
)
from ml.config import TrainConfig
from ml.inference import Predictor
from ml.network import DILATABLE_ARCHS, build_network, is_dilated
from ml.registry import get_arch, list_archs
from ml.train import train


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilated_last_stage_gives_2x_finer_maps_and_keeps_the_normal_features_on_its_even_cells(name: str) -> None:
    spec = get_arch(name)
    torch.manual_seed(0)
    normal = spec.build(pretrained=False).eval()
    dilated = build_network(spec, dilated=True).eval()
    dilated.load_state_dict(normal.state_dict())  # every weight has the same shape
    assert is_dilated(dilated) and not is_dilated(normal)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = normal.forward_features(x), dilated.forward_features(x)
    assert a.shape[-2:] == (7, 7) and b.shape[-2:] == (14, 14)
    # atrous convolution: the dense map sampled at its even cells is the strided network's map (up to the
    # float rounding of different convolution algorithms, relative to the map's scale); the cells between are new
    assert ((b[..., ::2, ::2] - a).abs().max() / a.abs().max()).item() < 1e-5
    assert ((b[..., 1::2, 1::2] - a).abs().max() / a.abs().max()).item() > 1e-2
    assert explain(dilated, spec, x).raw.shape == (1, len(CLASSES), 14, 14)


def test_only_resnets_can_be_dilated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs a ResNet \(resnet18, resnet50, resnet101\); densenet201"):
        build_network(get_arch("densenet201"), dilated=True)
    cfg = TrainConfig(arch="squeezenet1_1", data_dirs=[str(tmp_path)], out_dir=str(tmp_path), dilate_last_stage=True)
    with pytest.raises(ValueError, match="squeezenet1_1 has no ResNet last stage"):
        cfg.validate()
    assert {n for n in list_archs() if get_arch(n).cam_layer == "net.layer4"} == set(DILATABLE_ARCHS)


def test_a_normal_checkpoint_loads_into_a_dilated_network_and_a_dilated_one_rebuilds_itself(tmp_path: Path) -> None:
    spec = get_arch("resnet18")
    torch.manual_seed(0)
    normal = spec.build(pretrained=False).eval()
    meta = base_meta(spec, input_size=224, scenario_classes=CLASSES)
    path = save_checkpoint(tmp_path / "normal.pt", normal, meta)
    dilated = build_network(spec, dilated=True)
    load_init_weights(dilated, path, arch="resnet18")
    for (k, v), w in zip(normal.state_dict().items(), dilated.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    # a checkpoint that says so is rebuilt dilated by load_model, so inference and CAM see 14x14 maps
    fine = save_checkpoint(tmp_path / "fine.pt", dilated, replace(meta, dilate_last_stage=True))
    model, fine_meta = load_model(fine)
    assert is_dilated(model) and fine_meta.dilate_last_stage
    film = np.random.default_rng(0).integers(0, 256, (300, 260), dtype=np.uint8)
    (prediction,) = Predictor(model, fine_meta).predict([film])
    assert prediction.cam_raw.shape == (len(CLASSES), 14, 14)


def test_init_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    spec = get_arch("squeezenet1_1")
    path = save_checkpoint(tmp_path / "sq.pt", spec.build(pretrained=False), base_meta(spec, input_size=224,
                           scenario_classes=CLASSES))  # fmt: skip
    with pytest.raises(CheckpointError, match="is a squeezenet1_1 network; this run trains resnet18"):
        load_init_weights(get_arch("resnet18").build(pretrained=False), path, arch="resnet18")
    data = tmp_path / "data"
    data.mkdir()
    cfg = TrainConfig(arch="resnet18", data_dirs=[str(data)], out_dir=str(tmp_path / "o"), init_checkpoint=str(path))
    with pytest.raises(ValueError, match="is a squeezenet1_1; this run trains resnet18"):
        cfg.validate()
    missing = TrainConfig(arch="resnet18", data_dirs=[str(data)], out_dir="o", init_checkpoint=str(tmp_path / "no.pt"))
    with pytest.raises(ValueError, match=r"no\.pt is not a file"):
        missing.validate()
    both = TrainConfig(arch="resnet18", data_dirs=[str(data)], out_dir="o", init_checkpoint=str(path), pretrained=True)
    with pytest.raises(ValueError, match="choose one"):
        both.validate()


def test_fine_tuning_a_checkpoint_dilated_with_the_explanation_loss(small_dataset: Path, tmp_path: Path) -> None:
    """The lead's recipe in small: a normal run, then a few steps from its weights, dilated, with λ > 0."""
    common = dict(arch="resnet18", data_dirs=[str(small_dataset)], batch_size=8, input_size=64, epochs=1, seed=0)
    first = train(TrainConfig(**common, out_dir=str(tmp_path / "plain"), max_steps_per_epoch=1))  # type: ignore[arg-type]
    start = first["best_checkpoint"]
    cfg = TrainConfig(
        **common,  # type: ignore[arg-type]
        out_dir=str(tmp_path / "fine"),
        max_steps_per_epoch=1,
        lr=1e-12,  # effectively no step: the weights stay the start's
        init_checkpoint=start,
        dilate_last_stage=True,
        explanation_weight=0.5,
    )
    summary = train(cfg)
    meta = read_meta(summary["best_checkpoint"])
    assert meta.dilate_last_stage is True and meta.init_checkpoint_sha256 == file_sha256(start)
    assert meta.train_config["init_checkpoint"] == start
    tuned, _ = load_model(summary["best_checkpoint"])
    base, _ = load_model(start)
    assert is_dilated(tuned)
    conv = "net.conv1.weight"
    torch.testing.assert_close(tuned.state_dict()[conv], base.state_dict()[conv], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert tuned.forward_features(torch.randn(1, 3, 64, 64)).shape[-2:] == (4, 4)  # 2x of 64 px's 2x2
