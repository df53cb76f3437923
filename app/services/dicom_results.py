"""Stored results → DICOM objects (app.dicom_out): the adapter between the database/files and the
builders. Used by the PACS outbox (app.pacs.outbox) to build each queued object when it is sent.
"""

from __future__ import annotations

from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.dicom_out.content import AiResult, Review, SourceFilm, stable_uid
from app.dicom_out.sc import build_sc
from app.dicom_out.seg import build_seg
from app.dicom_out.sr import build_sr
from app.models import DicomExport, Prediction, PredictionResult, Verdict
from app.services import lung_focus
from app.services.storage import FileStore
from ml.lung_crop import Box


def source_film(*, store: FileStore, prediction: Prediction) -> SourceFilm:
    """The film a prediction was made on: the DICOM source's header, or (PNG/JPEG) a new SC of it."""
    image = prediction.image
    gray = store.read_gray(image.sha256)
    if image.format == "dicom":
        return SourceFilm.from_dicom(store.original_path(image.sha256).read_bytes(), gray)
    return SourceFilm.from_raster(gray, image_sha256=image.sha256)


def ai_result(result: PredictionResult, *, threshold: float) -> AiResult:
    focus = lung_focus.of_predicted_class(result, threshold)
    return AiResult(
        probabilities={c: float(v) for c, v in result.probabilities.items()},
        predicted_class=result.predicted_class,
        model_name=result.model.name,
        model_version=result.model_version,
        architecture=result.architecture,
        checkpoint_sha256=result.checkpoint_sha256,
        cam_method=result.cam_method,
        lung_focus_score=focus.score if focus is not None else None,
        lung_focus_flagged=focus.flagged if focus is not None else None,
        lung_focus_threshold=threshold,
        lungseg_sha256=result.lungseg_sha256,
        tracking_uid=stable_uid("result", str(result.id), result.cam_sha256),
        label=f"prediction {result.prediction_id} / model {result.model_id}",
        input_box=Box.from_dict(result.input_box) if result.input_box else None,
        # Columns other branches may add to results; absent today, carried into the SR once present.
        error_risk=getattr(result, "error_risk", None),
        warnings=tuple(getattr(result, "warnings", None) or ()),
    )


def review_of(verdict: Verdict) -> Review:
    return Review(
        verdict=verdict.verdict,
        reasons=tuple(verdict.reasons),
        comment=verdict.comment,
        reviewer=verdict.reviewer.username,
        diagnosis=verdict.diagnosis,
        given_at=verdict.created_at,
    )


def build_export(*, session: Session, store: FileStore, export: DicomExport, threshold: float) -> Dataset:
    """The dataset of one outbox row, with the UIDs fixed in the row."""
    result = export.result
    prediction = result.prediction
    source = source_film(store=store, prediction=prediction)
    series, sop = export.series_instance_uid, export.sop_instance_uid
    if export.kind == "seg":
        if result.lung_mask_sha256 is None:
            raise ValueError(f"result {result.id} has no lung mask (stored before lung focus existed)")
        mask = store.read_mask(result.lung_mask_sha256)
        ds: Dataset = build_seg(
            source=source,
            lung_mask=mask,
            lungseg_sha256=result.lungseg_sha256,
            series_instance_uid=series,
            sop_instance_uid=sop,
        )
    elif export.kind == "sc":
        ds = build_sc(
            source=source,
            result=ai_result(result, threshold=threshold),
            cam_raw=store.read_cam(result.cam_sha256),
            series_instance_uid=series,
            sop_instance_uid=sop,
        )
    else:
        review = previous = None
        if export.verdict_id is not None:
            verdict = session.get(Verdict, export.verdict_id)
            assert verdict is not None
            review = review_of(verdict)
            previous = _previous_sr(session, export)
        ds = build_sr(
            source=source, result=ai_result(result, threshold=threshold), instance_number=export.instance_number,
            review=review, previous=previous, series_instance_uid=series, sop_instance_uid=sop,
        )  # fmt: skip
    if ds.StudyInstanceUID != export.study_instance_uid:
        raise ValueError(f"export {export.id}: the source film's study changed ({ds.StudyInstanceUID})")
    return ds


def _previous_sr(session: Session, export: DicomExport) -> Dataset | None:
    earlier = session.scalar(
        select(DicomExport)
        .where(
            DicomExport.result_id == export.result_id,
            DicomExport.kind == "sr",
            DicomExport.instance_number < export.instance_number,
        )
        .order_by(DicomExport.instance_number.desc())
        .limit(1)
    )
    if earlier is None:
        return None
    ref = Dataset()
    ref.StudyInstanceUID = earlier.study_instance_uid
    ref.SeriesInstanceUID = earlier.series_instance_uid
    ref.SOPInstanceUID = earlier.sop_instance_uid
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    return ref
