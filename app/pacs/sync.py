"""`cxr-review pacs-sync`: poll the PACS over DICOMweb, run new frontal CR/DX films, push results back.

One pass (`sync_once`): QIDO-RS lists the instances of the configured modalities (studies of the last
CXR_PACS_LOOKBACK_DAYS days); each not yet `done`, `rejected` or `failed` is retrieved with WADO-RS
and ingested (app.pacs.intake). What the search already tells (a non-radiograph SOP class, a lateral
view) is rejected without retrieving it. Then the outbox is delivered. A PACS that cannot be reached
fails the pass with a clear error; the next pass tries again.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from app.config import Settings
from app.models import DicomExport, PacsInstance
from app.pacs import intake
from app.pacs.dicomweb import InstanceRef, Pacs, PacsError
from app.pacs.outbox import DeliveryReport, Sender, deliver, make_sender

log = logging.getLogger(__name__)
ORIGIN = "dicomweb"


@dataclass
class SyncReport:
    listed: int = 0
    skipped: int = 0
    """Already done, rejected or given up in an earlier pass."""
    done: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    retrying: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    delivery: DeliveryReport = field(default_factory=DeliveryReport)

    def add(self, outcome: intake.IntakeOutcome) -> None:
        uid, reason = outcome.sop_instance_uid or "?", outcome.reason or ""
        if outcome.status == "done":
            self.done.append(uid)
        elif outcome.status == "rejected":
            self.rejected[uid] = reason
        elif outcome.status == "pending":
            self.retrying[uid] = reason
        elif outcome.status == "failed":
            self.failed[uid] = reason
        else:
            self.skipped += 1

    def lines(self) -> list[str]:
        d = self.delivery
        out = [
            f"pacs-sync: {self.listed} instance(s) listed, {len(self.done)} processed, {len(self.rejected)} rejected, "
            f"{len(self.retrying)} to retry, {len(self.failed)} failed, {self.skipped} already handled; "
            f"{len(d.sent)} result object(s) sent, {len(d.retrying)} to resend, {len(d.failed)} failed"
        ]
        out += [f"  rejected {uid}: {why}" for uid, why in self.rejected.items()]
        out += [f"  will retry {uid}: {why}" for uid, why in self.retrying.items()]
        out += [f"  FAILED {uid} (gave up): {why}" for uid, why in self.failed.items()]
        out += [f"  FAILED to send {uid} (gave up): {why}" for uid, why in d.failed.items()]
        return out


def listed_reason(ref: InstanceRef) -> str | None:
    """A rejection the search result alone justifies (the header is checked again after retrieval)."""
    probe = Dataset()
    if ref.sop_class_uid:
        probe.SOPClassUID = ref.sop_class_uid
        if ref.sop_class_uid not in intake.RADIOGRAPH_SOP_CLASSES:
            return intake.check_header(probe)
    view = (ref.view_position or "").strip().upper()
    if view in intake.LATERAL_VIEWS or (view and view not in intake.FRONTAL_VIEWS):
        probe.SOPClassUID = next(iter(intake.RADIOGRAPH_SOP_CLASSES))
        probe.file_meta = FileMetaDataset()
        probe.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        probe.ViewPosition = view
        return intake.check_header(probe)
    return None


def sync_once(*, ctx: Any, pacs: Pacs, sender: Sender | None) -> SyncReport:
    settings: Settings = ctx.settings
    report = SyncReport()
    modalities = [m.strip().upper() for m in settings.pacs_modalities.split(",") if m.strip()]
    for ref in pacs.find_instances(modalities=modalities, lookback_days=settings.pacs_lookback_days):
        report.listed += 1
        with ctx.session_factory() as session:
            status = session.scalar(
                select(PacsInstance.status).where(PacsInstance.sop_instance_uid == ref.sop_instance_uid)
            )
        if status in ("done", "rejected", "failed"):
            report.skipped += 1
            continue
        where = {"uid": ref.sop_instance_uid, "origin": ORIGIN, "study": ref.study_instance_uid,
                 "series": ref.series_instance_uid}  # fmt: skip
        reason = listed_reason(ref) if status is None else None
        if reason is not None:
            report.add(intake.reject_listed(ctx=ctx, reason=reason, **where))
            continue
        try:
            data = pacs.retrieve(ref)
        except PacsError as exc:
            report.add(intake.failed_instance(ctx=ctx, reason=str(exc), **where))
            continue
        report.add(intake.ingest(ctx=ctx, data=data, origin=ORIGIN, sop_instance_uid=ref.sop_instance_uid))
    if sender is not None:
        report.delivery = deliver(ctx=ctx, sender=sender)
    return report


def status_lines(ctx: Any) -> list[str]:
    """Every instance rejected or given up, and every result object that could not be sent."""
    with ctx.session_factory() as session:
        rows = session.scalars(
            select(PacsInstance).where(PacsInstance.status.in_(("rejected", "failed"))).order_by(PacsInstance.id)
        ).all()
        exports = session.scalars(
            select(DicomExport).where(DicomExport.status == "failed").order_by(DicomExport.id)
        ).all()
        lines = [f"{r.status:<8} {r.sop_instance_uid} ({r.origin}, {r.attempts} attempt(s)): {r.reason}" for r in rows]
        lines += [f"unsent   {e.kind} {e.sop_instance_uid} of result {e.result_id}: {e.error}" for e in exports]
    return lines or ["nothing rejected or failed"]


def run(settings: Settings, *, once: bool) -> int:
    """The command: one pass (`once`) or a pass every CXR_PACS_POLL_SECONDS until SIGTERM/SIGINT."""
    from app.main import build_context

    pacs = Pacs(settings)  # first: a missing CXR_DICOMWEB_URL stops the command before anything starts
    ctx = build_context(settings)
    sender = make_sender(settings, pacs)
    stop = threading.Event()
    if not once:

        def _stop(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            try:
                report = sync_once(ctx=ctx, pacs=pacs, sender=sender)
            except PacsError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                if once:
                    return 1
            else:
                print("\n".join(report.lines()), flush=True)
            if once or stop.wait(settings.pacs_poll_seconds):
                return 0
    finally:
        pacs.close()
        ctx.close()
