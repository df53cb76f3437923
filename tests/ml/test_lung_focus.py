"""Lung focus: share of a CAM's positive mass inside the lung mask, against hand-built maps and masks, and the
one rule that flags it at a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from ml import CLASSES
from ml.lung_focus import (
    NO_LUNG,
    NO_POSITIVE_MASS,
    LungFocus,
    LungFocusScore,
    is_flagged,
    lung_coverage,
    lung_focus,
    lung_focus_by_class,
)


def two_lungs(height: int = 280, width: int = 210) -> np.ndarray:
    """A film-sized mask with two rectangular 'lungs' (not aligned to any CAM grid)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[int(0.2 * height) : int(0.8 * height), int(0.12 * width) : int(0.44 * width)] = True
    mask[int(0.2 * height) : int(0.8 * height), int(0.56 * width) : int(0.88 * width)] = True
    return mask


def test_map_inside_the_lungs_scores_one_and_outside_scores_zero() -> None:
    mask = two_lungs()
    coverage = lung_coverage(mask, 7, 7)
    inside = np.where(coverage > 0.999, 3.0, 0.0).astype(np.float32)
    outside = np.where(coverage < 1e-6, 3.0, 0.0).astype(np.float32)
    assert inside.any() and outside.any()

    hit = lung_focus(inside, mask)
    miss = lung_focus(outside, mask)
    assert hit.score == pytest.approx(1.0)
    assert not hit.at(0.5).flagged and hit.reason is None
    assert miss.score == pytest.approx(0.0)
    assert miss.at(0.5).flagged and miss.reason is None


def test_uniform_map_scores_the_lung_area_which_is_the_mask_fraction() -> None:
    mask = two_lungs(301, 233)
    result = lung_focus(np.ones((7, 7), dtype=np.float32), mask)
    assert result.lung_area == pytest.approx(mask.mean())
    assert result.score == pytest.approx(mask.mean(), abs=1e-5)


def test_negative_evidence_is_ignored_and_partial_cells_count_partially() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[:, :10] = True  # the left quarter: half of CAM column 0 (cells are 20 px wide)
    cam = np.array([[1.0, -5.0], [1.0, -5.0]], dtype=np.float32)
    result = lung_focus(cam, mask)
    assert result.score == pytest.approx(0.5)  # mass only in column 0, half of which is lung
    assert result.lung_area == pytest.approx(0.25)
    assert result.at(0.5).flagged is False  # 0.5 is not below 0.5
    assert result.at(0.6).flagged is True


def test_coverage_is_exact_area_average_for_grids_that_do_not_divide_the_film() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((103, 77)) < 0.4
    coverage = lung_coverage(mask, 7, 7)
    assert coverage.shape == (7, 7)
    assert coverage.min() >= 0.0 and coverage.max() <= 1.0
    assert coverage.mean() == pytest.approx(mask.mean(), rel=1e-5)
    # a grid that divides evenly: each cell is the plain block mean
    even = rng.random((70, 49)) < 0.5
    blocks = even.reshape(7, 10, 7, 7).mean(axis=(1, 3))
    np.testing.assert_allclose(lung_coverage(even, 7, 7), blocks, atol=1e-6)


def test_map_without_positive_mass_is_flagged_with_no_score() -> None:
    result = lung_focus(-np.ones((7, 7), dtype=np.float32), two_lungs())
    assert result.score is None and result.meaningful is None
    assert result.at(0.0).flagged and result.reason == NO_POSITIVE_MASS  # flagged at any threshold
    assert result.lung_area == pytest.approx(two_lungs().mean())


def test_empty_lung_mask_is_flagged_as_a_segmentation_failure() -> None:
    result = lung_focus(np.ones((7, 7), dtype=np.float32), np.zeros((50, 60), dtype=bool))
    assert result.score == 0.0 and result.lung_area == 0.0 and result.meaningful is None
    assert result.at(0.0).flagged and result.reason == NO_LUNG  # a score of 0 that is no score: flagged at 0


def test_by_class_matches_single_calls_in_classes_order() -> None:
    mask = two_lungs()
    coverage = lung_coverage(mask, 7, 7)
    cams = np.stack(
        [
            np.where(coverage > 0.999, 1.0, 0.0),  # normal: inside
            np.where(coverage < 1e-6, 1.0, 0.0),  # bacterial: outside
            np.ones((7, 7)),  # viral: everywhere
            -np.ones((7, 7)),  # covid19: nothing positive
        ]
    ).astype(np.float32)
    results = lung_focus_by_class(cams, mask)
    assert list(results) == list(CLASSES)
    for k, cls in enumerate(CLASSES):
        assert results[cls] == lung_focus(cams[k], mask)
    at = {cls: f.at(0.4) for cls, f in results.items()}
    assert at["normal"].score == pytest.approx(1.0) and not at["normal"].flagged
    assert at["bacterial"].score == pytest.approx(0.0) and at["bacterial"].flagged
    assert at["viral"].score == pytest.approx(mask.mean(), abs=1e-5)
    assert at["covid19"].score is None and at["covid19"].flagged
    assert isinstance(results["viral"], LungFocusScore) and isinstance(at["viral"], LungFocus)
    assert at["viral"].threshold == 0.4 and at["viral"].lung_area == results["viral"].lung_area


@pytest.mark.parametrize(
    ("cam", "mask", "message"),
    [
        (np.ones((2, 7, 7)), np.ones((10, 10), bool), "2-D"),
        (np.ones((0, 7)), np.ones((10, 10), bool), "2-D"),
        (np.ones((7, 7)), np.ones((10, 10, 3), bool), "lung mask"),
        (np.full((7, 7), np.nan), np.ones((10, 10), bool), "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(cam: np.ndarray, mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lung_focus(cam, mask)


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan")])
def test_a_threshold_outside_0_to_1_is_a_clear_error(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        is_flagged(0.5, threshold)
    with pytest.raises(ValueError, match="threshold"):
        LungFocusScore(0.5, 0.3).at(threshold)


def test_is_flagged_is_the_one_rule() -> None:
    """Below the threshold, or no meaningful score at all: flagged; at or above it: not."""
    assert is_flagged(0.49, 0.5) and not is_flagged(0.5, 0.5) and not is_flagged(0.9, 0.5)
    assert is_flagged(None, 0.0) and is_flagged(None, 1.0)
    assert not is_flagged(0.0, 0.0) and is_flagged(0.99, 1.0)
    for score in (
        LungFocusScore(0.7, 0.3),
        LungFocusScore(None, 0.3, NO_POSITIVE_MASS),
        LungFocusScore(0.0, 0.0, NO_LUNG),
    ):
        assert score.at(0.6).flagged == is_flagged(score.meaningful, 0.6)
        assert LungFocusScore.from_dict(score.to_dict()) == score


def test_by_class_needs_one_map_per_class() -> None:
    with pytest.raises(ValueError, match="one map per class"):
        lung_focus_by_class(np.ones((3, 7, 7)), np.ones((10, 10), bool))
