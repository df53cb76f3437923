"""The lung mask dataset: `lungseg/manifest.csv` (columns `image, mask, split, patient_id, ...`, splits
`train` / `val`), its decoding, and the augmentation the segmenter is trained with.

The films are the 256×256 adult COVID-19 films with V7 Labs lung masks. There are no pediatric masks,
so the behaviour on Kermany films is checked by eye (see the model card).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ml.data import ManifestError
from ml.lungseg.model import INPUT_SIZE
from ml.transforms import load_grayscale, resize_square

LUNGSEG_COLUMNS = ("image", "mask", "split", "patient_id")


def default_lungseg_dir() -> str:
    """`$CXR_LUNGSEG_DIR`, else `../shared/data/lungseg` beside the project root."""
    root = Path(__file__).resolve().parents[2]
    return os.environ.get("CXR_LUNGSEG_DIR") or str(root.parent / "shared" / "data" / "lungseg")


@dataclass
class LungSegData:
    """Images and masks of one split, as B×1×256×256 uint8 / bool tensors, in manifest order."""

    images: torch.Tensor
    masks: torch.Tensor
    names: list[str]


def read_lungseg_manifest(data_dir: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of `data_dir/manifest.csv` with `image` and `mask` resolved to absolute paths.

    Raises `ManifestError` for a missing manifest, missing columns, or a patient in two splits.
    """
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"no manifest.csv in {data_dir}")
    root = path.parent.resolve()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in LUNGSEG_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(
                f"{path}: missing column(s) {', '.join(missing)} (a lung mask manifest needs "
                f"{', '.join(LUNGSEG_COLUMNS)})"
            )
        rows = []
        for row in reader:
            row = {k: (v or "").strip() for k, v in row.items()}
            row["image"] = str(root / row["image"])
            row["mask"] = str(root / row["mask"])
            rows.append(row)
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
    mixed = sorted(p for p, s in splits_of.items() if len(s) > 1)
    if mixed:
        raise ManifestError(f"{path}: patient(s) in more than one split: {', '.join(mixed[:5])}")
    return rows


def load_lungseg_split(data_dir: str | os.PathLike[str], split: str, size: int = INPUT_SIZE) -> LungSegData:
    """Decode one split (images resized to size×size if needed; masks: > 127 is lung, resized nearest)."""
    rows = [r for r in read_lungseg_manifest(data_dir) if r["split"] == split]
    if not rows:
        raise ManifestError(f"no '{split}' rows in {Path(data_dir) / 'manifest.csv'}")
    images, masks = [], []
    for row in rows:
        image = resize_square(load_grayscale(row["image"]), size)
        with Image.open(row["mask"]) as m:
            mask_img = m.convert("L")
            if mask_img.size != (size, size):
                mask_img = mask_img.resize((size, size), Image.Resampling.NEAREST)
            mask = np.asarray(mask_img) > 127
        images.append(image)
        masks.append(mask)
    return LungSegData(
        images=torch.from_numpy(np.stack(images))[:, None],
        masks=torch.from_numpy(np.stack(masks))[:, None],
        names=[Path(r["image"]).name for r in rows],
    )


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    *,
    scale_range: tuple[float, float] = (0.75, 1.15),
    max_shift: float = 0.08,
    padding: str = "border",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometry and intensity for a B×1×S×S uint8 batch and its bool masks → float images in [0, 1],
    float {0, 1} masks.

    Geometry (same warp for image and mask): rotation ±10°, scale `scale_range` (< 1 zooms out) with ±8%
    aspect change (the films were squashed to a square, so aspect varies between sources), shear ±0.06,
    shift ±`max_shift`; the image is filled beyond its edges by `padding` ("border" replicates the edge,
    "zeros" shows black as around a collimated film); the mask is filled with "not lung" where the
    image is padded with zeros, and replicated with it otherwise.
    Intensity: contrast ×0.7–1.3 and brightness ±0.1 (clipped, so over-exposure is simulated even though
    inputs are standardised afterwards), gamma 0.6–1.7, Gaussian noise σ ≤ 0.03.
    No flips: the heart's side is anatomy.
    """
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(*scale_range)
    aspect = uniform(-0.08, 0.08)
    sx, sy = scale * (1 + aspect), scale * (1 - aspect)
    shear = uniform(-0.06, 0.06)
    tx, ty = uniform(-max_shift, max_shift), uniform(-max_shift, max_shift)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps output coordinates to input coordinates: inverse of (rotate · shear · scale)
    a11, a12 = cos / sx, (sin + shear * cos) / sx
    a21, a22 = -sin / sy, (cos - shear * sin) / sy
    theta = torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    y = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode=padding, align_corners=False)
    y = (y > 0.5).float()

    view = (b, 1, 1, 1)
    contrast = uniform(0.7, 1.3).view(view)
    brightness = uniform(-0.1, 0.1).view(view)
    x = ((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    gamma = torch.exp(uniform(math.log(0.6), math.log(1.7))).view(view)
    x = x.clamp_min(1e-6) ** gamma
    sigma = uniform(0, 0.03).view(view)
    x = (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    return x, y
