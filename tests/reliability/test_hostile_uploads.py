"""Hostile, broken and unusual uploads against a live server: the right 4xx with a clear message, or a
correct prediction; never a 5xx, never a half-written record, and the server stays up.

The server runs with CXR_MAX_UPLOAD_BYTES=8 MiB and CXR_MAX_PIXELS=20 MP (both below the defaults),
so the files between the two limits show that the limits are settings. After every case the
process must still answer /health; after a refused one the rows and files must be exactly as before;
after an accepted one the decoded film must be the expected one and, where it is exact, the
probabilities those of the same film uploaded as a plain PNG.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, text

from tests.app.conftest import Film
from tests.reliability import corpus
from tests.reliability.support import Account, LiveServer, audit, content_files, prepare

TABLES = ("images", "predictions", "prediction_results", "verdicts")


@dataclass
class Target:
    server: LiveServer
    engine: Engine
    reviewer: Account
    http: httpx.Client
    references: dict[bytes, dict[str, float]]

    def state(self) -> tuple[Any, ...]:
        with self.engine.connect() as conn:
            counts = tuple(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES)
        return counts, content_files(self.server.data_dir)

    def reference_probabilities(self, film: np.ndarray) -> dict[str, float]:
        """Probabilities of `film` uploaded as a plain 8-bit PNG (cached per film)."""
        key = film.tobytes() + bytes(film.shape[0].to_bytes(4, "big"))
        if key not in self.references:
            r = self.http.post(
                "/api/v1/predictions", files={"file": ("reference.png", corpus.encode(Image.fromarray(film), "PNG"))}
            )
            assert r.status_code == 201, r.text
            self.references[key] = r.json()["results"][0]["probabilities"]
        return self.references[key]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data_dir = tmp_path_factory.mktemp("hostile")
    made = prepare(data_dir, None, {"reader": "reviewer"})
    live = LiveServer(
        data_dir,
        env={"CXR_MAX_UPLOAD_BYTES": str(corpus.MAX_UPLOAD_BYTES), "CXR_MAX_PIXELS": str(corpus.MAX_PIXELS)},
    ).start()
    engine = live.engine()
    try:
        with httpx.Client(base_url=live.url, headers=made["reader"].headers, timeout=120) as http:
            yield Target(live, engine, made["reader"], http, {})
    finally:
        engine.dispose()
        live.stop()


@pytest.fixture(scope="module")
def uploads(films: dict[str, Film]) -> dict[str, corpus.Upload]:
    return {u.name: u for u in corpus.build(films["kermany"].data)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:  # names only: the corpus is built again from the real film per module
        metafunc.parametrize("case", [u.name for u in corpus.build(corpus.encode(Image.linear_gradient("L"), "JPEG"))])


def send(target: Target, upload: corpus.Upload) -> httpx.Response:
    req = dict(upload.request)
    if "body" in req:
        return target.http.post("/api/v1/predictions", **req.pop("body")())
    if "content" in req or "json" in req:
        return target.http.post("/api/v1/predictions", **req)
    if "data" in req:
        return target.http.post("/api/v1/predictions", data=req["data"])
    data = upload.data() if callable(upload.data) else upload.data
    files = {req.get("field", "file"): (upload.filename, data, req.get("content_type", "application/octet-stream"))}
    return target.http.post("/api/v1/predictions", files=files, data=req.get("form"))


def test_the_corpus_is_large_and_covers_the_issue(uploads: dict[str, corpus.Upload]) -> None:
    refused = [u for u in uploads.values() if u.status >= 400]
    assert len(uploads) >= 30 and len(refused) >= 30
    names = " ".join(uploads).lower()
    for needed in (
        "zero bytes", "pdf", "truncated jpeg", "truncated png", "bomb", "16-bit", "rgba", "palette", "cmyk",
        "animated gif", "svg", "dicom without pixel data", "monochrome1", "multi-frame", "50 mb",
        "wrong field name", "unicode", "path traversal",
    ):  # fmt: skip
        assert needed in names, needed


def test_upload(target: Target, uploads: dict[str, corpus.Upload], case: str) -> None:
    upload = uploads[case]
    before = target.state()
    r = send(target, upload)
    assert target.server.alive(), target.server.log_tail()
    assert target.http.get("/api/v1/health").status_code == 200
    assert r.status_code == upload.status, f"{case}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()

    if upload.status >= 400:
        detail = body["detail"]
        message = (
            detail
            if isinstance(detail, str)
            else " ".join(str(e.get("msg", "")) + str(e.get("loc", "")) for e in detail)
        )
        for word in upload.words:
            assert word in message.lower(), f"{case}: {word!r} not in {message!r}"
        assert target.state() == before, f"{case}: rows or files changed by a refused upload"
        return

    counts_before, _ = before
    counts_after, _ = target.state()
    assert counts_after[1] == counts_before[1] + 1  # one prediction
    assert counts_after[2] == counts_before[2] + 1  # with one result
    assert counts_after[3] == counts_before[3]
    stored = body["filename"]
    if upload.stored_filename is not None:
        assert stored == upload.stored_filename
    assert stored is None or (len(stored) <= 255 and not any(c in stored for c in "/\\\0\r\n\t\x1b\x7f"))

    film = np.asarray(Image.open(io.BytesIO(target.http.get(body["image_url"]).content)))
    assert upload.film is not None
    assert film.shape == upload.film.shape, f"{case}: decoded {film.shape}, expected {upload.film.shape}"
    assert np.abs(film.astype(int) - upload.film.astype(int)).max() <= upload.tolerance, case
    probabilities = body["results"][0]["probabilities"]
    assert list(probabilities) == ["normal", "bacterial", "viral", "covid19"]
    assert abs(sum(probabilities.values()) - 1.0) < 1e-4
    if upload.reference:
        reference = target.reference_probabilities(upload.film)
        assert probabilities == pytest.approx(reference, abs=1e-5), case


def test_store_is_consistent_and_nothing_escaped_the_data_dir(target: Target) -> None:
    """After the whole corpus (runs last in this module): rows and files agree, no file was written
    under a name taken from the upload, and the server logged no unhandled error."""
    assert audit(target.engine, target.server.data_dir) == []
    names = {p.name for p in target.server.data_dir.rglob("*")}
    assert not names & {"passwd.png", "passwd", "win.ini.png", "x.png"}
    log = target.server.log_tail(200_000)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
