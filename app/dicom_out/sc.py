"""The predicted class's heat-map overlay as a Secondary Capture a viewer shows as is.

The film with the class activation map blended on top, and below it a legend band with the
disclaimer "AI-generated — not for diagnosis", the class and its probability, the model and CAM
method, and the colour bar (weak → strong evidence). Everything is burned into the pixels
(BurnedInAnnotation YES), so no viewer can show the overlay without them.
"""

from __future__ import annotations

from functools import lru_cache

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from app.dicom_out.content import (
    DISCLAIMER,
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    AiResult,
    SourceFilm,
    copy_general_study,
)
from ml import CLASSES
from ml.cam.overlay import colormap_lut, render_overlay

OVERLAY_MAX_SIDE = 1024
OVERLAY_ALPHA = 0.5
DISCLAIMER_RGB = (255, 210, 0)


@lru_cache(maxsize=8)
def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """DejaVu Sans when installed (it has the dash), else Pillow's bundled font; True: full Unicode."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        return ImageFont.load_default(size=size), False


def _draw_text(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill: tuple[int, int, int]
) -> None:
    font, unicode = _font(size)
    draw.text(xy, text if unicode else text.replace("—", "-"), fill=fill, font=font)


def legend_image(overlay: Image.Image, result: AiResult) -> Image.Image:
    """`overlay` with a legend band below it (same width)."""
    width = overlay.width
    size = max(12, round(width / 40))
    band_height = round(size * 5.2)
    canvas = Image.new("RGB", (width, overlay.height + band_height), (0, 0, 0))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    top = overlay.height
    pad = max(4, size // 2)
    _draw_text(draw, (pad, top + pad), DISCLAIMER, size, DISCLAIMER_RGB)
    p = result.probabilities[result.predicted_class]
    line = (
        f"heat map of {result.predicted_class} (p = {p:.2f}), {result.cam_method}; "
        f"{result.model_name} v{result.model_version}"
    )
    _draw_text(draw, (pad, top + pad + round(size * 1.4)), line, max(9, size - 2), (255, 255, 255))
    bar_top = top + pad + round(size * 2.9)
    bar_left, bar_right = pad + size * 3, width - pad - size * 3
    if bar_right - bar_left >= 16:
        lut = colormap_lut()
        idx = np.linspace(0, 255, bar_right - bar_left).round().astype(np.uint8)
        strip = np.repeat(lut[idx][None], max(4, size // 2), axis=0)
        canvas.paste(Image.fromarray(strip, mode="RGB"), (bar_left, bar_top + size // 4))
        _draw_text(draw, (pad, bar_top), "weak", max(9, size - 3), (255, 255, 255))
        _draw_text(draw, (bar_right + pad // 2, bar_top), "strong", max(9, size - 3), (255, 255, 255))
    return canvas


def build_sc(
    *,
    source: SourceFilm,
    result: AiResult,
    cam_raw: np.ndarray,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """`cam_raw`: the result's K×h×w maps in CLASSES order; the predicted class's map is shown."""
    overlay = render_overlay(
        source.gray,
        cam_raw[CLASSES.index(result.predicted_class)],
        alpha=OVERLAY_ALPHA,
        max_side=OVERLAY_MAX_SIDE,
        box=result.input_box,
    )
    pixels = np.asarray(legend_image(overlay, result), dtype=np.uint8)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source.header,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=tuple(source.header.get("PatientOrientation", ["L", "F"])[:2]) or ("L", "F"),
    )
    if "Laterality" in sc:  # a chest is not a paired body part: Laterality must be absent
        del sc.Laterality
    sc.BodyPartExamined = "CHEST"
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = SERIES_DESCRIPTIONS["sc"]
    sc.DerivationDescription = f"class activation map ({result.cam_method}) of {result.predicted_class}; {DISCLAIMER}"
    sc.ImageComments = DISCLAIMER
    sc.SourceImageSequence = [_reference(source)]
    copy_general_study(sc, source.header)
    return sc


def _reference(source: SourceFilm) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.header.SOPClassUID
    item.ReferencedSOPInstanceUID = source.header.SOPInstanceUID
    return item
