"""The inference executor (app.services.executor): micro-batches give the single-film results, uploads
under concurrent load give the sequential results, and a full queue answers 503 with Retry-After
with nothing written. Real bundled models and real films throughout (nothing here is timed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from app.models import Image, Prediction
from app.services.errors import OverloadedError
from app.services.executor import InferenceExecutor
from ml.imageio import decode_image
from ml.inference import FilmResult, Predictor, analyze_film
from ml.lungseg import LungSegmenter
from tests.app.conftest import Env, EnvFactory, Film, png_bytes


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint()


@pytest.fixture(scope="module")
def segmenter() -> LungSegmenter:
    return LungSegmenter.from_checkpoint()


@pytest.fixture(scope="module")
def grays(films: dict[str, Film]) -> list[np.ndarray]:
    """Six distinct real films: the three sources and their mirror images."""
    base = [decode_image(f.data, max_pixels=40_000_000).gray for f in films.values()]
    return base + [np.ascontiguousarray(g[:, ::-1]) for g in base]


def assert_same_result(got: FilmResult, want: FilmResult) -> None:
    """Same mask, class, probabilities and maps (a batch's convolutions may round the last float bits)."""
    assert np.array_equal(got.lung_mask, want.lung_mask)
    for g, w in zip(got.predictions, want.predictions, strict=True):
        assert g.predicted_class == w.predicted_class
        assert g.probabilities == pytest.approx(w.probabilities, abs=1e-5)
        np.testing.assert_allclose(g.cam_raw, w.cam_raw, rtol=1e-4, atol=1e-5)


def test_micro_batches_give_the_single_film_results(
    grays: list[np.ndarray], predictor: Predictor, segmenter: LungSegmenter
) -> None:
    executor = InferenceExecutor(workers=1, max_batch=4, max_wait_ms=200, max_queue=16)
    try:
        futures = executor.submit(grays, [predictor], segmenter)
        results = [f.result(timeout=300) for f in futures]
    finally:
        executor.close()
    assert sorted(executor.batches) == [2, 4]  # six films queued at once: one full batch, then the rest
    for gray, result in zip(grays, results, strict=True):
        assert_same_result(result, analyze_film(gray, [predictor], segmenter))


def wait_for(condition: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_idle_executor_gives_its_heap_back_once_per_idle_spell(
    grays: list[np.ndarray], predictor: Predictor, segmenter: LungSegmenter
) -> None:
    executor = InferenceExecutor(workers=2, max_batch=4, idle_trim_s=0.3)
    try:
        assert executor.trims == 0 and not wait_for(lambda: executor.trims > 0, 1.0)  # no work yet: nothing to give
        executor.run(grays[:3], [predictor], segmenter)
        assert wait_for(lambda: executor.trims == 1)
        assert not wait_for(lambda: executor.trims > 1, 1.0)  # once per idle spell, by one of the two workers
        executor.run(grays[:1], [predictor], segmenter)
        assert wait_for(lambda: executor.trims == 2)
    finally:
        executor.close()


def test_films_closer_together_than_the_idle_time_are_never_slowed_by_a_trim(
    grays: list[np.ndarray], predictor: Predictor, segmenter: LungSegmenter
) -> None:
    executor = InferenceExecutor(workers=1, idle_trim_s=30.0)
    never = InferenceExecutor(workers=1, idle_trim_s=None)  # CXR_INFERENCE_IDLE_TRIM_SECONDS=0
    try:
        for gray in grays:
            executor.run([gray], [predictor], segmenter)
            never.run([gray], [predictor], segmenter)
        assert executor.trims == 0
        assert not wait_for(lambda: never.trims > 0, 1.0)
        with pytest.raises(ValueError, match="idle_trim_s"):
            InferenceExecutor(idle_trim_s=0)
    finally:
        executor.close()
        never.close()


class BlockingSegmenter:
    """A real segmenter whose films wait for `release` first: keeps a worker busy on cue."""

    def __init__(self, segmenter: LungSegmenter) -> None:
        self.segmenter, self.release = segmenter, threading.Event()
        self.checkpoint_sha256 = segmenter.checkpoint_sha256

    def predict_small(self, gray: np.ndarray) -> np.ndarray:
        assert self.release.wait(timeout=300)
        return self.segmenter.predict_small(gray)


@pytest.fixture
def small_queue(make_env: EnvFactory) -> Iterator[Env]:
    yield make_env(inference_workers=1, inference_queue_films=1)


def test_a_full_queue_answers_503_with_retry_after_and_nothing_is_written(
    small_queue: Env, films: dict[str, Film], grays: list[np.ndarray], predictor: Predictor
) -> None:
    env = small_queue
    executor: InferenceExecutor = env.app.state.ctx.executor
    blocker = BlockingSegmenter(env.app.state.ctx.models.segmenter())
    busy: list[Any] = executor.submit(grays[:1], [predictor], blocker)  # type: ignore[arg-type]
    while executor.queued:  # the worker has taken it and waits
        threading.Event().wait(0.01)
    busy += executor.submit(grays[1:2], [predictor], blocker)  # type: ignore[arg-type]  # the queue is full
    files_before = env.files("images", "cams", "masks")
    try:
        r = env.upload(films["cohen"].data)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1 and "queue is full" in r.json()["detail"]
        assert env.count(Prediction) == 0 and env.count(Image) == 0
        assert env.files("images", "cams", "masks") == files_before == []
        with pytest.raises(OverloadedError):
            executor.submit(grays[2:3], [predictor], None)
    finally:
        blocker.release.set()
    assert all(f.result(timeout=300).predictions for f in busy)
    r = env.upload(films["cohen"].data)  # the same request, retried once there is room
    assert r.status_code == 201, r.text


def test_an_upload_waiting_in_the_queue_holds_no_database_connection(
    small_queue: Env, films: dict[str, Film], grays: list[np.ndarray], predictor: Predictor
) -> None:
    """Uploads queued behind a long backlog (models=all under load) must not exhaust the pool."""
    env = small_queue
    ctx = env.app.state.ctx
    blocker = BlockingSegmenter(ctx.models.segmenter())
    busy = ctx.executor.submit(grays[:1], [predictor], blocker)
    while ctx.executor.queued:
        threading.Event().wait(0.01)
    reply: list[Any] = []
    upload = threading.Thread(target=lambda: reply.append(env.upload(films["cohen"].data)))
    upload.start()
    try:
        while not ctx.executor.queued:  # the upload's film is in the queue
            threading.Event().wait(0.01)
        assert ctx.engine.pool.checkedout() == 0
    finally:
        blocker.release.set()
        upload.join(timeout=300)
    assert busy[0].result(timeout=300).predictions and reply[0].status_code == 201, reply


def test_uploads_under_concurrent_load_give_the_sequential_results(
    make_env: EnvFactory, films: dict[str, Film], grays: list[np.ndarray]
) -> None:
    env = make_env(inference_workers=1, inference_batch_size=4, inference_batch_wait_ms=50)
    uploads = [png_bytes(g) for g in grays]
    sequential = [env.upload(data).json() for data in uploads]
    replies: list[Any] = [None] * (2 * len(uploads))
    start = threading.Barrier(len(replies))

    def client(i: int) -> None:
        start.wait()
        replies[i] = env.upload(uploads[i % len(uploads)])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(replies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    executor: InferenceExecutor = env.app.state.ctx.executor
    assert max(executor.batches) > 1  # the concurrent uploads did share batches
    store = env.app.state.ctx.store
    for i, r in enumerate(replies):
        assert r.status_code == 201, r.text
        got, want = r.json()["results"][0], sequential[i % len(uploads)]["results"][0]
        assert got["predicted_class"] == want["predicted_class"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert got["lung_focus"]["score"] == pytest.approx(want["lung_focus"]["score"], abs=1e-4)
    with env.session() as s:
        cams: dict[str, list[np.ndarray]] = {}
        for p in s.query(Prediction).all():
            cams.setdefault(p.image.sha256, []).append(store.read_cam(p.results[0].cam_sha256))
    assert len(cams) == len(uploads)
    for maps in cams.values():
        assert len(maps) == 3
        for m in maps[1:]:
            np.testing.assert_allclose(m, maps[0], rtol=1e-4, atol=1e-5)


def test_the_film_png_is_derived_on_first_read_and_matches_the_decoded_upload(env: Env, films: dict[str, Film]) -> None:
    data = films["kermany"].data
    r = env.upload(data)
    assert r.status_code == 201, r.text
    sha = r.json()["image_sha256"]
    store = env.app.state.ctx.store
    assert not store.gray_path(sha).exists()  # not written on upload
    png = env.client.get(r.json()["image_url"], headers=env.auth("reviewer"))
    assert png.status_code == 200 and store.gray_path(sha).is_file()
    import io

    with PILImage.open(io.BytesIO(png.content)) as img:
        assert np.array_equal(np.asarray(img), decode_image(data, max_pixels=40_000_000).gray)


def test_openapi_documents_the_uploads_503_with_retry_after(env: Env) -> None:
    responses = env.app.openapi()["paths"]["/api/v1/predictions"]["post"]["responses"]
    assert "queue is full" in responses["503"]["description"]
    assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
