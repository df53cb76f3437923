"""Images that are not frontal chest X-rays, all available offline: scikit-image's bundled sample images
(photographs, a document page, text, a CT-like phantom, microscopy, a retina; only files shipped in the
wheel, nothing downloaded) and synthetic ones (noise, flat, gradient, a document, a rotated and a
lateral-like cut of a real film)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ml.transforms import pil_to_grayscale

SKIMAGE_SAMPLES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_GRAY.png", "clock_motion.png",
    "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg",
    "ihc.png", "logo.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip
"""The sample files of skimage/data that ship inside the wheel."""


def skimage_samples() -> dict[str, np.ndarray]:
    """name → H×W uint8 of every bundled sample (scikit-image is a [dev] extra)."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = {}
    for name in SKIMAGE_SAMPLES:
        with Image.open(folder / name) as img:
            out[f"skimage:{Path(name).stem}"] = pil_to_grayscale(img)
    return out


def document(size: tuple[int, int] = (1100, 850), seed: int = 0) -> np.ndarray:
    """A white page with lines of dark 'text' blocks and a heading: a scanned letter's layout."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (size[1], size[0]), 245)
    draw = ImageDraw.Draw(img)
    draw.rectangle((80, 60, 520, 100), fill=30)
    y = 160
    while y < size[0] - 80:
        x = 80
        while x < size[1] - 120:
            w = int(rng.integers(20, 90))
            draw.rectangle((x, y, x + w, y + 14), fill=int(rng.integers(10, 60)))
            x += w + 12
        y += 28
    return np.asarray(img, dtype=np.uint8)


def synthetic(film: np.ndarray) -> dict[str, np.ndarray]:
    """Synthetic non-chest images; `film` (a real frontal chest film) gives the rotated and cut variants.

    A frontal film turned upside down is not among them: it is still two lungs side by side, and its
    features lie as close to its class's films as the upright film's do (relative distance 0.16 against
    0.12), so no check here tells it apart; the model card lists it among the limits."""
    rng = np.random.default_rng(0)
    w = film.shape[1]
    gradient = np.tile(np.linspace(0, 255, 512, dtype=np.float64), (512, 1)).astype(np.uint8)
    return {
        "synthetic:noise": rng.integers(0, 256, (512, 512)).astype(np.uint8),
        "synthetic:flat-grey": np.full((512, 512), 128, np.uint8),
        "synthetic:black": np.zeros((512, 512), np.uint8),
        "synthetic:white": np.full((512, 512), 255, np.uint8),
        "synthetic:gradient": gradient,
        "synthetic:document": document(),
        "synthetic:film-rotated-90": np.ascontiguousarray(np.rot90(film)),
        "synthetic:film-one-side": np.ascontiguousarray(film[:, : w // 2]),
        "synthetic:film-inverted": (255 - film).astype(np.uint8),
    }
