"""Decoding untrusted uploads (PNG, JPEG, DICOM) into 8-bit grayscale films.

The type is sniffed from magic bytes (never from a filename or a declared content type), the
declared width×height is checked against `max_pixels` BEFORE any pixel is decoded (decompression
bombs), and every failure is one of three exceptions with a message fit to show a user:

- `UnsupportedImageError`: not a PNG, JPEG or DICOM file (HTTP 415 in the service);
- `InvalidImageError`: claims to be one but cannot be decoded (truncated, corrupt, empty; HTTP 422);
- `ImageTooLargeError`: more pixels than allowed (HTTP 413).

DICOM follows the display pipeline of PS3.3 C.11: modality LUT (RescaleSlope/RescaleIntercept) →
VOI (WindowCenter/WindowWidth, or a VOI LUT) → 8 bits, then MONOCHROME1 is inverted so that dense
tissue is bright as in every other film. Without a VOI the stored range is stretched to 0..255.
No patient-identifying DICOM attribute is copied into `meta`.

`decode_dicom_values` gives the viewer what the 8-bit film lost: the modality-LUT values before any
VOI, at full resolution (uint16 plus an offset and scale back to modality units), and the file's windows.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ml.transforms import pil_to_grayscale

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
SUPPORTED_FORMATS = ("png", "jpeg", "dicom")


class ImageDecodeError(ValueError):
    """Base class: the upload cannot become a film. `str(exc)` is a user-facing message."""


class UnsupportedImageError(ImageDecodeError):
    """Not a PNG, JPEG or DICOM file."""


class InvalidImageError(ImageDecodeError):
    """A PNG/JPEG/DICOM file that is empty, truncated or otherwise undecodable."""


class ImageTooLargeError(ImageDecodeError):
    """Declared dimensions exceed the pixel limit."""


@dataclass
class DecodedImage:
    gray: np.ndarray
    """H×W uint8, row 0 at the top, orientation (EXIF) applied, dense tissue bright."""
    format: str
    """'png', 'jpeg' or 'dicom'."""
    width: int
    height: int
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-safe technical details (mode, bit depth, DICOM photometric/rescale/window, decoder warnings)."""


def sniff_format(data: bytes) -> str | None:
    """'png', 'jpeg', 'dicom' or None, from the leading bytes only."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    return None


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Bytes of an uploaded file → `DecodedImage`; raises one of the three errors above."""
    if not data:
        raise InvalidImageError("the file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageError("unsupported file type: upload a PNG, JPEG or DICOM image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fmt == "dicom":
            decoded = _decode_dicom(data, max_pixels=max_pixels)
        else:
            decoded = _decode_raster(data, fmt, max_pixels=max_pixels)
    if caught:
        decoded.meta["decoder_warnings"] = sorted({str(w.message)[:200] for w in caught})
    return decoded


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"the {what} declares an empty image ({width}×{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the {what} is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.1f} megapixels"
        )


def _png_declared_size(data: bytes) -> tuple[int, int]:
    # Signature (8) + IHDR length (4) + b"IHDR" (4) + width (4) + height (4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImageError("the PNG file is truncated or has no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _decode_raster(data: bytes, fmt: str, *, max_pixels: int) -> DecodedImage:
    label = fmt.upper()
    if fmt == "png":
        _check_pixels(*_png_declared_size(data), max_pixels, "PNG file")
    try:
        # Image.open only parses the header; the pixels are decoded by load().
        img = Image.open(io.BytesIO(data), formats=[label])
    except Exception as exc:
        raise InvalidImageError(f"the {label} file cannot be read: {_reason(exc)}") from exc
    with img:
        _check_pixels(img.width, img.height, max_pixels, f"{label} file")
        try:
            img.load()
        except Exception as exc:
            raise InvalidImageError(f"the {label} file is corrupt or truncated: {_reason(exc)}") from exc
        meta: dict[str, Any] = {"mode": img.mode}
        oriented: Image.Image = img
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block must not reject a readable film
            meta["exif_ignored"] = True
        gray = pil_to_grayscale(oriented)
    return DecodedImage(gray=gray, format=fmt, width=gray.shape[1], height=gray.shape[0], meta=meta)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _read_dicom(data: bytes, *, max_pixels: int) -> tuple[Any, np.ndarray]:
    """The dataset and its decoded pixel array; the pixel limit is checked from the header first."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, Exception) as exc:
        raise InvalidImageError(f"the DICOM file cannot be read: {_reason(exc)}") from exc
    rows, cols = header.get("Rows"), header.get("Columns")
    if rows is None or cols is None:
        raise InvalidImageError("the DICOM file has no image (no Rows/Columns)")
    _check_pixels(int(cols), int(rows), max_pixels, "DICOM image")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise InvalidImageError("the DICOM file has no pixel data")
        pixels = np.asarray(ds.pixel_array)
    except InvalidImageError:
        raise
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) if "ds" in locals() else None
        detail = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise InvalidImageError(f"the DICOM pixel data cannot be decoded{detail}: {_reason(exc)}") from exc
    return ds, pixels


def _decode_dicom(data: bytes, *, max_pixels: int) -> DecodedImage:
    ds, pixels = _read_dicom(data, max_pixels=max_pixels)
    try:
        gray, meta = _dicom_to_gray(ds, pixels)
    except InvalidImageError:
        raise
    except Exception as exc:
        raise InvalidImageError(f"the DICOM image cannot be converted for display: {_reason(exc)}") from exc
    return DecodedImage(gray=gray, format="dicom", width=gray.shape[1], height=gray.shape[0], meta=meta)


def _dicom_to_gray(ds: Any, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    meta: dict[str, Any] = {
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "frames": frames,
        "modality": str(ds.get("Modality", "")),
        "transfer_syntax": str(getattr(ds.file_meta, "TransferSyntaxUID", "")),
    }
    if frames > 1:
        pixels = pixels[0]  # a multi-frame object: the first frame is the film
        meta["frame_used"] = 0
    if samples == 3:
        rgb = convert_color_space(pixels, photometric, "RGB") if photometric.startswith("YBR") else pixels
        gray = pil_to_grayscale(Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB"))
        return gray, meta
    if pixels.ndim != 2:
        raise InvalidImageError(f"the DICOM image has an unexpected shape {pixels.shape}")

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    meta["rescale"] = {
        "slope": float(ds.get("RescaleSlope", 1) or 1),
        "intercept": float(ds.get("RescaleIntercept", 0) or 0),
    }
    center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
    voi_function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if "VOILUTSequence" in ds or (center is not None and width and voi_function != "LINEAR"):
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        meta["voi"] = "lut" if "VOILUTSequence" in ds else voi_function.lower()
        gray8 = _stretch(values)
    elif center is not None and width is not None and width >= 1:
        gray8 = _linear_window(values, center, width)
        meta["voi"] = {"center": center, "width": width}
    else:
        gray8 = _stretch(values)
        meta["voi"] = None
    if photometric == "MONOCHROME1":  # low values are bright: invert so dense tissue is bright
        gray8 = 255 - gray8
        meta["inverted"] = True
    return np.ascontiguousarray(gray8, dtype=np.uint8), meta


def _first_value(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):  # multi-valued: first
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window to 0..255."""
    if width <= 1:
        return np.where(values <= center - 0.5, 0, 255).astype(np.uint8)
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InvalidImageError("the DICOM image has no finite pixel values")
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=lo) - lo) / (hi - lo) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


@dataclass
class ModalityValues:
    """A DICOM film's modality-LUT values (before any VOI) at full resolution, for windowing by the viewer.

    `values` is H×W uint16 with dense tissue bright (MONOCHROME1 turned round, as in the 8-bit film);
    the modality value of a pixel is `offset + scale * values` (`scale` < 0 where the film was turned
    round). Exact (`exact`) whenever the values fit 65 536 levels, as every 8–16-bit film does."""

    values: np.ndarray
    offset: float
    scale: float
    exact: bool
    inverted: bool
    """MONOCHROME1: low modality values are bright, so `values` run the other way (and `scale` < 0)."""
    minimum: float
    maximum: float
    """The film's smallest and largest modality values."""
    windows: list[dict[str, Any]]
    """The file's own VOI windows in modality units: {center, width, explanation}, the first is the default."""
    voi: str | None
    """How the 8-bit film was windowed: 'window' (the first of `windows`, LINEAR), 'lut' (a VOI LUT),
    another VOILUTFunction in lower case ('sigmoid', 'linear_exact'), or None (min..max stretched)."""
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    """The file's RescaleSlope/Intercept: stored value = (modality value - intercept) / slope."""


U16_LEVELS = 65535


def decode_dicom_values(data: bytes, *, max_pixels: int) -> ModalityValues:
    """A DICOM file's modality-LUT values (RescaleSlope/Intercept or a Modality LUT applied, no VOI)
    of its first frame, with the file's VOI windows; `UnsupportedImageError` for a colour DICOM or a
    file that is not DICOM (neither has more than its 8 bits), else the errors of `decode_image`."""
    if sniff_format(data) != "dicom":
        raise UnsupportedImageError("not a DICOM file: the film has only its 8-bit grey values")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # decode_image recorded them at upload
        ds, pixels = _read_dicom(data, max_pixels=max_pixels)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]  # the film, as in `_dicom_to_gray`
        if int(ds.get("SamplesPerPixel", 1)) != 1 or pixels.ndim != 2:
            raise UnsupportedImageError("a colour DICOM has only its 8-bit grey values")
        try:
            return _modality_values(ds, pixels)
        except InvalidImageError:
            raise
        except Exception as exc:
            raise InvalidImageError(f"the DICOM modality values cannot be computed: {_reason(exc)}") from exc


def _modality_values(ds: Any, pixels: np.ndarray) -> ModalityValues:
    from pydicom.pixels import apply_modality_lut

    inverted = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1"
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    raw = np.asarray(pixels)
    if "ModalityLUTSequence" not in ds and raw.dtype.kind in "iu" and raw.size:
        # Linear rescale of integers: u = raw - its lowest (or highest - raw) is exact and affine.
        lo, hi = int(raw.min()), int(raw.max())
        if hi - lo <= U16_LEVELS:
            rising = (slope > 0) != inverted  # does brightness grow with the stored value?
            u = (raw.astype(np.int64) - lo) if rising else (hi - raw.astype(np.int64))
            offset = slope * (lo if rising else hi) + intercept
            scale = slope if rising else -slope
            ends = sorted((slope * lo + intercept, slope * hi + intercept))
            return _described(ds, u.astype(np.uint16), offset, scale, True, inverted, ends[0], ends[1])
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InvalidImageError("the DICOM image has no finite pixel values")
    lo_v, hi_v = float(finite.min()), float(finite.max())
    values = np.nan_to_num(values, nan=lo_v, posinf=hi_v, neginf=lo_v)
    bright = -values if inverted else values
    base = -hi_v if inverted else lo_v
    exact = bool(np.all(values == np.round(values))) and hi_v - lo_v <= U16_LEVELS
    step = 1.0 if exact or hi_v == lo_v else (hi_v - lo_v) / U16_LEVELS
    u = np.clip(np.round((bright - base) / step), 0, U16_LEVELS).astype(np.uint16)
    offset, scale = (hi_v, -step) if inverted else (lo_v, step)
    return _described(ds, u, offset, scale, exact, inverted, lo_v, hi_v)


def _described(
    ds: Any, u: np.ndarray, offset: float, scale: float, exact: bool, inverted: bool, lo: float, hi: float
) -> ModalityValues:
    centers, widths = _all_values(ds.get("WindowCenter")), _all_values(ds.get("WindowWidth"))
    explanations = [str(e) for e in _as_list(ds.get("WindowCenterWidthExplanation"))]
    windows = [
        {"center": c, "width": w, "explanation": explanations[i] if i < len(explanations) else None}
        for i, (c, w) in enumerate(zip(centers, widths, strict=False))
        if c is not None and w is not None and w >= 1
    ]
    voi_function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    voi: str | None
    if "VOILUTSequence" in ds:
        voi = "lut"
    elif windows and voi_function != "LINEAR":
        voi = voi_function.lower()
    elif windows and centers[0] is not None and widths[0] is not None and widths[0] >= 1:
        voi = "window"  # what `_dicom_to_gray` used: the first pair
    else:
        voi = None
    return ModalityValues(
        values=np.ascontiguousarray(u, dtype=np.uint16), offset=float(offset), scale=float(scale), exact=exact,
        inverted=inverted, minimum=float(lo), maximum=float(hi), windows=windows, voi=voi,
        rescale_slope=float(ds.get("RescaleSlope", 1) or 1),
        rescale_intercept=float(ds.get("RescaleIntercept", 0) or 0),
    )  # fmt: skip


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def _all_values(value: Any) -> list[float | None]:
    return [_first_value(v) for v in _as_list(value)]
