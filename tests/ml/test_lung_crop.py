"""Lung-crop input mode: the lung box, the crop the network sees, lung focus and overlays in the crop's
frame, and a real (short) lung-crop training run whose checkpoint the Predictor and `evaluate` use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml import CLASSES
from ml.cam.overlay import OUTLINE_RGBA, render_outline, render_overlay
from ml.checkpoints import DEFAULT_CHECKPOINT, read_meta
from ml.data import SCENARIOS, load_images, read_manifest, select
from ml.evaluate import evaluate_checkpoint
from ml.inference import Predictor
from ml.lung_crop import MIN_LUNG_FRACTION, Box, crop, lung_box
from ml.lung_focus import lung_focus, lung_focus_by_class
from ml.lungseg import LungSegmenter
from ml.train import TrainConfig, train
from ml.transforms import to_model_input


def two_lungs(h: int = 100, w: int = 80) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[20:70, 10:35] = True
    mask[25:80, 45:70] = True
    return mask


# --------------------------------------------------------------------------- the box


def test_box_is_the_lungs_extent_widened_by_the_margin() -> None:
    box = lung_box(two_lungs(), margin=0.1)
    assert box is not None
    # lungs span rows 20..80 (of 100) and columns 10..70 (of 80); 10 % of 60 rows / 60 columns each side
    assert box.as_tuple() == pytest.approx((0.20 - 0.06, (10 - 6) / 80, 0.80 + 0.06, (70 + 6) / 80))
    assert lung_box(two_lungs(), margin=0.0).as_tuple() == pytest.approx((0.2, 10 / 80, 0.8, 70 / 80))


def test_box_is_clipped_to_the_film_and_missing_lungs_mean_the_whole_film() -> None:
    full = np.ones((50, 40), dtype=bool)
    assert lung_box(full, margin=0.5) == Box(0.0, 0.0, 1.0, 1.0)
    almost_empty = np.zeros((100, 100), dtype=bool)
    almost_empty[0, : int(MIN_LUNG_FRACTION * 100 * 100) - 1] = True
    assert lung_box(almost_empty) is None
    assert lung_box(np.zeros((10, 10), dtype=bool)) is None


@pytest.mark.parametrize(
    ("mask", "margin", "message"),
    [
        (np.ones((3, 3, 3), bool), 0.1, "2-D"),
        (np.ones((4, 4), bool), 1.5, "margin"),
        (np.ones((4, 4), bool), -1, "margin"),
    ],
)
def test_bad_box_input_is_a_clear_error(mask: np.ndarray, margin: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lung_box(mask, margin)


def test_invalid_boxes_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid box"):
        Box(0.5, 0.0, 0.4, 1.0)
    with pytest.raises(ValueError, match="invalid box"):
        Box(0.0, 0.0, 1.0, 1.2)


def test_crop_covers_the_box_at_any_resolution() -> None:
    box = Box(0.25, 0.1, 0.75, 0.9)
    film = np.arange(200 * 100).reshape(200, 100)
    assert crop(film, box).shape == (100, 80)
    assert crop(film, box)[0, 0] == film[50, 10]
    assert crop(film, None) is film
    # a tiny box still keeps at least one pixel
    assert crop(np.zeros((4, 4)), Box(0.5, 0.5, 0.51, 0.51)).shape == (1, 1)


# --------------------------------------------------------------------------- lung focus and overlays in the crop


def test_lung_focus_in_the_crops_frame() -> None:
    """A map that spans the box: evidence on the box's lung cells scores ≈1, on its non-lung cells ≈0, and the
    chance level is the lung share of the crop, not of the film."""
    mask = two_lungs(100, 80)
    box = Box(0.2, 0.125, 0.8, 0.4375)  # exactly the left lung: rows 20..80, columns 10..35
    cropped = crop(mask, box)
    on_lung = np.zeros((12, 10))
    on_lung[1:9, 1:9] = 1.0  # rows 5..45 of the crop's 60 → the left lung (rows 20..70 of the film)
    assert lung_focus(on_lung, mask, box=box).score == pytest.approx(1.0)
    off_lung = np.zeros((12, 10))
    off_lung[11, :] = 1.0  # the crop's last rows (film rows 75..80), below the left lung
    assert lung_focus(off_lung, mask, box=box).score == pytest.approx(0.0)
    uniform = lung_focus(np.ones((12, 10)), mask, box=box)
    assert uniform.lung_area == pytest.approx(cropped.mean()) and uniform.score == pytest.approx(cropped.mean())
    by_class = lung_focus_by_class(np.stack([on_lung, off_lung, on_lung, off_lung]), mask, box=box)
    assert [by_class[c].at(0.5).flagged for c in CLASSES] == [False, True, False, True]


def test_overlay_colours_only_the_crop_and_the_outline_matches_the_overlay(synthetic_xray: np.ndarray) -> None:
    box = Box(0.25, 0.25, 0.75, 0.75)
    cam = np.ones((7, 7), dtype=np.float32)
    cam[3, 3] = 5.0
    overlay = np.asarray(render_overlay(synthetic_xray, cam, box=box))
    y0, x0, y1, x1 = box.pixels(*synthetic_xray.shape)
    outside = np.ones(synthetic_xray.shape, dtype=bool)
    outside[y0:y1, x0:x1] = False
    grey = np.repeat(synthetic_xray[..., None], 3, axis=2)
    assert np.abs(overlay[outside].astype(int) - grey[outside]).max() <= 1  # untouched film outside the crop
    assert np.abs(overlay[y0:y1, x0:x1].astype(int) - grey[y0:y1, x0:x1]).max() > 50  # heat inside

    mask = synthetic_xray > 120  # the two bright 'lungs'
    layer = np.asarray(render_outline(mask, *synthetic_xray.shape, box=box))
    assert layer.shape == (*overlay.shape[:2], 4)
    cyan = np.all(layer == OUTLINE_RGBA, axis=2)
    assert cyan.any() and not layer[~cyan & ~(layer[..., 3] > 0)].any()
    # the outline runs along the lungs' edge: lung pixels deep inside are not on it
    assert not cyan[150, int(0.32 * 240)]


def test_outline_follows_the_overlay_size_for_large_films() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 8:56] = True
    layer = render_outline(mask, 3000, 2000, max_side=1024)
    assert layer.size == (683, 1024)
    assert render_overlay(np.zeros((3000, 2000), np.uint8), np.ones((7, 7)), max_side=1024).size == layer.size


# --------------------------------------------------------------------------- a lung-crop model, end to end


@pytest.fixture(scope="module")
def lung_crop_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = TrainConfig(
        arch="resnet18",
        data_dirs=[str(small_dataset)],
        out_dir=str(tmp_path_factory.mktemp("lung-crop")),
        epochs=1,
        batch_size=8,
        input_size=64,
        augment=False,
        input_mode="lung-crop",
        crop_margin=0.05,
    )
    return train(cfg)


def test_lung_crop_data_are_crops_with_masks_in_their_frame(small_dataset: Path) -> None:
    seg = LungSegmenter.from_checkpoint()
    records = select(read_manifest(small_dataset), SCENARIOS["s2"], "test")
    full = load_images(records, 64, segmenter=seg)
    cropped = load_images(records, 64, segmenter=seg, input_mode="lung-crop")
    assert full.boxes == [None] * len(records) and all(b is not None for b in cropped.boxes or [])
    assert full.lung_masks is not None and cropped.lung_masks is not None
    # cutting away what lies around the lungs raises every film's lung share
    per_film_crop, per_film_full = cropped.lung_masks.mean(axis=(1, 2)), full.lung_masks.mean(axis=(1, 2))
    assert np.all(per_film_crop >= per_film_full - 0.01) and per_film_crop.mean() > per_film_full.mean() + 0.02
    assert not np.array_equal(full.images, cropped.images)
    again = load_images(records, 64, segmenter=seg, input_mode="lung-crop")  # from the cache
    assert np.array_equal(again.images, cropped.images) and np.array_equal(again.lung_masks, cropped.lung_masks)
    assert again.boxes == cropped.boxes
    with pytest.raises(ValueError, match="needs a lung segmenter"):
        load_images(records, 64, input_mode="lung-crop")


def test_lung_crop_checkpoint_records_the_mode_and_segmenter(lung_crop_run: dict[str, Any]) -> None:
    meta = read_meta(lung_crop_run["best_checkpoint"])
    assert meta.input_mode == "lung-crop" and meta.crop_margin == 0.05
    assert meta.lungseg_sha256 == LungSegmenter.from_checkpoint().checkpoint_sha256
    assert meta.hparams["input_mode"] == "lung-crop"


def test_predictor_feeds_the_lung_crop_to_the_network(
    lung_crop_run: dict[str, Any], real_films: list[np.ndarray]
) -> None:
    predictor = Predictor.from_checkpoint(lung_crop_run["best_checkpoint"])  # gets the bundled segmenter itself
    assert predictor.needs_lung_mask and predictor.segmenter is not None
    for film in real_films:
        mask = predictor.segmenter.predict_small(film)
        box = lung_box(mask, 0.05)
        out = predictor.predict_one(film)
        assert out.input_box == box and box is not None
        x = to_model_input([crop(film, box)], 64, predictor.mean, predictor.std)
        with torch.no_grad():
            expected = predictor.model(x)[0]
        assert torch.allclose(torch.tensor(out.logits), expected, atol=1e-4)
        # a caller's own mask is used as given
        assert predictor.predict_one(film, mask).logits == pytest.approx(out.logits, abs=1e-5)


def test_lung_crop_predictor_without_segmenter_or_masks_is_a_clear_error(
    lung_crop_run: dict[str, Any], real_films: list[np.ndarray]
) -> None:
    predictor = Predictor.from_checkpoint(lung_crop_run["best_checkpoint"])
    predictor.segmenter = None
    with pytest.raises(ValueError, match="lung-cropped films"):
        predictor.predict_one(real_films[0])
    with pytest.raises(ValueError, match="2 lung masks for 1 films"):
        predictor.predict([real_films[0]], [np.ones((8, 8), bool)] * 2)


def test_full_film_models_ignore_lung_masks(real_films: list[np.ndarray]) -> None:
    predictor = Predictor.from_checkpoint()
    film = real_films[0]
    assert predictor.predict_one(film, np.zeros((8, 8), bool)).logits == pytest.approx(
        predictor.predict_one(film).logits, abs=1e-5
    )
    assert predictor.predict_one(film).input_box is None


def test_evaluate_a_lung_crop_model(lung_crop_run: dict[str, Any], small_dataset: Path) -> None:
    report = evaluate_checkpoint(lung_crop_run["best_checkpoint"], small_dataset, split="test", lung_threshold=0.5)
    assert report["checkpoint"]["input_mode"] == report["input_mode"] == "lung-crop"
    assert report["lung_focus"]["overall"]["n"] == report["n"]
    # the chance level of a map that spans the crop is the crop's lung share: well above the film's
    full = evaluate_checkpoint(DEFAULT_CHECKPOINT, small_dataset, split="test", lung_threshold=0.5)
    crop_area = report["lung_focus"]["overall"]["median_lung_area"]
    assert crop_area > full["lung_focus"]["overall"]["median_lung_area"] + 0.02
    with pytest.raises(ValueError, match="cannot be evaluated without the segmenter"):
        evaluate_checkpoint(
            lung_crop_run["best_checkpoint"], small_dataset, split="test", with_lung_focus=False, lung_threshold=0.5
        )
