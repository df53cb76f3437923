"""Upload decoding (ml/imageio.py): sniffing by content, pixel limits before decoding, DICOM display."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from ml.imageio import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageError,
    _linear_window,
    _stretch,
    decode_dicom_values,
    decode_image,
    sniff_format,
)
from tests.support.dicom_films import secondary_capture

LIMIT = 10_000_000


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def dicom(pixels: np.ndarray, **attrs: object) -> bytes:
    bits = 16 if pixels.dtype == np.uint16 else 8
    pixel_module = {"PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": bits, "BitsStored": bits,
                    "HighBit": bits - 1, "PixelRepresentation": 0}  # fmt: skip
    return secondary_capture(pixels, **{**pixel_module, **attrs})


def test_sniffing_ignores_names_and_uses_magic_bytes(synthetic_xray: np.ndarray) -> None:
    img = Image.fromarray(synthetic_xray)
    assert sniff_format(encode(img, "PNG")) == "png"
    assert sniff_format(encode(img, "JPEG")) == "jpeg"
    assert sniff_format(dicom(synthetic_xray)) == "dicom"
    assert sniff_format(encode(img, "BMP")) is None
    with pytest.raises(UnsupportedImageError, match="PNG, JPEG or DICOM"):
        decode_image(encode(img, "GIF"), max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_and_jpeg_decode_to_the_same_grayscale_film(synthetic_xray: np.ndarray, fmt: str) -> None:
    out = decode_image(encode(Image.fromarray(synthetic_xray), fmt, quality=95), max_pixels=LIMIT)
    assert out.gray.dtype == np.uint8 and out.gray.shape == synthetic_xray.shape
    assert (out.width, out.height) == (synthetic_xray.shape[1], synthetic_xray.shape[0])
    if fmt == "PNG":  # lossless
        assert np.array_equal(out.gray, synthetic_xray)
    else:
        assert np.corrcoef(out.gray.ravel(), synthetic_xray.ravel())[0, 1] > 0.98


def test_rgba_png_and_16bit_png_become_8bit_gray(synthetic_xray: np.ndarray) -> None:
    rgba = np.dstack([synthetic_xray] * 3 + [np.full_like(synthetic_xray, 255)])
    assert (
        decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=LIMIT).gray.shape == synthetic_xray.shape
    )
    sixteen = synthetic_xray.astype(np.uint16) * 256
    out = decode_image(encode(Image.fromarray(sixteen), "PNG"), max_pixels=LIMIT)
    assert out.gray.dtype == np.uint8 and out.gray.max() == 255 and out.gray.min() == 0


def test_exif_orientation_is_applied(synthetic_xray: np.ndarray) -> None:
    img = Image.fromarray(synthetic_xray)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif), max_pixels=LIMIT)
    assert out.gray.shape == (synthetic_xray.shape[1], synthetic_xray.shape[0])


def test_pixel_limit_is_checked_from_the_header_before_decoding(synthetic_xray: np.ndarray) -> None:
    h, w = synthetic_xray.shape
    png = encode(Image.fromarray(synthetic_xray), "PNG")
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        decode_image(png, max_pixels=h * w - 1)
    assert decode_image(png, max_pixels=h * w).gray.shape == (h, w)
    # A JPEG whose SOF header claims 60000×60000: refused from the header (decoding would need 3.6 GB).
    jpeg = bytearray(encode(Image.fromarray(synthetic_xray), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(ImageTooLargeError):
        decode_image(bytes(jpeg), max_pixels=LIMIT)
    with pytest.raises(ImageTooLargeError):
        decode_image(dicom(synthetic_xray), max_pixels=h * w - 1)


def test_broken_files_are_invalid_not_crashes(synthetic_xray: np.ndarray) -> None:
    jpeg = encode(Image.fromarray(synthetic_xray), "JPEG")
    for broken in (
        b"",
        jpeg[:100],
        jpeg[: len(jpeg) // 2],
        encode(Image.fromarray(synthetic_xray), "PNG")[:60],
        b"\0" * 128 + b"DICM" + b"garbage" * 10,
    ):
        with pytest.raises(InvalidImageError):
            decode_image(broken, max_pixels=LIMIT)


def test_dicom_window_rescale_and_monochrome1(synthetic_xray: np.ndarray) -> None:
    values = synthetic_xray.astype(np.uint16) * 16  # 12-bit range
    plain = decode_image(dicom(values), max_pixels=LIMIT)
    assert plain.meta["voi"] is None and plain.gray.min() == 0 and plain.gray.max() == 255  # stretched

    # Window on the middle of the range: values below the window are black, above white.
    windowed = decode_image(dicom(values, WindowCenter=2000, WindowWidth=1000), max_pixels=LIMIT)
    low, high = values < 1500, values > 2500
    assert (windowed.gray[low] == 0).all() and (windowed.gray[high] == 255).all()

    # Rescale moves the window's units: slope 2 doubles the values the window sees.
    rescaled = decode_image(
        dicom(values, RescaleSlope=2, RescaleIntercept=0, WindowCenter=4000, WindowWidth=2000), max_pixels=LIMIT
    )
    assert np.array_equal(rescaled.gray, windowed.gray)

    inverted = decode_image(dicom(values, PhotometricInterpretation="MONOCHROME1"), max_pixels=LIMIT)
    assert np.array_equal(inverted.gray, 255 - plain.gray) and inverted.meta["inverted"] is True


def test_dicom_meta_carries_no_patient_data(synthetic_xray: np.ndarray) -> None:
    out = decode_image(dicom(synthetic_xray, PatientName="Doe^Jane", PatientID="12345"), max_pixels=LIMIT)
    assert "Doe" not in repr(out.meta) and "12345" not in repr(out.meta)


def test_dicom_values_are_the_modality_values_before_voi(synthetic_xray: np.ndarray) -> None:
    stored = synthetic_xray.astype(np.uint16) * 16 + 3  # 12-bit, not starting at 0
    data = dicom(stored, RescaleSlope=3, RescaleIntercept=-500, WindowCenter=[6000, 2000], WindowWidth=[8000, 900])
    mv = decode_dicom_values(data, max_pixels=LIMIT)
    assert mv.exact and not mv.inverted and mv.voi == "window" and mv.scale == 3
    assert np.array_equal(mv.offset + mv.scale * mv.values.astype(float), stored * 3.0 - 500)
    assert (mv.minimum, mv.maximum) == (int(stored.min()) * 3 - 500, int(stored.max()) * 3 - 500)
    assert [(w["center"], w["width"]) for w in mv.windows] == [(6000, 8000), (2000, 900)]
    assert np.array_equal(
        _linear_window(mv.offset + mv.scale * mv.values, 6000, 8000), decode_image(data, max_pixels=LIMIT).gray
    )


def test_dicom_values_of_monochrome1_signed_and_unwindowed_films(synthetic_xray: np.ndarray) -> None:
    stored = synthetic_xray.astype(np.uint16) * 16
    mono1 = decode_dicom_values(dicom(stored, PhotometricInterpretation="MONOCHROME1"), max_pixels=LIMIT)
    assert mono1.inverted and mono1.scale == -1 and mono1.voi is None and mono1.windows == []
    assert np.array_equal(mono1.offset + mono1.scale * mono1.values.astype(float), stored)
    assert np.array_equal(mono1.values, stored.max() - stored)  # dense (low stored values) bright
    gray = decode_image(dicom(stored, PhotometricInterpretation="MONOCHROME1"), max_pixels=LIMIT).gray
    assert np.array_equal(gray, 255 - _stretch(stored.astype(float)))
    signed = stored.astype(np.int16) - 2048
    data = dicom(signed.view(np.uint16), PixelRepresentation=1, BitsStored=16)
    mv = decode_dicom_values(data, max_pixels=LIMIT)
    assert mv.minimum == signed.min() and np.array_equal(mv.offset + mv.values.astype(float), signed)


def test_dicom_values_refuse_what_has_only_8_bits(synthetic_xray: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError, match="8-bit"):
        decode_dicom_values(encode(Image.fromarray(synthetic_xray), "PNG"), max_pixels=LIMIT)
    rgb = np.repeat(synthetic_xray[:, :, None], 3, axis=2)
    rgb_attrs = {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0}
    colour = dicom(rgb.reshape(rgb.shape[0], -1), Columns=rgb.shape[1], **rgb_attrs)
    with pytest.raises(UnsupportedImageError, match="colour"):
        decode_dicom_values(colour, max_pixels=LIMIT)
