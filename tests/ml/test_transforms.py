"""Preprocessing: any image file becomes an 8-bit grayscale film, and a film becomes a normalised 3-channel input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.registry import IMAGENET_MEAN, IMAGENET_STD
from ml.transforms import load_grayscale, resize_square, to_model_input


def test_rgb_becomes_grayscale(tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    gray = load_grayscale(str(tmp_path / "red.png"))
    assert gray.shape == (10, 20) and gray.dtype == np.uint8
    assert (gray == 76).all()  # ITU-R 601 luma of pure red: 0.299 · 255


def test_transparent_pixels_are_composited_on_black(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)
    rgba[:2, :, 3] = 0  # top half fully transparent white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    gray = load_grayscale(str(tmp_path / "a.png"))
    assert (gray[:2] == 0).all() and (gray[2:] == 255).all()


def test_sixteen_bit_films_are_scaled_by_their_own_range(tmp_path: Path) -> None:
    arr = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    gray = load_grayscale(str(tmp_path / "x16.png"))
    np.testing.assert_array_equal(gray, [[0, 64], [128, 255]])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((10, 30), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_grayscale(str(tmp_path / "rotated.jpg")).shape == (30, 10)


def test_model_input_replicates_the_channel_and_normalises() -> None:
    films = [np.full((50, 80), 255, dtype=np.uint8), np.zeros((120, 90), dtype=np.uint8)]
    x = to_model_input(films, 64, IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x[0], ((1.0 - mean) / std).expand(3, 64, 64))
    torch.testing.assert_close(x[1], ((0.0 - mean) / std).expand(3, 64, 64))
    # undo the normalisation: the three channels carry the same grey film
    pixels = x * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])


def test_resize_square_squashes_the_whole_film() -> None:
    film = np.zeros((100, 50), dtype=np.uint8)
    film[:, 25:] = 200  # right half bright
    out = resize_square(film, 32)
    assert out.shape == (32, 32)
    assert out[:, :14].max() == 0 and out[:, 18:].min() == 200  # no crop: both halves survive
    assert resize_square(out, 32) is out
