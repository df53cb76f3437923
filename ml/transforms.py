"""Image preprocessing shared by training, evaluation and inference.

The one rule: a grayscale X-ray becomes a model input by (1) resizing the whole film to the
network's square input size — no crop, no letterbox, so nothing of the film is hidden and no
source-specific padding is added — (2) scaling to [0, 1], (3) replicating the single channel to
three and (4) normalising with the architecture's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # callers that take untrusted files apply their own pixel limit first


def load_grayscale(path: str) -> np.ndarray:
    """Read an image file as 8-bit grayscale (H×W uint8), EXIF orientation applied.

    Raises `OSError` / `ValueError` for files PIL cannot decode.
    """
    with Image.open(path) as img:
        img.load()
        return pil_to_grayscale(ImageOps.exif_transpose(img))


def pil_to_grayscale(img: Image.Image) -> np.ndarray:
    """Any PIL image → H×W uint8. 16-bit images are scaled by their own range, alpha composited on black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return scaled.round().astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """H×W uint8 → size×size uint8 (bilinear with antialiasing)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


def normalize_batch(batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """B×1×S×S uint8 → B×3×S×S float32, channel-replicated and normalised."""
    x = batch_uint8.float().div_(255.0).expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


INTENSITY_MODES = ("raw", "equalize")
"""How grey levels are standardised after resizing: kept as they are, or histogram-equalised
(which removes much of the contrast difference between scanners and processing chains)."""


def apply_intensity(squares: np.ndarray, mode: str) -> np.ndarray:
    """S×S or N×S×S uint8 → the same shape after the intensity standardisation `mode`."""
    if mode == "raw":
        return squares
    if mode != "equalize":
        raise ValueError(f"unknown intensity mode {mode!r}; known: {', '.join(INTENSITY_MODES)}")
    if squares.ndim == 2:
        return np.asarray(ImageOps.equalize(Image.fromarray(squares)))
    return np.stack([np.asarray(ImageOps.equalize(Image.fromarray(s))) for s in squares]) if len(squares) else squares


def to_model_input(
    grays: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float], intensity: str = "raw"
) -> torch.Tensor:
    """A list of H×W uint8 films → the B×3×size×size float batch a registry network expects."""
    stacked = apply_intensity(np.stack([resize_square(g, size) for g in grays]), intensity)[:, None]
    return normalize_batch(torch.from_numpy(np.ascontiguousarray(stacked)), mean, std)


def train_augmentation() -> T.Compose:
    """Light augmentation for 1×S×S uint8 tensors: small affine jitter and contrast/brightness changes.

    No horizontal flip: the heart's side is anatomy, not noise.
    """
    return T.Compose(
        [
            T.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1), shear=4),
            T.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    )
