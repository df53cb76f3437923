"""Input modes: the whole film (the default) or the film cropped to its lungs (`lung-crop`).

The paper's proposed remedy for networks that learn from what lies outside the chest is to show
them only the lungs. In `lung-crop` mode the film is cut to the bounding box of its lung mask,
widened by `margin` (a fraction of the box's height and width on every side, so the lung edges,
costophrenic angles and hila stay in view), and that crop — not the whole film — is resized to the
network's square input. When the mask holds less than `MIN_LUNG_FRACTION` of the film (the
segmenter found no lungs), the whole film is used and the box is None, so a segmentation failure
never hides the film from the classifier.

Boxes are fractions of the film's height and width (`top`, `left`, `bottom`, `right` in [0, 1]),
so one box describes the same region of the film, of its 256×256 lung mask and of any overlay,
whatever their pixel sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INPUT_MODES = ("full", "lung-crop")
DEFAULT_INPUT_MODE = "full"
DEFAULT_MARGIN = 0.1
MIN_LUNG_FRACTION = 0.01


@dataclass(frozen=True)
class Box:
    """A region of the film as fractions of its height (top, bottom) and width (left, right)."""

    top: float
    left: float
    bottom: float
    right: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.top < self.bottom <= 1.0 and 0.0 <= self.left < self.right <= 1.0):
            raise ValueError(f"invalid box {self}: need 0 ≤ top < bottom ≤ 1 and 0 ≤ left < right ≤ 1")

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) in an image of height×width: the smallest pixel range covering the box."""
        y0 = min(math.floor(self.top * height), height - 1)
        x0 = min(math.floor(self.left * width), width - 1)
        y1 = max(math.ceil(self.bottom * height), y0 + 1)
        x1 = max(math.ceil(self.right * width), x0 + 1)
        return y0, x0, min(y1, height), min(x1, width)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.top, self.left, self.bottom, self.right)

    def as_dict(self) -> dict[str, float]:
        return {"top": self.top, "left": self.left, "bottom": self.bottom, "right": self.right}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Box:
        return cls(float(data["top"]), float(data["left"]), float(data["bottom"]), float(data["right"]))


def check_input_mode(mode: str) -> str:
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input mode {mode!r}; known: {', '.join(INPUT_MODES)}")
    return mode


def lung_box(mask: np.ndarray, margin: float = DEFAULT_MARGIN) -> Box | None:
    """H×W lung mask → the lungs' bounding box widened by `margin` on every side, clipped to the film;
    None when the mask holds less than MIN_LUNG_FRACTION of the film (use the whole film)."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"lung mask must be a non-empty 2-D array, got shape {m.shape}")
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {margin}")
    if m.mean() < MIN_LUNG_FRACTION:
        return None
    h, w = m.shape
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    top, bottom = rows[0] / h, (rows[-1] + 1) / h
    left, right = cols[0] / w, (cols[-1] + 1) / w
    dy, dx = margin * (bottom - top), margin * (right - left)
    return Box(
        float(max(0.0, top - dy)), float(max(0.0, left - dx)), float(min(1.0, bottom + dy)), float(min(1.0, right + dx))
    )


def crop(image: np.ndarray, box: Box | None) -> np.ndarray:
    """The part of an H×W (or H×W×C) array inside `box`; the array itself when box is None."""
    if box is None:
        return image
    y0, x0, y1, x1 = box.pixels(image.shape[0], image.shape[1])
    return image[y0:y1, x0:x1]
