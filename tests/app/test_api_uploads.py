"""Bad uploads get a clear 4xx and leave nothing behind: no rows, no files."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest

from app.models import Image as ImageRow
from app.models import Prediction, PredictionResult
from tests.app.conftest import Env, Film


def state(env: Env) -> tuple:
    return (env.count(ImageRow), env.count(Prediction), env.count(PredictionResult), env.files("images", "cams"))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny but well-formed PNG whose header declares width×height (a decompression bomb's shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_FILES: dict[str, tuple[Callable[[Film], bytes], int, str]] = {
    "zero bytes": (lambda f: b"", 422, "empty"),
    "text renamed .png": (lambda f: b"this is not an image, just text\n" * 10, 415, "unsupported"),
    "html": (lambda f: b"<!doctype html><script>alert(1)</script>", 415, "unsupported"),
    "truncated JPEG": (lambda f: f.data[: len(f.data) // 3], 422, "truncated"),
    "JPEG header only": (lambda f: f.data[:20], 422, "JPEG"),
    "PNG bomb header": (lambda f: png_declaring(50_000, 50_000), 413, "megapixels"),
    "PNG with broken data": (lambda f: png_declaring(64, 64)[:40], 422, "PNG"),
    "DICM preamble only": (lambda f: b"\0" * 128 + b"DICM" + b"\x02\x00", 422, "DICOM"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused_with_a_clear_message_and_nothing_written(
    env: Env, films: dict[str, Film], case: str
) -> None:
    make, status, word = BAD_FILES[case]
    before = state(env)
    r = env.upload(make(films["kermany"]), name="xray.png")
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and word.lower() in detail.lower()
    assert state(env) == before


def test_missing_file_field_is_422_with_detail(env: Env) -> None:
    r = env.client.post("/api/v1/predictions", headers=env.auth("reviewer"), data={"models": "all"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "file"]


def test_upload_over_the_size_limit_is_413_and_nothing_written(
    make_env: Callable[..., Env], films: dict[str, Film]
) -> None:
    data = films["cohen"].data
    env = make_env(max_upload_bytes=len(data) - 1)
    before = state(env)
    r = env.upload(data)
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    assert state(env) == before
    # A body far over the limit is refused while streaming, before any parsing (framework limit).
    r = env.upload(data * 3)
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    # Exactly at the limit is fine.
    env2 = make_env(tmp_path_data := env.settings.data_dir, max_upload_bytes=len(data))
    assert tmp_path_data == env2.settings.data_dir
    assert env2.upload(data).status_code == 201


def test_pixel_limit_is_a_setting(make_env: Callable[..., Env], films: dict[str, Film]) -> None:
    film = films["hannover"]
    w, h = film.size
    env = make_env(max_pixels=w * h - 1)
    r = env.upload(film.data)
    assert r.status_code == 413 and "megapixels" in r.json()["detail"]
    assert state(env)[0:3] == (0, 0, 0)


def test_failed_database_write_removes_the_files_it_wrote(
    env: Env, films: dict[str, Film], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between writing files and committing rows must not leave orphans (nor half rows)."""
    from sqlalchemy.orm import Session

    before = state(env)
    real_commit = Session.commit

    def failing_commit(self: Session) -> None:
        if any(isinstance(o, PredictionResult) for o in self.new):
            raise RuntimeError("simulated database failure")
        real_commit(self)

    monkeypatch.setattr(Session, "commit", failing_commit)
    fresh = films["hannover"].data + b"\0"  # new bytes → a new content address (JPEG ignores trailing bytes)
    with pytest.raises(RuntimeError, match="simulated"):
        env.upload(fresh)
    monkeypatch.undo()
    assert state(env) == before
    assert env.upload(fresh).status_code == 201  # and the same upload works once the database does
