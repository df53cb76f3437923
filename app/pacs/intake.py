"""One DICOM instance from the PACS → the normal prediction path, remembered in `pacs_instances`.

`ingest` is shared by pacs-sync (WADO-RS bytes) and the listener (C-STORE bytes). Per instance:

1. its row is found or made (SOP Instance UID: unique), so a restart never does the same work twice:
   `done`, `rejected` and `failed` instances are skipped;
2. the header is checked (`check_header`): a non-image SOP class, a transfer syntax no decoder here
   reads, a lateral or other non-frontal view, a missing Image Pixel module → `rejected` with that
   reason, nothing else written;
3. `app.services.predictions.create_prediction` runs (all-or-nothing, as for uploads); a film it
   refuses (undecodable, too large) is `rejected` with its message; any other error counts an attempt
   (`pending` with the reason, retried on the next pass) until `CXR_PACS_MAX_ATTEMPTS`, then `failed`;
4. `done`, with the prediction's id, and its result objects queued in the outbox — in one commit.

A crash between the prediction's commit and step 4 is healed on the retry: the prediction of the
same bytes under the same instance UID is found and reused, not made twice.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Image, PacsInstance, Prediction
from app.pacs import outbox
from app.services.errors import PayloadTooLargeError
from app.services.predictions import create_prediction
from app.services.storage import sha256_bytes
from ml.imageio import ImageDecodeError

log = logging.getLogger(__name__)

RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image - For Processing",
}
FRONTAL_VIEWS = {"AP", "PA"}
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT"}
PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")


def transfer_syntax_readable(uid: str) -> bool:
    """Whether pydicom (with the installed plugins) can decode pixel data in this transfer syntax."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(UID(uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def check_header(ds: Dataset) -> str | None:
    """Why this instance is not a frontal chest film this service can read; None when it is."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "none"
        return f"not a radiograph: SOP class {name} ({sop_class or 'missing'}); only CR and DX images are read"
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not syntax:
        return "no transfer syntax in the file meta information"
    if not transfer_syntax_readable(syntax):
        return f"unsupported transfer syntax {UID(syntax).name} ({syntax}): no decoder for its pixel data here"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return f"a lateral view (ViewPosition {view}): the models read frontal (PA/AP) films only"
    if view and view not in FRONTAL_VIEWS:
        return f"not a frontal view (ViewPosition {view}): the models read frontal (PA/AP) films only"
    missing = [k for k in PIXEL_MODULE if k not in ds]
    if missing:
        return f"no image: the Image Pixel module is missing ({', '.join(missing)} absent)"
    return None


@dataclass(frozen=True)
class IntakeOutcome:
    sop_instance_uid: str | None
    status: str
    """done, rejected, pending (failed this time, will be retried), failed (gave up), or skipped."""
    reason: str | None = None
    prediction_id: int | None = None


def ingest(*, ctx: Any, data: bytes, origin: str, sop_instance_uid: str | None = None) -> IntakeOutcome:
    """Process one instance's Part 10 bytes (see the module docstring). `ctx`: an app.deps.AppContext.
    `sop_instance_uid`: what the PACS listed it as (used when the bytes cannot be parsed)."""
    header: Dataset | None = None
    parse_error = None
    try:
        header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        parse_error = f"not a readable DICOM file: {str(exc)[:200]}"
    uid = str(header.get("SOPInstanceUID", "")) if header is not None else ""
    uid = uid or sop_instance_uid or ""
    if not uid:
        return IntakeOutcome(None, "rejected", "no SOP Instance UID: the file cannot be recorded")
    with ctx.session_factory() as session:
        row = _instance_row(session, uid, origin, header)
        if row.status != "pending":
            return IntakeOutcome(uid, "skipped", row.reason, row.prediction_id)
        reason = parse_error if header is None else check_header(header)
        if reason is not None:
            return _finish(session, row, "rejected", reason)
        try:
            prediction = _existing_prediction(session, uid, data) or create_prediction(
                session=session, settings=ctx.settings, store=ctx.store, manager=ctx.models,
                executor=ctx.executor, data=data,
                filename=_filename(uid), models=ctx.settings.pacs_models, user=None,
            )  # fmt: skip
        except (ImageDecodeError, PayloadTooLargeError) as exc:
            return _finish(session, row, "rejected", str(exc))
        except Exception as exc:  # the service, a model, the disk: worth another try
            log.warning("instance %s failed: %s", uid, exc)
            return record_failure(session, row, f"{type(exc).__name__}: {exc}", ctx.settings.pacs_max_attempts)
        row.prediction_id = prediction.id
        if ctx.settings.pacs_output != "none":
            outbox.enqueue_results(session=session, prediction=prediction, source_header=header)
        return _finish(session, row, "done", None)


def _filename(uid: str) -> str:
    return f"{uid}.dcm"


def _instance_row(session: Session, uid: str, origin: str, header: Dataset | None) -> PacsInstance:
    row = session.scalar(select(PacsInstance).where(PacsInstance.sop_instance_uid == uid))
    if row is None:
        row = PacsInstance(
            sop_instance_uid=uid,
            origin=origin,
            study_instance_uid=_uid_or_none(header, "StudyInstanceUID"),
            series_instance_uid=_uid_or_none(header, "SeriesInstanceUID"),
        )
        session.add(row)
        session.commit()  # the instance is known from now on, whatever happens next
    return row


def _uid_or_none(header: Dataset | None, keyword: str) -> str | None:
    value = str(header.get(keyword, "")) if header is not None else ""
    return value[:64] or None


def _existing_prediction(session: Session, uid: str, data: bytes) -> Prediction | None:
    return session.scalar(
        select(Prediction)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.filename == _filename(uid), Image.sha256 == sha256_bytes(data))
        .order_by(Prediction.id)
        .limit(1)
    )


def _finish(session: Session, row: PacsInstance, status: str, reason: str | None) -> IntakeOutcome:
    row.status = status
    row.reason = reason
    session.commit()
    return IntakeOutcome(row.sop_instance_uid, status, reason, row.prediction_id)


def record_failure(session: Session, row: PacsInstance, reason: str, max_attempts: int) -> IntakeOutcome:
    """Count a failed attempt; the instance stays `pending` (retried) until `max_attempts`, then `failed`."""
    session.rollback()  # whatever the failed step left in the session
    row.attempts += 1
    status = "failed" if row.attempts >= max_attempts else "pending"
    return _finish(session, row, status, reason[:2000])


def failed_instance(
    *, ctx: Any, uid: str, origin: str, reason: str, study: str | None, series: str | None
) -> IntakeOutcome:
    """Record a failed attempt for an instance the bytes of which could not even be fetched."""
    with ctx.session_factory() as session:
        row = session.scalar(select(PacsInstance).where(PacsInstance.sop_instance_uid == uid))
        if row is None:
            row = PacsInstance(
                sop_instance_uid=uid, origin=origin, study_instance_uid=study, series_instance_uid=series
            )
            session.add(row)
            session.commit()
        return record_failure(session, row, reason, ctx.settings.pacs_max_attempts)


def reject_listed(
    *, ctx: Any, uid: str, origin: str, reason: str, study: str | None, series: str | None
) -> IntakeOutcome:
    """Record an instance rejected from what the PACS's search said about it (no retrieval needed)."""
    with ctx.session_factory() as session:
        row = PacsInstance(sop_instance_uid=uid, origin=origin, study_instance_uid=study, series_instance_uid=series)
        session.add(row)
        return _finish(session, row, "rejected", reason)
