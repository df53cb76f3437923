"""The AI result as a DICOM Comprehensive SR holding a TID 1500 Measurement Report.

One measurement group (TID 1501) per result: the four class probabilities, the predicted class, the
lung-focus score, threshold and flag, the error risk and warnings where they exist, each tied to the
algorithm that produced it (TID 4019 Algorithm Identification: name, version and the checkpoint's
sha256 as a parameter; the IHE AI Results profile asks for exactly this). The document's observer
is the model as a device.

After review, the amended SR (same series, next instance number, Predecessor Documents Sequence
naming the earlier SR) adds a second group with the reviewer's verdict, reasons, diagnosis and
comment, names the reviewer as person observer and verifying observer, and is marked VERIFIED.

`read_report` parses such an SR back into plain values (tests, integrators' checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
from pydicom import Dataset

from app.dicom_out import codes
from app.dicom_out.content import (
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    SOFTWARE_VERSION,
    AiResult,
    Review,
    SourceFilm,
    copy_general_study,
    stable_uid,
)
from ml import CLASSES


def algorithm_identification(result: AiResult) -> hd.sr.AlgorithmIdentification:
    parameters = [
        f"checkpoint_sha256={result.checkpoint_sha256}",
        f"architecture={result.architecture}",
        f"cam_method={result.cam_method}",
    ]
    if result.lungseg_sha256:
        parameters.append(f"lungseg_sha256={result.lungseg_sha256}")
    return hd.sr.AlgorithmIdentification(
        name=result.algorithm_name,
        version=str(result.model_version),
        parameters=parameters,
        family=codes.AI_FAMILY,
        manufacturer=MANUFACTURER,
    )


def person_name(username: str) -> str:
    """A user name as a DICOM PN with one component (trailing caret: family name only, on purpose)."""
    cleaned = "".join(c for c in username if c.isprintable() and c not in "^=\\")[:60]
    return f"{cleaned or 'unknown'}^"


def build_sr(
    *,
    source: SourceFilm,
    result: AiResult,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    review: Review | None = None,
    previous: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The SR of one result (with `review`: the amended, verified SR; `previous`: the SR it replaces,
    any dataset with its Study/Series/SOP Instance UIDs and SOP Class UID)."""
    algorithm = algorithm_identification(result)
    device = hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid("device", result.checkpoint_sha256),
            name=result.algorithm_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{result.architecture} v{result.model_version}"[:64],
        ),
    )
    person = None
    if review is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.PERSON,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=person_name(review.reviewer), organization_name=review.organization
            ),
        )
    groups = [_result_group(source, result, algorithm)]
    if review is not None:
        groups.append(_review_group(source, result, review))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[source.header] if _describable(source.header) else None,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source.header],
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=review is not None,
        is_verified=review is not None,
        verifying_observer_name=person_name(review.reviewer) if review is not None else None,
        verifying_organization=review.organization if review is not None else None,
        previous_versions=[previous] if previous is not None else None,
    )
    sr.SeriesDescription = SERIES_DESCRIPTIONS["sr"]
    versions = [f"cxr-review {SOFTWARE_VERSION}", f"{result.model_name} v{result.model_version}"]
    sr.SoftwareVersions = versions  # type: ignore[assignment]  # multi-valued LO; highdicom types it as str
    sr.ManufacturerModelName = result.algorithm_name[:64]
    sr.CodingSchemeIdentificationSequence = [_dataset(item) for item in codes.coding_scheme_identification()]
    copy_general_study(sr, source.header)
    return sr


def _describable(header: Dataset) -> bool:
    """highdicom's image library describes a projection radiograph only with its orientation and
    imager pixel spacing (TID 1603); without them the film is referenced from the group alone."""
    if header.get("Modality") in ("CR", "DX", "MG", "IO", "PX", "RF", "XA"):
        return "PatientOrientation" in header and "ImagerPixelSpacing" in header
    return True


def _result_group(source: SourceFilm, result: AiResult, algorithm: hd.sr.AlgorithmIdentification) -> Any:
    measurements = [
        hd.sr.Measurement(
            name=codes.PROBABILITY_CODES[c],
            value=float(result.probabilities[c]),
            unit=codes.NO_UNITS,
            algorithm_id=algorithm,
        )
        for c in CLASSES
    ]
    qualitative = [
        hd.sr.QualitativeEvaluation(name=codes.PREDICTED_CLASS, value=codes.CLASS_CODES[result.predicted_class])
    ]
    if result.lung_focus_score is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.LUNG_FOCUS, value=float(result.lung_focus_score), unit=codes.NO_UNITS, algorithm_id=algorithm
            )
        )
    if result.lung_focus_flagged is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.LUNG_FOCUS_THRESHOLD, value=float(result.lung_focus_threshold), unit=codes.NO_UNITS
            )
        )
        flag = codes.YES if result.lung_focus_flagged else codes.NO
        qualitative.append(hd.sr.QualitativeEvaluation(name=codes.LUNG_FOCUS_FLAG, value=flag))
    if result.error_risk is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.ERROR_RISK, value=float(result.error_risk), unit=codes.NO_UNITS, algorithm_id=algorithm
            )
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result.tracking_uid, identifier=result.label[:64]),
        finding_type=codes.FINDING_TYPE,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=qualitative,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source.header)],
    )
    for warning in result.warnings:
        group[0].ContentSequence.append(_text(codes.WARNING, warning))
    return group


def _review_group(source: SourceFilm, result: AiResult, review: Review) -> Any:
    qualitative = [hd.sr.QualitativeEvaluation(name=codes.REVIEW_VERDICT, value=codes.VERDICT_CODES[review.verdict])]
    qualitative += [
        hd.sr.QualitativeEvaluation(name=codes.REVIEW_REASON, value=codes.REASON_CODES[r]) for r in review.reasons
    ]
    if review.diagnosis is not None:
        qualitative.append(
            hd.sr.QualitativeEvaluation(name=codes.REVIEW_DIAGNOSIS, value=codes.CLASS_CODES[review.diagnosis])
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=stable_uid("review", result.tracking_uid), identifier="review"
        ),
        finding_type=codes.FINDING_TYPE,
        qualitative_evaluations=qualitative,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source.header)],
    )
    if review.comment:
        group[0].ContentSequence.append(_text(codes.REVIEW_COMMENT, review.comment))
    return group


def _text(name: Any, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value[:1024] or "-", relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _dataset(values: dict[str, str]) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


# ---------------------------------------------------------------------------------- reading back
@dataclass
class ReportContent:
    probabilities: dict[str, float]
    predicted_class: str
    algorithm_name: str
    algorithm_version: str
    algorithm_parameters: list[str]
    lung_focus_score: float | None = None
    lung_focus_flagged: bool | None = None
    error_risk: float | None = None
    warnings: list[str] = field(default_factory=list)
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)
    diagnosis: str | None = None
    comment: str | None = None
    verified: bool = False
    verifying_observer: str | None = None
    predecessor_uids: list[str] = field(default_factory=list)

    @property
    def checkpoint_sha256(self) -> str | None:
        found = [p.split("=", 1)[1] for p in self.algorithm_parameters if p.startswith("checkpoint_sha256=")]
        return found[0] if found else None


def read_report(ds: Dataset) -> ReportContent:
    """The values `build_sr` wrote, read back from the SR dataset (after any round trip through a PACS)."""
    by_code = {(c.value, c.scheme_designator): name for name, c in codes.CLASS_CODES.items()}
    verdicts = {(c.value, c.scheme_designator): name for name, c in codes.VERDICT_CODES.items()}
    reasons = {(c.value, c.scheme_designator): name for name, c in codes.REASON_CODES.items()}
    probabilities: dict[str, float] = {}
    out = ReportContent(probabilities=probabilities, predicted_class="", algorithm_name="", algorithm_version="",
                        algorithm_parameters=[])  # fmt: skip
    for item in _walk(ds.ContentSequence):
        if "ConceptNameCodeSequence" not in item:
            continue
        name = item.ConceptNameCodeSequence[0]
        key = _code_key(name)
        kind = item.ValueType
        if kind == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
            for cls, code in codes.PROBABILITY_CODES.items():
                if key == (code.value, code.scheme_designator):
                    probabilities[cls] = value
            if key == (codes.LUNG_FOCUS.value, codes.SCHEME):
                out.lung_focus_score = value
            elif key == (codes.ERROR_RISK.value, codes.SCHEME):
                out.error_risk = value
        elif kind == "CODE":
            value_key = _code_key(item.ConceptCodeSequence[0])
            if key == (codes.PREDICTED_CLASS.value, codes.SCHEME):
                out.predicted_class = by_code[value_key]
            elif key == (codes.LUNG_FOCUS_FLAG.value, codes.SCHEME):
                out.lung_focus_flagged = value_key == (codes.YES.value, codes.YES.scheme_designator)
            elif key == (codes.REVIEW_VERDICT.value, codes.SCHEME):
                out.verdict = verdicts[value_key]
            elif key == (codes.REVIEW_REASON.value, codes.SCHEME):
                out.reasons.append(reasons[value_key])
            elif key == (codes.REVIEW_DIAGNOSIS.value, codes.SCHEME):
                out.diagnosis = by_code[value_key]
        elif kind == "TEXT":
            if key == (codes.WARNING.value, codes.SCHEME):
                out.warnings.append(str(item.TextValue))
            elif key == (codes.REVIEW_COMMENT.value, codes.REVIEW_COMMENT.scheme_designator):
                out.comment = str(item.TextValue)
            elif name.CodeMeaning == "Algorithm Name" and not out.algorithm_name:
                out.algorithm_name = str(item.TextValue)
            elif name.CodeMeaning == "Algorithm Version" and not out.algorithm_version:
                out.algorithm_version = str(item.TextValue)
            elif name.CodeMeaning == "Algorithm Parameters" and str(item.TextValue) not in out.algorithm_parameters:
                out.algorithm_parameters.append(str(item.TextValue))
    out.verified = str(ds.get("VerificationFlag", "")) == "VERIFIED"
    if "VerifyingObserverSequence" in ds:
        out.verifying_observer = str(ds.VerifyingObserverSequence[0].VerifyingObserverName).rstrip("^")
    for study in ds.get("PredecessorDocumentsSequence", []):
        for series in study.ReferencedSeriesSequence:
            out.predecessor_uids += [str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence]
    return out


def _code_key(code: Dataset) -> tuple[str, str]:
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    return str(value), str(code.get("CodingSchemeDesignator", ""))


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)
