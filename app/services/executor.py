"""One inference executor per process: a bounded queue of decoded films and a small fixed pool of
worker threads that run them through `ml.inference.analyze_films` in micro-batches.

Requests (uploads, PACS intake, `models=all` comparisons, the `cxr-review predict` batch command)
hand their decoded films to `InferenceExecutor.submit` and wait on the returned futures
(`concurrent.futures.Future`: a sync route or a thread calls `.result()`, async code can
`asyncio.wrap_future` it). Each worker takes the oldest queued job, adds the queued jobs that ask for
the same models (up to `max_batch` films, waiting at most `max_wait_ms` for more when the batch is
not full) and runs them as one batch: one lung-segmenter call per film, one forward pass per model.
Results are the Prediction objects of `analyze_films`, passed through untouched.

Threads: `workers` × torch's intra-op threads is meant to equal the cores (see `app.config.Settings`
`inference_workers`, `torch_threads`): however many requests arrive, at most that many threads run
torch, so a busy server never oversubscribes its CPU.

Memory: torch's buffers come from the workers' heaps, which keep their peak (a batch of 8 films) after
a burst. When the executor has been idle for `idle_trim_s`, one worker gives the heaps' free pages back
to the OS (glibc `malloc_trim`); a steady stream of uploads never pays for it (the next forward would
fault the pages in again).

Back-pressure: the queue holds at most `max_queue` films. `submit(..., wait=False)` (the web
service) refuses a film that does not fit with `OverloadedError` (HTTP 503 with Retry-After) before
anything is written; `wait=True` (the batch command) blocks until there is room.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.config import Settings
from app.services.errors import OverloadedError
from ml.inference import FilmResult, Predictor, analyze_films
from ml.lungseg import LungSegmenter

log = logging.getLogger(__name__)


def _malloc_trim() -> bool:
    """Give the C heaps' free pages back to the OS (glibc); False where there is no malloc_trim."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


@dataclass
class _Job:
    gray: np.ndarray
    predictors: tuple[Predictor, ...]
    segmenter: LungSegmenter | None
    future: Future[FilmResult] = field(default_factory=Future)

    @property
    def key(self) -> tuple[int, ...]:
        """Jobs with the same key can share a batch: the same models and segmenter."""
        return (id(self.segmenter), *map(id, self.predictors))


class InferenceExecutor:
    """A bounded film queue served by `workers` threads in micro-batches. Thread-safe; `close()` stops it."""

    def __init__(
        self,
        *,
        workers: int = 1,
        max_batch: int = 8,
        max_wait_ms: float = 0.0,
        max_queue: int = 64,
        torch_threads: int | None = None,
        idle_trim_s: float | None = None,
        name: str = "inference",
    ) -> None:
        if workers < 1 or max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("workers, max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        if idle_trim_s is not None and idle_trim_s <= 0:
            raise ValueError("idle_trim_s must be > 0 (None: never trim)")
        self.idle_trim_s = idle_trim_s
        self._trim_due = False  # work ran since the last trim
        self._last_done = 0.0  # when the last batch ended (monotonic)
        self.trims = 0
        """How many times an idle worker trimmed the heaps (for tests)."""
        self.workers, self.max_batch, self.max_queue = workers, max_batch, max_queue
        self.max_wait_s = max_wait_ms / 1000.0
        self.torch_threads = torch_threads
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0
        self._film_seconds = 0.1  # moving average of a film's cost, for Retry-After
        self.batches: list[int] = []
        """Sizes of the last batches run (at most 1,000; for benchmarks and tests)."""
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceExecutor:
        """The process's executor as the settings size it (see `Settings.inference_workers`)."""
        return cls(
            workers=settings.resolved_inference_workers,
            max_batch=settings.inference_batch_size,
            max_wait_ms=settings.inference_batch_wait_ms,
            max_queue=settings.inference_queue_films,
            torch_threads=settings.torch_threads,
            idle_trim_s=settings.inference_idle_trim_seconds or None,
        )

    # -- submitting ----------------------------------------------------------------------------
    def submit(
        self,
        grays: Sequence[np.ndarray],
        predictors: Sequence[Predictor],
        segmenter: LungSegmenter | None,
        *,
        wait: bool = False,
    ) -> list[Future[FilmResult]]:
        """Queue the films (all or none); one future each, resolved with its FilmResult (or the error).

        OverloadedError when they do not fit in the queue and `wait` is false; with `wait`, block until
        they fit. RuntimeError after `close()`."""
        jobs = [_Job(g, tuple(predictors), segmenter) for g in grays]
        if len(jobs) > self.max_queue:
            raise ValueError(f"{len(jobs)} films never fit in a queue of {self.max_queue}")
        with self._cond:
            while not self._closed and len(self._queue) + len(jobs) > self.max_queue:
                if not wait:
                    raise OverloadedError(
                        f"the inference queue is full ({len(self._queue)} films waiting); retry later",
                        retry_after=self._retry_after(),
                    )
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the inference executor is closed")
            self._queue.extend(jobs)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def run(
        self, grays: Sequence[np.ndarray], predictors: Sequence[Predictor], segmenter: LungSegmenter | None
    ) -> list[FilmResult]:
        """`submit` (refusing when full) and wait: what `analyze_films` returns, through the queue."""
        return [f.result() for f in self.submit(grays, predictors, segmenter)]

    def _retry_after(self) -> int:
        """Seconds until the queue has drained enough to take a film, by the recent cost per film."""
        return max(1, math.ceil(len(self._queue) * self._film_seconds / self.workers))

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- working -------------------------------------------------------------------------------
    def _work(self) -> None:
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        """The oldest job plus queued jobs with its key, up to max_batch (waiting up to max_wait_s
        for more); None once closed and drained."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                if not self._trim_due or self._busy:  # nothing to give back, or a batch is running
                    self._cond.wait()
                    continue
                idle = time.monotonic() - self._last_done
                if self.idle_trim_s is not None and idle < self.idle_trim_s:
                    self._cond.wait(self.idle_trim_s - idle)
                    continue
                self._trim_due = False  # this worker trims; the others go back to waiting
                self._cond.release()
                try:
                    trimmed = _malloc_trim()
                finally:
                    self._cond.acquire()
                self.trims += trimmed
            first = self._queue.popleft()
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                batch += self._take_same(first.key, self.max_batch - len(batch))
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._busy += 1
            self._cond.notify_all()  # room in the queue for waiting submitters
            return batch

    def _take_same(self, key: tuple[int, ...], limit: int) -> list[_Job]:
        taken = [job for job in self._queue if job.key == key][:limit]
        for job in taken:
            self._queue.remove(job)
        return taken

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        t0 = time.perf_counter()
        try:
            if live:
                self._resolve(live)
        finally:
            with self._cond:
                self._busy -= 1
                if live:
                    per_film = (time.perf_counter() - t0) / len(live)
                    self._film_seconds = 0.8 * self._film_seconds + 0.2 * per_film
                self.batches = [*self.batches[-999:], len(live)]
                if self.idle_trim_s is not None:
                    self._trim_due, self._last_done = True, time.monotonic()
                    self._cond.notify_all()  # idle workers start the idle clock from now

    @staticmethod
    def _resolve(jobs: list[_Job]) -> None:
        first = jobs[0]
        try:
            results = analyze_films([job.gray for job in jobs], first.predictors, first.segmenter)
        except Exception as exc:
            if len(jobs) == 1:
                first.future.set_exception(exc)
                return
            log.warning("a batch of %d films failed (%s); running them one by one", len(jobs), exc)
            for job in jobs:  # one bad film must not fail the others
                InferenceExecutor._resolve([job])
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the queued films, then stop the workers (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
