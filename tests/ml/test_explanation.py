"""The explanation loss (`ml.explanation`): hand-computed values, allowed regions from lung masks and
reviewers' boxes, masks that follow the augmentation, maps equal to the product's CAMs on every
registered network, and a short real training run with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ml import CLASSES
from ml.architectures import CXRNet
from ml.cam import explain
from ml.checkpoints import read_meta
from ml.data import LABELS, LoadedImages, ManifestError, Record, Region, XrayDataset, parse_regions, read_manifest
from ml.explanation import (
    ExplainedObjective,
    ExplanationLoss,
    FeaturesAndLogits,
    allowed_masks,
    class_maps,
    dilate,
    film_to_frame,
)
from ml.lung_crop import Box
from ml.registry import IMAGENET_MEAN, IMAGENET_STD, ArchSpec, get_arch, list_archs
from ml.train import TrainConfig, train
from ml.transforms import train_augmentation

PNEUMONIA = LABELS.index("pneumonia")


class TinyGap(CXRNet):
    """Feature map A = the input's first two channels at 2×2 (average-pooled), then GAP + linear."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(2, len(CLASSES))
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x[:, :2], 2)

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean(dim=(2, 3)))


TINY = ArchSpec("tiny", lambda _p: TinyGap(torch.zeros(4, 2)), 4, IMAGENET_MEAN, IMAGENET_STD, "", "fc", "cam",
                "cxr-review", None)  # fmt: skip
# class weights: normal = A0 + A1, bacterial = A0, viral = −A0 + A1, covid = −A1
WEIGHT = torch.tensor([[1.0, 1.0], [1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
A0 = [[1.0, 0.0], [0.0, 0.0]]
A1 = [[0.0, 2.0], [0.0, 1.0]]


def tiny_batch() -> torch.Tensor:
    """Two identical 4×4 inputs whose 2×2 feature map is (A0, A1)."""
    a = torch.tensor([A0, A1])  # 2×2×2
    x = a.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 2×4×4, constant over each 2×2 cell
    return torch.cat([x, torch.zeros(1, 4, 4)]).unsqueeze(0).repeat(2, 1, 1, 1)


def left_quarter_allowed(n: int = 2) -> torch.Tensor:
    """n×1×4×4: only the first of the four columns is allowed → cover [[0.5, 0], [0.5, 0]] on the 2×2 grid."""
    m = torch.zeros(n, 1, 4, 4)
    m[..., 0] = 1.0
    return m


def test_loss_equals_the_hand_computed_share_on_a_tiny_gap_net() -> None:
    net = TinyGap(WEIGHT)
    x = tiny_batch()
    features, logits = FeaturesAndLogits(net)(x)
    maps = class_maps(net, TINY, features, logits)
    # normal: M = A0 + A1 = [[1, 2], [0, 1]]
    torch.testing.assert_close(maps[0, 0], torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    loss = ExplanationLoss(CLASSES)
    targets = torch.tensor([CLASSES.index("normal"), PNEUMONIA])
    shares = loss.shares(maps, left_quarter_allowed(), targets)
    # normal: E = [[1, 2], [0, 1]], total 4; outside = 1·0.5 + 2·1 + 0·0.5 + 1·1 = 3.5; ε = 1 % of Σ|M| = 0.04
    # pneumonia: relu(bacterial) + relu(viral) = [[1, 0], [0, 0]] + [[0, 2], [0, 1]]: the same E, outside 3.5;
    # ε = 1 % of (Σ|M_bacterial| + Σ|M_viral|) = 1 % of (1 + 4) = 0.05
    torch.testing.assert_close(shares, torch.tensor([3.5 / 4.04, 3.5 / 4.05]), atol=1e-6, rtol=0)
    # covid: M = −A1 ≤ 0 everywhere → no positive evidence → share 0 (nothing to penalise)
    covid = loss.shares(maps, left_quarter_allowed(), torch.tensor([3, 3]))
    torch.testing.assert_close(covid, torch.zeros(2))
    # viral alone: M = [[−1, 2], [0, 1]], E = [[0, 2], [0, 1]]: all of it in the right column, 3 / (3 + 0.04)
    torch.testing.assert_close(loss(maps, left_quarter_allowed(), torch.tensor([2, 2])), torch.tensor(3 / 3.04))


def test_objective_adds_lambda_times_the_share_and_trains_the_head() -> None:
    net = TinyGap(WEIGHT)
    criterion = nn.CrossEntropyLoss()
    objective = ExplainedObjective(net, TINY, criterion, ExplanationLoss(CLASSES), weight=2.0)
    x, y = tiny_batch(), torch.tensor([0, 0])
    total = objective(FeaturesAndLogits(net), x, y, left_quarter_allowed())
    ce = criterion(net(x), y)
    torch.testing.assert_close(total, ce + 2.0 * 3.5 / 4.04)
    total.backward()
    assert net.fc.weight.grad is not None and net.fc.weight.grad[0].abs().sum() > 0
    assert objective.take_mean_share() == pytest.approx(3.5 / 4.04) and objective.take_mean_share() is None


def test_rows_the_scenario_does_not_train_count_for_nothing() -> None:
    net = TinyGap(WEIGHT)
    features, logits = FeaturesAndLogits(net)(tiny_batch())
    maps = class_maps(net, TINY, features, logits)
    s1 = ExplanationLoss(("normal", "covid19"))
    bacterial = torch.tensor([1, 1])
    assert torch.isnan(s1.shares(maps, left_quarter_allowed(), bacterial)).all()
    assert s1(maps, left_quarter_allowed(), bacterial).item() == 0.0


# --------------------------------------------------------------------------- allowed regions
def test_dilate_is_an_exact_disk() -> None:
    mask = np.zeros((1, 21, 21), dtype=bool)
    mask[0, 10, 10] = True
    out = dilate(mask, 4)[0]
    yy, xx = np.mgrid[:21, :21]
    np.testing.assert_array_equal(out, (yy - 10) ** 2 + (xx - 10) ** 2 <= 16)
    assert dilate(mask, 0).sum() == 1


def loaded_with_lungs(regions: tuple[Region, ...] = (), boxes: list[Box | None] | None = None) -> LoadedImages:
    """One 20×20 'film' whose lung mask is its left half."""
    lungs = np.zeros((1, 20, 20), dtype=bool)
    lungs[0, :, :10] = True
    record = Record(Path("f.png"), "normal", "test", "p", "PA", "train", regions=regions)
    return LoadedImages([record], np.zeros((1, 20, 20), np.uint8), lung_masks=lungs, boxes=boxes)


def test_allowed_region_is_the_dilated_lungs_plus_findings_minus_wrong_evidence() -> None:
    plain = allowed_masks(loaded_with_lungs(), margin=0.1)[0]  # 2 px at 20 px
    assert plain[:, :12].all() and not plain[:, 12:].any()
    regions = (
        Region("finding", (0.75, 0.0, 1.0, 0.25)),  # top right corner: allowed although outside the lungs
        Region("wrong_evidence", (0.0, 0.5, 0.25, 1.0)),  # bottom left, inside the lungs: forbidden
        Region("finding", (0.0, 0.9, 0.1, 1.0)),  # a finding inside a wrong-evidence box: forbidden wins
    )
    got = allowed_masks(loaded_with_lungs(regions), margin=0.1)[0]
    assert got[:5, 15:].all() and not got[10:, :5].any()
    assert got[:10, :12].all() and not got[5:, 12:].any()


def test_the_loss_on_a_film_changes_when_its_box_changes() -> None:
    net = TinyGap(WEIGHT)
    x = tiny_batch()[:1]
    features, logits = FeaturesAndLogits(net)(x)
    maps = class_maps(net, TINY, features, logits)
    loss = ExplanationLoss(CLASSES)
    y = torch.tensor([0])

    def share(regions: tuple[Region, ...]) -> float:
        allowed = allowed_masks(loaded_with_lungs(regions), margin=0.0)
        return float(loss(maps.detach(), torch.from_numpy(allowed[:, None]), y))

    # normal's map [[1, 2], [0, 1]]: the lungs (left half) hold 1 of 4 (ε = 0.04)
    assert share(()) == pytest.approx(3 / 4.04)
    # a wrong-evidence box over the top-left cell: now nothing is allowed where evidence lies
    assert share((Region("wrong_evidence", (0.0, 0.0, 0.5, 0.5)),)) == pytest.approx(4 / 4.04)
    # a finding box over the top-right cell instead: 3 of 4 allowed
    assert share((Region("finding", (0.5, 0.0, 1.0, 0.5)),)) == pytest.approx(1 / 4.04)


def test_regions_map_into_a_lung_crop() -> None:
    crop = Box(top=0.2, left=0.1, bottom=0.6, right=0.5)
    inside = film_to_frame(Region("finding", (0.1, 0.2, 0.3, 0.4)), crop)
    assert inside is not None and inside.as_tuple() == pytest.approx((0.0, 0.0, 0.5, 0.5))
    assert film_to_frame(Region("finding", (0.6, 0.7, 0.9, 0.9)), crop) is None
    assert film_to_frame(Region("finding", (0.1, 0.2, 0.3, 0.4)), None) == Box(0.2, 0.1, 0.4, 0.3)


def test_manifest_regions_are_read_and_bad_ones_refused(tmp_path: Path) -> None:
    cell = json.dumps([{"kind": "wrong_evidence", "box": [0.1, 0.2, 0.3, 0.4]}])
    assert parse_regions(cell) == (Region("wrong_evidence", (0.1, 0.2, 0.3, 0.4)),)
    assert parse_regions("") == ()
    with pytest.raises(ValueError, match="0 ≤ x0 < x1 ≤ 1"):
        parse_regions(json.dumps([{"kind": "finding", "box": [0.5, 0.2, 0.3, 0.4]}]))
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_regions(json.dumps([{"kind": "lesion", "box": [0.1, 0.2, 0.3, 0.4]}]))
    (tmp_path / "manifest.csv").write_text(
        "path,label,source,patient_id,view,split,regions\n"
        f'a.png,normal,upload,p1,,train,"{cell.replace(chr(34), chr(34) * 2)}"\n'
        'b.png,normal,upload,p2,,train,"[{""kind"": ""finding""}]"\n'
    )
    with pytest.raises(ManifestError, match=r"manifest.csv:3: regions must be"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("\n".join((tmp_path / "manifest.csv").read_text().splitlines()[:2]))
    assert read_manifest(tmp_path)[0].regions == (Region("wrong_evidence", (0.1, 0.2, 0.3, 0.4)),)


def test_the_mask_follows_the_image_through_the_augmentation() -> None:
    torch.manual_seed(3)
    allowed = np.zeros((1, 64, 64), dtype=bool)
    allowed[0, 10:40, 5:30] = True
    images = np.where(allowed, 220, 20).astype(np.uint8)
    record = Record(Path("f.png"), "normal", "test", "p", "PA", "train")
    ds = XrayDataset(LoadedImages([record], images), train_augmentation(), allowed)
    moved = 0
    for _ in range(5):
        image, label, mask = ds[0]
        assert image.shape == mask.shape == (1, 64, 64) and mask.dtype == torch.uint8 and label == 0
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor
        m = mask.bool()
        # the same affine moved both: the bright region is exactly the mask (jitter keeps the order of levels)
        assert image[m].min() > image[~m].max()
        moved += int(not torch.equal(m[0], torch.from_numpy(allowed[0])))
    assert moved >= 4
    with pytest.raises(ValueError, match="do not match"):
        XrayDataset(LoadedImages([record], images), None, allowed[:, :32])


# --------------------------------------------------------------------------- every registered network
@pytest.mark.parametrize("name", list_archs())
def test_training_maps_are_the_products_cams_and_carry_gradient(name: str) -> None:
    spec = get_arch(name)
    torch.manual_seed(0)
    net = spec.build(pretrained=False).eval()
    size = spec.input_size if spec.fixed_input_size else 96
    x = torch.randn(1, 3, size, size)
    features, logits = FeaturesAndLogits(net)(x)
    maps = class_maps(net, spec, features, logits)
    reference = explain(net, spec, x).raw
    assert maps.shape == reference.shape
    scale = reference.abs().max().clamp_min(1e-6)
    assert ((maps.detach() - reference).abs().max() / scale).item() < 1e-4
    allowed = torch.zeros(1, 1, size, size)
    allowed[..., : size // 2] = 1.0
    target = int(torch.relu(maps).sum((2, 3)).argmax())  # the class with most positive evidence: a gradient
    share = ExplanationLoss(CLASSES)(maps, allowed, torch.tensor([target]))
    share.backward()
    first = next(p for p in net.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0, "the loss must reach the first layer"


# --------------------------------------------------------------------------- a short real run
def test_a_short_run_with_the_explanation_loss(small_dataset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        arch="resnet18", data_dirs=[str(small_dataset)], out_dir=str(tmp_path / "run"), epochs=1, batch_size=8,
        input_size=64, max_steps_per_epoch=2, explanation_weight=1.0, seed=0,
    )  # fmt: skip
    events: list[dict[str, Any]] = []
    summary = train(cfg, callback=events.append)
    outside = summary["history"][0]["train_evidence_outside"]
    assert 0.0 <= outside <= 1.0
    meta = read_meta(summary["best_checkpoint"])
    assert meta.train_config["explanation_weight"] == 1.0 and meta.lungseg_sha256
    assert meta.data is not None and meta.data.reviewer_regions == {"films": 0, "wrong_evidence": 0, "finding": 0}
    assert all(np.isfinite(e["loss"]) for e in events if e["type"] == "step")
