"""The web process's reaper: a daemon thread that fails the jobs of workers that stopped
heartbeating (the web process never trains; workers reap too, before each claim)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.services import training

log = logging.getLogger(__name__)

REAPER_INTERVAL_SECONDS = 10.0


class Reaper:
    """A daemon thread of the web process that fails abandoned jobs (the web process never trains)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        interval: float = REAPER_INTERVAL_SECONDS,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.stale_after = settings.worker_stale_seconds
        self.interval = min(interval, max(0.5, settings.worker_stale_seconds / 3))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="training-job-reaper", daemon=True)
        self.on_error = on_error

    def start(self) -> Reaper:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with self.session_factory() as session:
                    reaped = training.reap_stale_jobs(session=session, stale_after_seconds=self.stale_after)
                if reaped:
                    log.warning("reaped abandoned training job(s) %s", reaped)
            except Exception as exc:  # the database may be briefly unavailable; try again next round
                log.warning("training job reaper: %s", exc)
                if self.on_error is not None:
                    self.on_error(exc)
