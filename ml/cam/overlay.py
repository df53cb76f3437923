"""Heat-map overlays of a CAM on the X-ray it explains, as PNG.

The raw low-resolution map is what gets stored; overlays are rendered from it on demand at the
film's own size and aspect (the network saw a squashed square copy of the whole film, so the map
stretches back over the whole film).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from ml.cam.base import upsample_normalize

DEFAULT_COLORMAP = "jet"


@lru_cache(maxsize=8)
def colormap_lut(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """256×3 uint8 lookup table of a matplotlib colour map (0 = low evidence, 255 = high)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)


def normalized_map(cam_raw: np.ndarray, height: int, width: int) -> np.ndarray:
    """h×w raw map → height×width float32 map in [0, 1] (bilinear, min-max)."""
    t = torch.from_numpy(np.ascontiguousarray(cam_raw, dtype=np.float32))[None, None]
    return upsample_normalize(t, (height, width))[0, 0].numpy()


def render_overlay(
    gray: np.ndarray,
    cam_raw: np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = DEFAULT_COLORMAP,
    max_side: int | None = 1024,
) -> Image.Image:
    """The film (H×W uint8) with the CAM blended on top, as an RGB image of the film's aspect.

    Opacity grows with the map's value (up to `alpha`), so regions without evidence stay a clean
    X-ray and the strongest evidence is the most coloured.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be within [0, 1]")
    img = Image.fromarray(gray)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    base = np.asarray(img, dtype=np.float32)[..., None].repeat(3, axis=2)
    m = normalized_map(cam_raw, img.height, img.width)
    heat = colormap_lut(colormap)[(m * 255.0).round().astype(np.uint8)].astype(np.float32)
    a = (alpha * m)[..., None]
    out = base * (1.0 - a) + heat * a
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def overlay_png(gray: np.ndarray, cam_raw: np.ndarray, **kwargs: object) -> bytes:
    return png_bytes(render_overlay(gray, cam_raw, **kwargs))  # type: ignore[arg-type]


def colorbar_png(colormap: str = DEFAULT_COLORMAP, width: int = 256, height: int = 12) -> bytes:
    """A horizontal legend strip: left = weakest evidence, right = strongest."""
    lut = colormap_lut(colormap)
    idx = np.linspace(0, 255, width).round().astype(np.uint8)
    strip = np.repeat(lut[idx][None], height, axis=0)
    return png_bytes(Image.fromarray(strip, mode="RGB"))
