"""Heat-map overlays of a CAM on the X-ray it explains, as PNG.

The raw low-resolution map is what gets stored; overlays are rendered from it on demand at the
film's own size and aspect (the network saw a squashed square copy of the whole film, so the map
stretches back over the whole film — or over the lung crop's `box`, for lung-crop models).

`outline_png` draws the lung mask's outline on a transparent layer of the overlay's size, so pages
can lay it over any class's overlay and let the reader switch it off.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageFilter

from ml.cam.base import upsample_normalize
from ml.lung_crop import Box

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
    box: Box | None = None,
) -> Image.Image:
    """The film (H×W uint8) with the CAM blended on top, as an RGB image of the film's aspect.

    Opacity grows with the map's value (up to `alpha`), so regions without evidence stay a clean
    X-ray and the strongest evidence is the most coloured. With `box`, the map covers only that
    region of the film (the lung crop the network saw); outside it the film stays uncoloured.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be within [0, 1]")
    img = display_size(Image.fromarray(gray), max_side)
    base = np.asarray(img, dtype=np.float32)[..., None].repeat(3, axis=2)
    m = display_map(cam_raw, img.height, img.width, box=box)
    heat = colormap_lut(colormap)[(m * 255.0).round().astype(np.uint8)].astype(np.float32)
    a = (alpha * m)[..., None]
    out = base * (1.0 - a) + heat * a
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), mode="RGB")


def display_map(cam_raw: np.ndarray, height: int, width: int, *, box: Box | None = None) -> np.ndarray:
    """The raw map as it lies over a height×width picture of the film: float32 in [0, 1] (bilinear,
    min-max). With `box` it covers only that region (a lung-crop model's input); 0 outside it."""
    if box is None:
        return normalized_map(cam_raw, height, width)
    y0, x0, y1, x1 = box.pixels(height, width)
    m = np.zeros((height, width), dtype=np.float32)
    m[y0:y1, x0:x1] = normalized_map(cam_raw, y1 - y0, x1 - x0)
    return m


def heat_values_png(
    cam_raw: np.ndarray, height: int, width: int, *, max_side: int | None = 512, box: Box | None = None
) -> bytes:
    """The map's values for a film of height×width pixels, as an 8-bit grayscale PNG of the film's aspect
    (longest side ≤ `max_side`): 0 = no evidence, 255 = the map's maximum. A viewer colours, fades or
    traces iso-lines of it itself, exactly where `render_overlay` would colour the film."""
    size = display_size(Image.new("L", (width, height)), max_side).size
    m = display_map(cam_raw, size[1], size[0], box=box)
    return png_bytes(Image.fromarray((m * 255.0).round().astype(np.uint8), mode="L"))


def display_size(img: Image.Image, max_side: int | None) -> Image.Image:
    """`img` shrunk (bilinear) so its longest side is at most `max_side`; unchanged when it already is."""
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
        )
    return img


OUTLINE_RGBA = (0, 255, 255, 255)
BOX_RGBA = (255, 255, 255, 150)


def render_outline(
    mask: np.ndarray,
    height: int,
    width: int,
    *,
    max_side: int | None = 1024,
    thickness: int | None = None,
    box: Box | None = None,
) -> Image.Image:
    """A transparent RGBA image of the overlay's size (height×width shrunk like the film) with the lung
    mask's outline in cyan (and, with `box`, the lung crop's edges in translucent white).

    `mask` is the film's lung mask at any resolution (it spans the whole film); it is resized to the
    overlay's size before its boundary (mask pixels with a non-lung 4-neighbour) is traced, then
    thickened to `thickness` pixels (default: ~0.4 % of the longest side, at least 2).
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"lung mask must be a non-empty 2-D array, got shape {m.shape}")
    size = display_size(Image.new("L", (width, height)), max_side).size
    w, h = size
    lung = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) >= 128
    padded = np.pad(lung, 1, mode="constant")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = lung & ~interior
    t = thickness if thickness is not None else max(2, round(max(w, h) * 0.004))
    if t > 1:
        # dilate the 1-px boundary by a (t×t) square: a max filter via PIL
        edge = np.asarray(Image.fromarray(edge.astype(np.uint8) * 255).filter(_max_filter(t))) >= 128
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    if box is not None:
        y0, x0, y1, x1 = box.pixels(h, w)
        frame = np.zeros((h, w), dtype=bool)
        frame[y0:y1, x0:x1] = True
        frame[y0 + t : max(y0 + t, y1 - t), x0 + t : max(x0 + t, x1 - t)] = False
        rgba[frame] = BOX_RGBA
    rgba[edge] = OUTLINE_RGBA
    return Image.fromarray(rgba, mode="RGBA")


def _max_filter(t: int) -> ImageFilter.Filter:
    return ImageFilter.MaxFilter(t if t % 2 else t + 1)


def outline_png(mask: np.ndarray, height: int, width: int, **kwargs: object) -> bytes:
    return png_bytes(render_outline(mask, height, width, **kwargs))  # type: ignore[arg-type]


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
