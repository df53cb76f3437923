"""The outbox of DICOM objects for the PACS (`dicom_exports`), and the senders that push them.

Rows are made in the same transaction as what causes them: the SR, SEG and SC of each result when a
PACS instance becomes `done` (`enqueue_results`), an amended SR when a verdict is given on a result
that went to the PACS (`enqueue_amended_sr`, called by app.services.reviews.add_verdict). UIDs are
fixed in the row, so a push retried after a lost reply re-sends the same instance. `deliver` builds
each pending object from the stored result (app.services.dicom_results) and sends it; a failure
counts an attempt, and after CXR_PACS_MAX_ATTEMPTS the row is `failed` and reported.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.dicom_out.content import new_uid
from app.models import EXPORT_KINDS, DicomExport, Prediction, Verdict, utcnow

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ enqueue
def enqueue_results(*, session: Session, prediction: Prediction, source_header: Dataset | None) -> list[DicomExport]:
    """Queue the SR, SEG and SC of every result of `prediction` into the source's study (not committed)."""
    if source_header is None or "StudyInstanceUID" not in source_header:
        raise ValueError("results go into the source's study: the source header has no Study Instance UID")
    study = str(source_header.StudyInstanceUID)
    rows = []
    for result in prediction.results:
        for kind in EXPORT_KINDS:
            if kind == "seg" and result.lung_mask_sha256 is None:
                continue
            rows.append(
                DicomExport(
                    prediction_id=prediction.id,
                    result_id=result.id,
                    kind=kind,
                    study_instance_uid=study,
                    series_instance_uid=new_uid(),
                    sop_instance_uid=new_uid(),
                    instance_number=1,
                )
            )
    session.add_all(rows)
    return rows


def enqueue_amended_sr(*, session: Session, verdict: Verdict) -> DicomExport | None:
    """Queue an amended SR for a verdict on a result whose SR went (or goes) to the PACS; None for a
    result that did not come from the PACS. Same SR series, next instance number. Not committed."""
    original = session.scalar(
        select(DicomExport).where(
            DicomExport.result_id == verdict.result_id, DicomExport.kind == "sr", DicomExport.verdict_id.is_(None)
        )
    )
    if original is None:
        return None
    last = session.scalar(
        select(func.max(DicomExport.instance_number)).where(
            DicomExport.result_id == verdict.result_id, DicomExport.kind == "sr"
        )
    )
    row = DicomExport(
        prediction_id=original.prediction_id, result_id=original.result_id, verdict_id=verdict.id, kind="sr",
        study_instance_uid=original.study_instance_uid, series_instance_uid=original.series_instance_uid,
        sop_instance_uid=new_uid(), instance_number=int(last or 1) + 1,
    )  # fmt: skip
    session.add(row)
    return row


# ------------------------------------------------------------------------------------ senders
class Sender(Protocol):
    def send(self, datasets: Sequence[Dataset]) -> None:
        """Store every dataset on the PACS or raise."""


class StowSender:
    def __init__(self, pacs: Any) -> None:
        self.pacs = pacs

    def send(self, datasets: Sequence[Dataset]) -> None:
        self.pacs.store(datasets)


class CStoreSender:
    """C-STORE SCU to one AE (CXR_PACS_STORE_HOST/PORT/AE_TITLE), calling as CXR_PACS_AE_TITLE."""

    def __init__(self, *, host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 60) -> None:
        self.host, self.port, self.called_ae, self.calling_ae, self.timeout = host, port, called_ae, calling_ae, timeout

    def send(self, datasets: Sequence[Dataset]) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        # Refused connections are reported here: pynetdicom leaves its socket open when connect() fails.
        try:
            socket.create_connection((self.host, self.port), timeout=self.timeout).close()
        except OSError as exc:
            raise ConnectionError(
                f"C-STORE: no association with {self.called_ae}@{self.host}:{self.port}: {exc}"
            ) from exc
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise ConnectionError(f"C-STORE: no association with {self.called_ae}@{self.host}:{self.port}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if "Status" in status else -1
                if code != 0x0000:
                    raise ConnectionError(f"C-STORE of {ds.SOPInstanceUID} refused (status 0x{code & 0xFFFF:04X})")
        finally:
            assoc.release()


def make_sender(settings: Settings, pacs: Any = None) -> Sender | None:
    """The sender CXR_PACS_OUTPUT names (None for 'none'); STOW-RS needs the DICOMweb client `pacs`."""
    if settings.pacs_output == "none":
        return None
    if settings.pacs_output == "c-store":
        assert settings.pacs_store_host is not None and settings.pacs_store_port is not None
        return CStoreSender(
            host=settings.pacs_store_host, port=settings.pacs_store_port, called_ae=settings.pacs_store_ae_title,
            calling_ae=settings.pacs_ae_title,
        )  # fmt: skip
    if pacs is None:
        from app.pacs.dicomweb import Pacs

        pacs = Pacs(settings)
    return StowSender(pacs)


# ------------------------------------------------------------------------------------ deliver
@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)
    """SOP Instance UIDs stored on the PACS in this pass."""
    retrying: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Gave up in this pass: UID → last error."""


def deliver(*, ctx: Any, sender: Sender, limit: int = 500) -> DeliveryReport:
    """Build and send pending outbox rows (oldest first), one commit per row."""
    from app.services.dicom_results import build_export

    report = DeliveryReport()
    settings: Settings = ctx.settings
    with ctx.session_factory() as session:
        ids = list(
            session.scalars(
                select(DicomExport.id).where(DicomExport.status == "pending").order_by(DicomExport.id).limit(limit)
            )
        )
        for export_id in ids:
            export = session.get(DicomExport, export_id)
            assert export is not None
            try:
                ds = build_export(
                    session=session, store=ctx.store, export=export, threshold=settings.lung_focus_threshold
                )
                sender.send([ds])
            except Exception as exc:
                session.rollback()
                export.attempts += 1
                export.error = f"{type(exc).__name__}: {exc}"[:2000]
                if export.attempts >= settings.pacs_max_attempts:
                    export.status = "failed"
                    report.failed[export.sop_instance_uid] = export.error
                else:
                    report.retrying[export.sop_instance_uid] = export.error
                log.warning("sending %s %s failed: %s", export.kind, export.sop_instance_uid, export.error)
            else:
                export.status, export.sent_at, export.error = "sent", utcnow(), None
                report.sent.append(export.sop_instance_uid)
            session.commit()
    return report
