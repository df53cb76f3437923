"""What the DICOM builders need, as plain data: the source film, one AI result, one review.

`SourceFilm` is the image the results refer to. For a DICOM upload it is the source's own header
(patient, study, frame of reference: the results go into the source's study). For a PNG/JPEG upload
there is no DICOM study to join, so `SourceFilm.from_raster` makes a Secondary Capture of the film
in a new study; that SC is written with the results so every reference resolves.
"""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from ml import CLASSES
from ml.lung_crop import Box

MANUFACTURER = "cxr-review"
SOFTWARE_VERSION = "0.1.0"
DISCLAIMER = "AI-generated — not for diagnosis"
SERIES_NUMBERS = {"sr": 990, "seg": 991, "sc": 992, "film": 989}
SERIES_DESCRIPTIONS = {
    "sr": "cxr-review AI result (research use, not for diagnosis)",
    "seg": "cxr-review lung segmentation (AI)",
    "sc": "cxr-review heat map (AI, not for diagnosis)",
    "film": "cxr-review uploaded film",
}


def new_uid() -> str:
    """A fresh `2.25.<uuid>` UID (PS3.5 B.2: no registered root needed)."""
    return str(generate_uid(prefix=None))


def stable_uid(*parts: str) -> str:
    """The same `2.25.` UID for the same parts (e.g. a device UID for one checkpoint)."""
    return str(generate_uid(prefix=None, entropy_srcs=["cxr-review", *parts]))


@dataclass(frozen=True)
class AiResult:
    """One model's result on one film, with the model's identity (IHE AIR: what produced it)."""

    probabilities: dict[str, float]
    predicted_class: str
    model_name: str
    model_version: int
    architecture: str
    checkpoint_sha256: str
    cam_method: str
    lung_focus_score: float | None
    """Share of the predicted class's heat-map evidence inside the lungs; None: not computed/meaningless."""
    lung_focus_flagged: bool | None
    lung_focus_threshold: float
    lungseg_sha256: str | None
    tracking_uid: str
    """Identifies this result across the SR versions (original and amended)."""
    label: str
    """Human-readable tracking identifier, e.g. 'prediction 12 / model 1'."""
    input_box: Box | None = None
    error_risk: float | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.probabilities) != set(CLASSES) or self.predicted_class not in CLASSES:
            raise ValueError(f"an AI result needs a probability for each of {', '.join(CLASSES)}")

    @property
    def algorithm_name(self) -> str:
        return f"cxr-review {self.model_name}"


@dataclass(frozen=True)
class Review:
    """A radiologist's verdict on a result's heat map."""

    verdict: str
    reasons: tuple[str, ...]
    comment: str
    reviewer: str
    diagnosis: str | None
    given_at: datetime.datetime
    organization: str = "cxr-review"


@dataclass
class SourceFilm:
    """The referenced image: a header-only dataset (no pixel data) and the decoded 8-bit film."""

    header: Dataset
    gray: np.ndarray
    """H×W uint8 as shown to the reviewer; the same size as the header's Rows×Columns."""
    synthetic: Dataset | None = field(default=None, repr=False)
    """For PNG/JPEG sources: the full Secondary Capture of the film, to be written with the results."""

    @property
    def study_instance_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @classmethod
    def from_dicom(cls, data: bytes, gray: np.ndarray) -> SourceFilm:
        header = dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, cols = int(header.Rows), int(header.Columns)
        if gray.shape != (rows, cols):
            raise ValueError(f"the decoded film is {gray.shape}, the DICOM header says {(rows, cols)}")
        return cls(header=header, gray=gray)

    @classmethod
    def from_raster(cls, gray: np.ndarray, *, image_sha256: str, study_uid: str | None = None) -> SourceFilm:
        """A PNG/JPEG film as a Secondary Capture in a new study (patient unknown: the upload had none)."""
        now = datetime.datetime.now()
        sc = hd.sc.SCImage(
            pixel_array=np.ascontiguousarray(gray, dtype=np.uint8),
            photometric_interpretation="MONOCHROME2",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=study_uid or new_uid(),
            series_instance_uid=new_uid(),
            series_number=SERIES_NUMBERS["film"],
            sop_instance_uid=new_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            patient_id=f"CXR-{image_sha256[:16]}",
            patient_name="Unknown^Patient",
            study_id="CXR",
            study_date=now.date(),
            study_time=now.time().replace(microsecond=0),
            patient_orientation=("L", "F"),
        )
        sc.BodyPartExamined = "CHEST"
        sc.SeriesDescription = SERIES_DESCRIPTIONS["film"]
        sc.DerivationDescription = f"uploaded image sha256 {image_sha256}"
        header = Dataset()
        header.update({k: v for k, v in sc.items() if k != 0x7FE00010})  # everything but the pixels
        return cls(header=header, gray=gray, synthetic=sc)


def copy_general_study(target: Dataset, source: Dataset) -> None:
    """Attributes highdicom's constructors do not carry over but a viewer groups by; and UTF-8 text
    (the disclaimer's dash, reviewers' comments in any language)."""
    target.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName", "IssuerOfPatientID"):
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
