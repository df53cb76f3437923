"""`cxr-review dicom-listener`: a C-STORE SCP for PACSes that push studies instead of being polled.

Every storage SOP class is accepted at association time, in any transfer syntax, so that a wrong
object reaches `app.pacs.intake` and is recorded as rejected with its reason (rather than refused
without a trace). Replies: Success (0x0000) once an instance is processed, rejected or known;
Out of Resources (0xA700) after a failure that is worth a retry (the PACS re-sends it), until
CXR_PACS_MAX_ATTEMPTS, then Cannot Understand (0xC000). Results are pushed by a delivery thread,
woken after each processed instance and every CXR_PACS_POLL_SECONDS.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from app.config import Settings
from app.pacs import intake
from app.pacs.outbox import Sender, deliver, make_sender

log = logging.getLogger(__name__)
ORIGIN = "c-store"
STATUS_FOR = {"done": 0x0000, "rejected": 0x0000, "skipped": 0x0000, "pending": 0xA700, "failed": 0xC000}


@dataclass
class Listener:
    ctx: Any
    ae_title: str
    host: str
    port: int
    sender: Sender | None
    calling_ae_titles: tuple[str, ...] = ()
    """Only these calling AE titles may associate; empty: any."""
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: Any = None
    _deliverer: threading.Thread | None = None

    def handle_store(self, event: Any) -> int:
        try:
            data = bytes(event.encoded_dataset())
        except Exception as exc:
            log.warning("C-STORE from %s: unreadable dataset: %s", event.assoc.requestor.ae_title, exc)
            return 0xC000
        outcome = intake.ingest(ctx=self.ctx, data=data, origin=ORIGIN)
        log.info(
            "C-STORE %s: %s%s", outcome.sop_instance_uid, outcome.status, f" ({outcome.reason})" * bool(outcome.reason)
        )
        if outcome.status == "done":
            self._wake.set()
        return STATUS_FOR[outcome.status]

    def start(self) -> Listener:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = 4
        if self.calling_ae_titles:
            ae.require_calling_aet = list(self.calling_ae_titles)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle_store)]
        )
        if self.sender is not None:
            self._deliverer = threading.Thread(target=self._deliver_loop, name="dicom-listener-delivery", daemon=True)
            self._deliverer.start()
        return self

    def _deliver_loop(self) -> None:
        assert self.sender is not None
        while not self._stop.is_set():
            try:
                report = deliver(ctx=self.ctx, sender=self.sender)
                if report.sent or report.failed:
                    log.info("sent %d result object(s), %d failed", len(report.sent), len(report.failed))
            except Exception:
                log.exception("delivering results failed")
            self._wake.wait(self.ctx.settings.pacs_poll_seconds)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
        if self._deliverer is not None:
            self._deliverer.join(timeout=60)


def start_listener(*, ctx: Any, ae_title: str, host: str, port: int) -> Listener:
    """Listen on host:port as `ae_title` (returns at once; `.stop()` ends it)."""
    settings: Settings = ctx.settings
    allowed = tuple(t.strip() for t in settings.pacs_calling_ae_titles.split(",") if t.strip())
    listener = Listener(
        ctx=ctx, ae_title=ae_title, host=host, port=port, sender=make_sender(settings), calling_ae_titles=allowed
    )
    return listener.start()


def run(settings: Settings, *, ae_title: str | None, host: str, port: int) -> int:
    """The command: listen until SIGTERM/SIGINT."""
    from app.main import build_context

    ctx = build_context(settings)
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    listener = start_listener(ctx=ctx, ae_title=ae_title or settings.pacs_ae_title, host=host, port=port)
    print(
        f"dicom-listener: {listener.ae_title} listening on {host}:{port} (results: {settings.pacs_output})", flush=True
    )
    try:
        stop.wait()
    finally:
        listener.stop()
        ctx.close()
    return 0
