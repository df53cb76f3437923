"""The film's lung mask as a binary DICOM Segmentation (one segment: SCT Lung), in the source's study."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image

from app.dicom_out import codes
from app.dicom_out.content import (
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    SOFTWARE_VERSION,
    SourceFilm,
    copy_general_study,
)


def mask_at_film_size(mask: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The stored mask (any size, spanning the whole film) resized to the film's pixels (nearest)."""
    m = np.asarray(mask).astype(np.uint8) * 255
    resized = Image.fromarray(m).resize((columns, rows), Image.Resampling.NEAREST)
    return np.asarray(resized) >= 128


def build_seg(
    *,
    source: SourceFilm,
    lung_mask: np.ndarray,
    lungseg_sha256: str | None,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    rows, columns = int(source.header.Rows), int(source.header.Columns)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cxr-review lung segmenter",
        family=codes.AI_FAMILY,
        version=(lungseg_sha256 or "unknown")[:64],
        source=MANUFACTURER,
        parameters={"checkpoint_sha256": lungseg_sha256 or "unknown"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lungs",
        segmented_property_category=codes.ANATOMICAL_STRUCTURE,
        segmented_property_type=codes.LUNG,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=[source.header],
        pixel_array=mask_at_film_size(lung_mask, rows, columns),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="cxr-review lung segmenter",
        software_versions=SOFTWARE_VERSION,
        device_serial_number=(lungseg_sha256 or "unknown")[:16],
        omit_empty_frames=False,  # an empty mask is a result too (no lung found)
    )
    # General Image: a projection radiograph has no Image Orientation (Patient), so the orientation of
    # its rows and columns is required (type 2C); the mask shares the source's pixel grid.
    seg.PatientOrientation = source.header.get("PatientOrientation", "")
    seg.SeriesDescription = SERIES_DESCRIPTIONS["seg"]
    copy_general_study(seg, source.header)
    return seg
