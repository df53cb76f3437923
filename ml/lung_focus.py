"""Lung focus: how much of a class activation map's positive evidence lies inside the lungs.

The paper's warning (Majeed et al. 2020) is that a network can separate the classes by things outside
the lungs: age, body habitus, markers, text. For one class's raw CAM (h×w, the network's frame) and a
lung mask of the film (H×W bool), the lung-focus score is

    score = Σ relu(cam) · coverage  /  Σ relu(cam)

where `coverage` is the lung mask area-averaged down to the CAM's h×w grid: coverage[i, j] is the
fraction of the film region under CAM cell (i, j) that is lung (exact box averaging, so partial cells
count partially). The CAM and the mask both span the whole film (the classifier resizes the film to
its square input with no crop or padding), so cell (i, j) covers rows [i·H/h, (i+1)·H/h) and columns
[j·W/w, (j+1)·W/w) of the film. Working in the CAM's own frame keeps the score independent of any
upsampling or display normalisation choice.

For a network that saw only part of the film (`lung-crop` input mode, see `ml.lung_crop`), pass the
crop's `box`: the map then spans the box, and the mask is cut to the same box before scoring (what lies
outside the crop cannot carry evidence), and `lung_area` is the share of the crop that is lung (the
chance level of a map that can only spread over the crop).

`lung_area` is the share of the film that is lung (the mean of the mask; equal to the mean of
`coverage`). It is the chance level: a map spread uniformly over the film scores `lung_area`.

Scores are threshold-free (`LungFocusScore`: score, lung_area, reason); whether one is *flagged* is
decided by the one rule `is_flagged(score.meaningful, threshold)`, wherever a threshold is applied (the
evaluation report, the web service when it reads stored scores, its SQL filters). `LungFocus` is the
five-field record a reader sees: a score flagged at a given threshold. A result is flagged when its
score is below the threshold, and also when no meaningful score can be given:
- the map has no positive mass (all ≤ 0): score None, reason "no positive activation";
- the mask has no lung: score 0.0, reason "no lung found in the mask" (a segmentation failure should
  be looked at, not hidden).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml import CLASSES
from ml.lung_crop import Box, crop

DEFAULT_THRESHOLD = 0.5
"""The evaluation command's default (`--lung-threshold`) and the web service's default setting
(CXR_LUNG_FOCUS_THRESHOLD): most positive evidence outside the lungs. Nothing applies it silently."""
NO_POSITIVE_MASS = "no positive activation"
NO_LUNG = "no lung found in the mask"


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


def is_flagged(score: float | None, threshold: float) -> bool:
    """The one rule: a meaningful score (`LungFocusScore.meaningful`; None: there is none) is flagged
    below `threshold`; no meaningful score is flagged at any threshold."""
    return score is None or score < check_threshold(threshold)


@dataclass(frozen=True)
class LungFocusScore:
    """One class's lung focus, threshold-free: what is computed once and stored."""

    score: float | None
    """Share of the map's positive mass inside the lungs, in [0, 1]; None when the map has no positive mass."""
    lung_area: float
    """Share of the film (of the crop, for lung-crop models) that is lung, in [0, 1]: the chance level,
    the score a map spread evenly would get."""
    reason: str | None = None
    """Why there is no meaningful score (`NO_POSITIVE_MASS`, `NO_LUNG`), else None."""

    @property
    def meaningful(self) -> float | None:
        """The score when it means something (no `reason`), else None: what `is_flagged` compares."""
        return self.score if self.reason is None else None

    def at(self, threshold: float) -> LungFocus:
        """This score as a reader sees it at `threshold`."""
        return LungFocus(self.score, self.lung_area, is_flagged(self.meaningful, threshold), threshold, self.reason)

    def to_dict(self) -> dict[str, float | str | None]:
        return {"score": self.score, "lung_area": self.lung_area, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LungFocusScore:
        score = data.get("score")
        return cls(
            None if score is None else float(score), float(data.get("lung_area") or 0.0), data.get("reason") or None
        )


@dataclass(frozen=True)
class LungFocus:
    """One class's lung focus flagged at a threshold: the record the API, pages, export and the
    evaluation show (the API's `LungFocusOut` mirrors these fields)."""

    score: float | None
    """Share of the class's positive CAM evidence inside the lungs, in [0, 1]; None: the map has none."""
    lung_area: float
    """Share of the film (of the crop, for lung-crop models) that is lung: the chance level."""
    flagged: bool
    """`is_flagged` at `threshold`: most evidence outside the lungs, or no meaningful score (`reason`)."""
    threshold: float
    reason: str | None = None
    """Why there is no meaningful score (`NO_POSITIVE_MASS`, `NO_LUNG`), else None."""


def lung_coverage(lung_mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """H×W bool mask → height×width float32: the fraction of each cell's film area that is lung, in [0, 1]."""
    mask = np.asarray(lung_mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"lung mask must be a non-empty 2-D array, got shape {mask.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"CAM size must be positive, got {height}×{width}")
    as_float = mask.astype(np.float32) if mask.dtype == bool else (mask != 0).astype(np.float32)
    if as_float.shape == (height, width):
        return as_float
    coverage = _area_weights(height, as_float.shape[0]) @ as_float @ _area_weights(width, as_float.shape[1]).T
    return np.clip(coverage, 0.0, 1.0).astype(np.float32)


def _area_weights(cells: int, pixels: int) -> np.ndarray:
    """cells×pixels matrix: row i holds the share of cell i's extent covered by each pixel (rows sum to 1)."""
    step = pixels / cells
    starts = np.arange(cells)[:, None] * step
    left = np.arange(pixels)[None, :]
    overlap = np.clip(np.minimum(left + 1, starts + step) - np.maximum(left, starts), 0.0, None)
    return (overlap / step).astype(np.float32)


def _score(cam: np.ndarray, coverage: np.ndarray, lung_area: float) -> LungFocusScore:
    if cam.shape != coverage.shape:
        raise ValueError(f"CAM shape {cam.shape} does not match coverage shape {coverage.shape}")
    if not np.all(np.isfinite(cam)):
        raise ValueError("CAM contains NaN or infinite values")
    positive = np.maximum(cam.astype(np.float64), 0.0)
    mass = float(positive.sum())
    if mass <= 0.0:
        return LungFocusScore(None, lung_area, NO_POSITIVE_MASS)
    if lung_area <= 0.0:
        return LungFocusScore(0.0, lung_area, NO_LUNG)
    return LungFocusScore(float(np.clip((positive * coverage).sum() / mass, 0.0, 1.0)), lung_area)


def lung_focus(cam_raw: np.ndarray, lung_mask: np.ndarray, *, box: Box | None = None) -> LungFocusScore:
    """Lung focus of one raw CAM (h×w, any real values) against the film's lung mask (H×W bool); `box`:
    the film region the map spans (None: the whole film)."""
    cam = np.asarray(cam_raw)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"CAM must be a non-empty 2-D array (h×w), got shape {cam.shape}")
    mask = crop(np.asarray(lung_mask), box)
    coverage = lung_coverage(mask, *cam.shape)
    lung_area = float(mask.astype(bool).mean())
    return _score(cam, coverage, lung_area)


def lung_focus_by_class(
    cam_raw: np.ndarray,
    lung_mask: np.ndarray,
    classes: Sequence[str] = CLASSES,
    *,
    box: Box | None = None,
) -> dict[str, LungFocusScore]:
    """Lung focus of each class's map: K×h×w raw CAMs (in `classes` order, default CLASSES) → {class: score}."""
    cams = np.asarray(cam_raw)
    if cams.ndim != 3 or cams.shape[0] != len(classes) or cams.shape[1] == 0 or cams.shape[2] == 0:
        raise ValueError(f"CAMs must be {len(classes)}×h×w (one map per class), got shape {cams.shape}")
    mask = crop(np.asarray(lung_mask), box)
    coverage = lung_coverage(mask, cams.shape[1], cams.shape[2])
    lung_area = float(mask.astype(bool).mean())
    return {cls: _score(cams[k], coverage, lung_area) for k, cls in enumerate(classes)}
