"""Real chest films as the DICOM a PACS holds: CR or DX instances made from ../shared/data/cxr JPEGs.

`dicom_film(path, ...)` wraps the film's pixels (12-bit, MONOCHROME2, a linear window) in a CR or DX
"for presentation" instance with patient, study and series attributes, a view position, the
orientation and imager pixel spacing a projection radiograph carries. Options make the bad inputs a
PACS can hold: a lateral, another SOP class, an unsupported transfer syntax, no pixel module.

`windowed_dicom(values, center, width, ...)` is a bare 16-bit secondary capture of given stored values
(a ramp, a gradient) with VOI windows, optionally MONOCHROME1 and with a rescale: the viewer's DICOM films.
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
MPEG2_MAIN = "1.2.840.10008.1.2.4.100"  # a video transfer syntax: no still-image decoder reads it


def dicom_film(
    path: Path,
    *,
    modality: str = "CR",
    view: str | None = "PA",
    study_uid: str | None = None,
    patient_id: str = "CXR-TEST-1",
    sop_class_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixels: bool = True,
    max_side: int = 512,
) -> bytes:
    """The bytes of a DICOM Part 10 file of the film at `path` (shrunk to `max_side`, for speed)."""
    with Image.open(path) as img:
        gray = img.convert("L")
        if max(gray.size) > max_side:
            gray.thumbnail((max_side, max_side))
        values = np.asarray(gray, dtype=np.uint16) * 16  # 12 bits stored, like a CR detector
    now = datetime.datetime.now()
    sop_class = sop_class_uid or (CR_IMAGE if modality == "CR" else DX_PRESENTATION)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.StudyDescription = "XR CHEST"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "cxr-review tests"
    ds.BodyPartExamined = "CHEST"
    if view is not None:
        ds.ViewPosition = view
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = []
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "43799004", "SCT", "Chest"
        ds.AnatomicRegionSequence = [region]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"] if view != "LL" else ["A", "F"]
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PresentationLUTShape = "IDENTITY"
    if pixels:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = values.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if transfer_syntax == ExplicitVRLittleEndian:
            ds.PixelData = values.tobytes()
        else:  # an encapsulated stream nothing here can decode
            ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
            ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def secondary_capture(pixels: np.ndarray, **attrs: object) -> bytes:
    """A bare secondary-capture file of `pixels` (uncompressed, their own bytes) with `attrs` set on the
    dataset (the pixel module's attributes among them)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("film.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = *pixels.shape, 1
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def windowed_dicom(
    values: np.ndarray,
    center: float | list[float],
    width: float | list[float],
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    explanations: list[str] | None = None,
) -> bytes:
    """A 16-bit (12 stored) DX secondary capture of stored `values` with VOI window(s) `center`/`width`;
    `slope`/`intercept` add a RescaleSlope/RescaleIntercept, `explanations` their explanation."""
    attrs: dict[str, object] = {
        "Modality": "DX",
        "PhotometricInterpretation": photometric,
        "BitsAllocated": 16,
        "BitsStored": 12,
        "HighBit": 11,
        "PixelRepresentation": 0,
        "WindowCenter": center,
        "WindowWidth": width,
    }
    if explanations is not None:
        attrs["WindowCenterWidthExplanation"] = explanations
    if slope is not None or intercept is not None:
        attrs["RescaleSlope"], attrs["RescaleIntercept"] = slope if slope is not None else 1, intercept or 0
    return secondary_capture(values.astype(np.uint16), **attrs)
