"""What the case page's viewer draws besides the stored film: a heat map's raw values (the page colours,
fades and traces them itself), a DICOM film's modality values and the worklist's small film thumbnails.

All are rendered once and kept on disk (disposable: re-rendered when missing). The film itself is the
stored decoded grayscale PNG at full resolution (`predictions.film_png`): for DICOM uploads that is
the film after its modality LUT and VOI (window or VOI LUT, `ml.imageio`). For a DICOM film the viewer
windows its modality values instead (`film_values`, from the kept original bytes), starting at the file's
own window, so narrowing the window shows what the 8-bit rendering clipped.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Image
from app.services.errors import InvalidInputError, NotFoundError
from app.services.predictions import API_PREFIX, get_result
from app.services.storage import FileStore, is_sha256, write_atomic
from ml import CLASSES
from ml.cam.overlay import heat_values_png
from ml.imageio import ImageDecodeError, UnsupportedImageError, decode_dicom_values
from ml.lung_crop import Box

HEAT_MAP_MAX_SIDE = 512
"""Longest side of a heat map's values (the raw maps are 7–16 cells a side: bilinear detail ends far below)."""
THUMBNAIL_SIDE = 192
"""Longest side of a worklist thumbnail: sharp at 4 rem on a 3× screen."""
THUMBNAIL_MAX_BYTES = 20_000
THUMBNAIL_QUALITIES = (82, 70, 55, 40, 25)


def heat_map_url(prediction_id: int, model_id: int, cls: str) -> str:
    """Authenticated URL of one class's heat-map values (8-bit grayscale PNG, the film's aspect)."""
    return f"{API_PREFIX}/predictions/{prediction_id}/heat-maps/{model_id}/{cls}.png"


def thumbnail_url(image_sha256: str) -> str:
    """Authenticated URL of a film's worklist thumbnail (JPEG, ≤ 20 KB)."""
    return f"{API_PREFIX}/images/{image_sha256}/thumbnail.jpg"


def film_values_url(image_sha256: str) -> str:
    """Authenticated URL of a DICOM film's modality-values description (JSON, `schemas.FilmValuesOut`)."""
    return f"{API_PREFIX}/images/{image_sha256}/values.json"


def film_values_data_url(image_sha256: str) -> str:
    """Authenticated URL of a DICOM film's modality values themselves (little-endian uint16, no header)."""
    return f"{API_PREFIX}/images/{image_sha256}/values.u16"


VALUES_SUFFIXES = ("-v2.json", "-v2.u16.gz")
"""The cached description and data (gzip: a film's values are 2 bytes a pixel, 15 MB for a 3000×2500
film, and compress to about a third); the version changes with their layout."""
VALUES_GZIP_LEVEL = 6


def film_values(*, session: Session, store: FileStore, image_sha256: str) -> dict[str, Any]:
    """The description of a DICOM film's modality values (`schemas.FilmValuesOut`); derived from the kept
    original bytes with the upload's decoder on first read, then read from the disk cache. NotFoundError
    for an unknown film and for a PNG/JPEG (or colour DICOM) one: it has only its 8-bit grey values."""
    json_path, _ = _values_paths(session=session, store=store, image_sha256=image_sha256)
    description: dict[str, Any] = json.loads(json_path.read_bytes())
    return description


def film_values_data(*, session: Session, store: FileStore, image_sha256: str, gzipped: bool = False) -> bytes:
    """The modality values of a DICOM film: width×height little-endian uint16, row by row (`film_values`);
    `gzipped`: as the gzip stream that is kept (for a client that accepts gzip), else decompressed."""
    _, data_path = _values_paths(session=session, store=store, image_sha256=image_sha256)
    data = data_path.read_bytes()
    return data if gzipped else gzip.decompress(data)


def _values_paths(*, session: Session, store: FileStore, image_sha256: str) -> tuple[Path, Path]:
    image = session.scalar(select(Image).where(Image.sha256 == image_sha256)) if is_sha256(image_sha256) else None
    if image is None:
        raise NotFoundError("image not found")
    if image.format != "dicom":
        raise NotFoundError(
            f"a {image.format.upper()} film has only its 8-bit grey values: modality values exist for DICOM uploads"
        )
    json_path, data_path = (store.values_path(image_sha256, suffix) for suffix in VALUES_SUFFIXES)
    if json_path.is_file() and data_path.is_file():
        return json_path, data_path
    try:
        original = store.original_path(image_sha256).read_bytes()
    except FileNotFoundError:
        raise NotFoundError("image file missing from the data directory") from None
    try:
        mv = decode_dicom_values(original, max_pixels=1 << 62)  # its limits were checked on upload
    except UnsupportedImageError as exc:
        raise NotFoundError(str(exc)) from None
    except ImageDecodeError as exc:
        raise NotFoundError(f"the film's modality values cannot be read: {exc}") from None
    description = {
        "width": int(mv.values.shape[1]),
        "height": int(mv.values.shape[0]),
        "dtype": "uint16",
        "byte_order": "little",
        "data_url": film_values_data_url(image_sha256),
        "offset": mv.offset,
        "scale": mv.scale,
        "exact": mv.exact,
        "minimum": mv.minimum,
        "maximum": mv.maximum,
        "inverted": mv.inverted,
        "rescale_slope": mv.rescale_slope,
        "rescale_intercept": mv.rescale_intercept,
        "windows": mv.windows,
        "voi": mv.voi,
    }
    raw = mv.values.astype("<u2", copy=False).tobytes()
    write_atomic(data_path, gzip.compress(raw, compresslevel=VALUES_GZIP_LEVEL, mtime=0))
    write_atomic(
        json_path, json.dumps(description).encode("utf-8")
    )  # the data first: both are read once both are there
    return json_path, data_path


def heat_map_png(*, session: Session, store: FileStore, prediction_id: int, model_id: int, cls: str) -> bytes:
    """`cls`'s CAM of one result as 8-bit grayscale values over the film (longest side ≤ 512 px, the
    film's aspect; 0 = no evidence, 255 = the map's maximum; a lung-crop model's map only inside its
    box), i.e. exactly where and how strongly the server's overlay colours the film."""
    if cls not in CLASSES:
        raise NotFoundError(f"unknown class {cls!r}; expected one of {', '.join(CLASSES)}")
    result = get_result(session=session, prediction_id=prediction_id, model_id=model_id)
    image = result.prediction.image
    box = Box.from_dict(result.input_box) if result.input_box else None  # a lung-crop model's map: its box
    box_key = "none" if box is None else f"{box.top},{box.left},{box.bottom},{box.right}"
    key = f"heat-values:{result.cam_sha256}:{cls}:{image.height}x{image.width}:{box_key}:{HEAT_MAP_MAX_SIDE}"
    cached = store.read_cache(key)
    if cached is not None:
        return cached
    try:
        cam = store.read_cam(result.cam_sha256)
    except FileNotFoundError:
        raise NotFoundError("stored CAM missing from the data directory") from None
    if cam.ndim != 3 or cam.shape[0] != len(CLASSES):
        raise InvalidInputError(f"stored CAM has unexpected shape {cam.shape}")
    png = heat_values_png(cam[CLASSES.index(cls)], image.height, image.width, max_side=HEAT_MAP_MAX_SIDE, box=box)
    store.put_cache(key, png)
    return png


def film_thumbnail(*, session: Session, store: FileStore, image_sha256: str) -> bytes:
    """A stored film as a small grayscale JPEG (longest side 192 px, at most 20 KB), rendered once
    and then read from the disk cache."""
    if not is_sha256(image_sha256) or session.scalar(select(Image.id).where(Image.sha256 == image_sha256)) is None:
        raise NotFoundError("image not found")
    path = store.thumbnail_path(image_sha256, THUMBNAIL_SIDE)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    try:
        with PILImage.open(io.BytesIO(store.film_png(image_sha256))) as img:  # derived on first read
            small = img.convert("L")
            small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), PILImage.Resampling.LANCZOS)
    except FileNotFoundError:
        raise NotFoundError("image file missing from the data directory") from None
    data = b""
    for quality in THUMBNAIL_QUALITIES:  # the first quality that fits the budget (a noisy film needs less)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=quality, optimize=True, progressive=True)
        data = buf.getvalue()
        if len(data) <= THUMBNAIL_MAX_BYTES:
            break
    write_atomic(path, data)
    return data
