"""Lung segmentation: the bundled model on real films (the Dice acceptance test), Dice, augmentation,
checkpoints, and `cxr-review train-lungs` on real data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml import CLASSES
from ml.checkpoints import DEFAULT_CHECKPOINT, CheckpointError, base_meta, read_lungseg_checkpoint, save_checkpoint
from ml.cli import main as cli_main
from ml.data import ManifestError
from ml.lungseg import BUNDLED_LUNGSEG, CHECKPOINT_KIND, LungSegmenter, LungUNet, load_lung_model
from ml.lungseg.data import augment_batch, load_lungseg_split, read_lungseg_manifest
from ml.lungseg.model import fuse_for_inference
from ml.lungseg.train import LungTrainConfig, dice, train_lungs
from ml.registry import get_arch
from ml.transforms import load_grayscale

DICE_TARGET = 0.95
"""The issue's target for mean Dice on the lungseg validation split (a previous small U-Net reached 0.93)."""


@pytest.fixture(scope="module")
def segmenter() -> LungSegmenter:
    return LungSegmenter.from_checkpoint()


@pytest.fixture(scope="module")
def val_pairs(lungseg_data_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = [r for r in read_lungseg_manifest(lungseg_data_dir) if r["split"] == "val"]
    assert len(rows) == 28, "the shared lungseg set has 28 validation pairs"
    return [(load_grayscale(r["image"]), load_grayscale(r["mask"]) > 127) for r in rows]


@pytest.fixture(scope="module")
def small_lungseg(lungseg_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lungseg manifest with 6 train and 2 val pairs of the real set (absolute paths; nothing copied)."""
    rows = read_lungseg_manifest(lungseg_data_dir)
    chosen = [r for r in rows if r["split"] == "train"][:6] + [r for r in rows if r["split"] == "val"][:2]
    folder = tmp_path_factory.mktemp("small-lungseg")
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return folder


# --------------------------------------------------------------------------- the bundled model


def test_bundled_model_reaches_the_dice_target_on_the_validation_split(
    segmenter: LungSegmenter, val_pairs: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    scores = [dice(segmenter.predict(image), mask) for image, mask in val_pairs]
    mean = float(np.mean(scores))
    assert mean >= DICE_TARGET, f"mean val Dice {mean:.4f} < {DICE_TARGET}; worst {min(scores):.3f}"
    assert min(scores) > 0.75, f"one validation film is badly segmented (Dice {min(scores):.3f})"
    # the number in the checkpoint (and the model card) is what the bundled file gives
    assert mean == pytest.approx(segmenter.meta.val["dice_as_stored"], abs=2e-3)


def test_bundled_checkpoint_is_small_and_describes_itself(segmenter: LungSegmenter) -> None:
    assert BUNDLED_LUNGSEG.stat().st_size <= 5 * 1024 * 1024
    meta = segmenter.meta
    assert meta.to_dict()["kind"] == CHECKPOINT_KIND and meta.input_size == 256 and meta.threshold == 0.5
    assert meta.command is not None and meta.command.startswith("cxr-review train-lungs")
    assert len(meta.data["manifest_sha256"]) == 64
    model, _ = load_lung_model(BUNDLED_LUNGSEG)
    assert meta.parameters == sum(p.numel() for p in model.parameters())
    assert (BUNDLED_LUNGSEG.parent / "LUNGSEG_MODEL_CARD.md").is_file()
    assert segmenter.checkpoint_sha256 is not None and len(segmenter.checkpoint_sha256) == 64


@pytest.mark.parametrize("source", ["kermany", "hannover"])
def test_masks_on_unseen_sources_come_back_at_the_films_own_size_with_two_lungs(
    segmenter: LungSegmenter, cxr_data_dir: Path, source: str
) -> None:
    """Pediatric Kermany and Hannover films were never trained on: the mask must still be plausible."""
    with (cxr_data_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        paths = sorted(r["path"] for r in csv.DictReader(fh) if r["source"] == source and r["split"] == "test")
    for rel in paths[:3]:
        film = load_grayscale(str(cxr_data_dir / rel))
        mask = segmenter.predict(film)
        assert mask.shape == film.shape and mask.dtype == np.bool_
        h, w = mask.shape
        assert 0.08 < mask.mean() < 0.6, f"{rel}: lung fraction {mask.mean():.3f}"
        # one lung on each side of the midline, and none in the top corners (shoulders, neck, labels);
        # the bottom corners are not checked: tightly cropped films cut through the lung bases
        left, right = mask[:, : w // 2].mean(), mask[:, w // 2 :].mean()
        assert left > 0.03 and right > 0.03, f"{rel}: left {left:.3f}, right {right:.3f}"
        assert mask[: h // 10, : w // 10].mean() < 0.05 and mask[: h // 10, -w // 10 :].mean() < 0.05


def test_folding_batchnorm_for_inference_keeps_the_outputs() -> None:
    model, _ = load_lung_model(BUNDLED_LUNGSEG)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original is left alone"
    x = torch.randn(2, 1, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_probability_and_mask_agree_and_threshold_at_one_half(segmenter: LungSegmenter) -> None:
    film = (np.random.default_rng(0).random((300, 200)) * 255).astype(np.uint8)
    film[60:240, 30:90] = 40  # two dark 'lung fields' in a bright film
    film[60:240, 110:170] = 40
    prob = segmenter.predict_prob(film)
    assert prob.shape == film.shape and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    np.testing.assert_array_equal(segmenter.predict(film), prob >= 0.5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10, 3), np.uint8), "2-D"),
        (np.zeros((0, 10), np.uint8), "2-D"),
        (np.zeros((10, 10), np.float32), "uint8"),
    ],
)
def test_bad_images_are_a_clear_error(segmenter: LungSegmenter, image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segmenter.predict(image)


# --------------------------------------------------------------------------- pieces


def test_dice_on_hand_made_masks() -> None:
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, 2:7] = True  # 30 of 50 pixels shared
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a, b) == pytest.approx(2 * 30 / 100)
    assert dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, a[:5])


@pytest.mark.parametrize("size", [256, 192])
def test_network_output_matches_its_input_size(size: int) -> None:
    net = LungUNet().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, size, size))
    assert out.shape == (2, 1, size, size)


def test_augmentation_warps_image_and_mask_together_and_is_seeded(lungseg_data_dir: Path) -> None:
    mask = torch.zeros(4, 1, 64, 64, dtype=torch.bool)
    mask[:, :, 16:48, 10:28] = True
    mask[:, :, 16:48, 36:54] = True
    image = (mask.to(torch.uint8) * 200 + 30).to(torch.uint8)
    x1, y1 = augment_batch(image, mask, torch.Generator().manual_seed(3))
    x2, y2 = augment_batch(image, mask, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.min() >= 0 and x1.max() <= 1 and set(y1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(y1[0], mask[0].float()), "geometry should change"
    for xi, yi in zip(x1, y1, strict=True):
        bright = xi > (xi.max() + xi.min()) / 2  # intensity changes are monotone, so the bright part is the mask
        assert dice(bright, yi.bool()) > 0.9


def test_loading_a_split_and_rejecting_a_classifier_manifest(lungseg_data_dir: Path, cxr_data_dir: Path) -> None:
    val = load_lungseg_split(lungseg_data_dir, "val")
    assert val.images.shape == (28, 1, 256, 256) and val.images.dtype == torch.uint8
    assert val.masks.dtype == torch.bool and 0.09 <= val.masks.float().mean() <= 0.62
    with pytest.raises(ManifestError, match="image, mask"):
        read_lungseg_manifest(cxr_data_dir)


def test_classifier_checkpoint_is_not_loaded_as_a_segmenter(tmp_path: Path) -> None:
    spec = get_arch("cnnx")
    path = save_checkpoint(
        tmp_path / "other.pt", spec.build(), base_meta(spec, input_size=224, scenario_classes=CLASSES)
    )
    with pytest.raises(CheckpointError, match="not a lung segmentation checkpoint"):
        load_lung_model(path)
    with pytest.raises(CheckpointError, match="not a lung segmentation checkpoint"):
        LungSegmenter.from_checkpoint(DEFAULT_CHECKPOINT)


def test_training_is_deterministic_for_a_seed(small_lungseg: Path, tmp_path: Path) -> None:
    def run(out: str, seed: int) -> dict[str, torch.Tensor]:
        config = LungTrainConfig(
            data_dir=str(small_lungseg), out_dir=str(tmp_path / out), epochs=1, batch_size=2,
            max_steps_per_epoch=2, seed=seed, threads=1,
        )  # fmt: skip
        train_lungs(config)
        return read_lungseg_checkpoint(tmp_path / out / "last.pt")[1]

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --------------------------------------------------------------------------- CLI


def test_cli_train_lungs_writes_a_loadable_checkpoint(
    small_lungseg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train-lungs", "--data", str(small_lungseg), "--out", str(out), "--epochs", "2"]
    assert cli_main([*argv, "--batch-size", "2", "--max-steps-per-epoch", "2", "--threads", "1"]) == 0
    assert "val Dice" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history["history"]] == [1, 2]
    segmenter = LungSegmenter.from_checkpoint(out / "best.pt")
    assert segmenter.meta.data["train_images"] == 6 and segmenter.meta.data["val_images"] == 2
    assert "--epochs 2" in (segmenter.meta.command or "")
    film = load_grayscale(read_lungseg_manifest(small_lungseg)[0]["image"])
    assert segmenter.predict(film).shape == film.shape
    assert (out / "last.pt").is_file()


def test_cli_train_lungs_rejects_a_folder_without_masks(
    cxr_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["train-lungs", "--data", str(cxr_data_dir), "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x" / "best.pt").exists()


def test_ml_lung_modules_never_import_the_web_service() -> None:
    code = (
        "import sys, ml.lungseg.train, ml.lung_focus, ml.cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'fastapi', 'sqlalchemy'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
