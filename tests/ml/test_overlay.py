"""CAM overlays as a radiologist sees them: the film at its own size and aspect, coloured where the map is high."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ml.cam.overlay import colorbar_png, colormap_lut, normalized_map, overlay_png, render_overlay
from ml.inference import Predictor


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def corner_map() -> np.ndarray:
    """A 7×7 raw map, high in the top-left corner, lowest in the bottom-right."""
    yy, xx = np.mgrid[0:7, 0:7]
    return (12.0 - yy - xx).astype(np.float32) * 3.0 - 5.0  # logit units: any offset, any scale


def colourfulness(rgb: np.ndarray) -> np.ndarray:
    """Per pixel max − min over RGB: 0 for a pure grey pixel."""
    rgb = rgb.astype(np.int16)
    return rgb.max(axis=2) - rgb.min(axis=2)


def test_overlay_png_has_the_films_size(synthetic_xray: np.ndarray) -> None:
    img = decode(overlay_png(synthetic_xray, corner_map(), alpha=0.5))
    assert img.mode == "RGB"
    assert img.size == (synthetic_xray.shape[1], synthetic_xray.shape[0])  # PIL: (width, height)


def test_large_film_is_downscaled_to_max_side_keeping_aspect(synthetic_xray: np.ndarray) -> None:
    img = render_overlay(synthetic_xray, corner_map(), max_side=100)  # film is 300 high × 240 wide
    assert img.size == (80, 100)
    full = render_overlay(synthetic_xray, corner_map(), max_side=None)
    assert full.size == (240, 300)


def test_alpha_zero_returns_the_film_unchanged(synthetic_xray: np.ndarray) -> None:
    img = np.asarray(decode(overlay_png(synthetic_xray, corner_map(), alpha=0.0)))
    for channel in range(3):
        np.testing.assert_array_equal(img[..., channel], synthetic_xray)


def test_high_cam_region_is_more_coloured_than_low(synthetic_xray: np.ndarray) -> None:
    rgb = np.asarray(render_overlay(synthetic_xray, corner_map(), alpha=0.6))
    colour = colourfulness(rgb)
    h, w = colour.shape
    high = colour[: h // 5, : w // 5].mean()
    low = colour[-h // 5 :, -w // 5 :].mean()
    assert high > 60 > low
    assert colour[-1, -1] == 0, "zero evidence leaves the film grey"
    # the colour at the strongest point is the colour map's top colour, blended at alpha
    top = colormap_lut()[255].astype(np.float32)
    expected = synthetic_xray[0, 0] * 0.4 + top * 0.6
    np.testing.assert_allclose(rgb[0, 0], expected, atol=1.5)


def test_alpha_outside_unit_range_is_refused(synthetic_xray: np.ndarray) -> None:
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            render_overlay(synthetic_xray, corner_map(), alpha=alpha)


def test_normalized_map_stretches_over_the_film() -> None:
    m = normalized_map(corner_map(), 30, 20)
    assert m.shape == (30, 20) and m.dtype == np.float32
    assert m.min() == 0.0 and m.max() == pytest.approx(1.0, abs=1e-6)
    assert m[0, 0] > 0.99 and m[-1, -1] == 0.0


def test_colorbar_runs_from_weakest_to_strongest_colour() -> None:
    img = decode(colorbar_png(width=256, height=12))
    assert img.size == (256, 12) and img.mode == "RGB"
    strip = np.asarray(img)
    lut = colormap_lut()
    np.testing.assert_array_equal(strip[6, 0], lut[0])
    np.testing.assert_array_equal(strip[6, -1], lut[255])
    assert not np.array_equal(lut[0], lut[255])
    assert (strip == strip[:1]).all(), "every row of the legend is the same"


def test_overlay_of_the_bundled_models_cam_on_a_real_film(real_films: list[np.ndarray]) -> None:
    film = real_films[0]
    assert max(film.shape) > 400, "real films are large; the overlay must cap them"
    pred = Predictor.from_checkpoint().predict_one(film)
    img = decode(overlay_png(film, pred.cam_raw[0], alpha=0.5, max_side=400))
    h, w = film.shape
    scale = 400 / max(h, w)
    assert max(img.size) == 400
    assert img.size == (max(1, round(w * scale)), max(1, round(h * scale)))
