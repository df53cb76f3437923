"""Content-addressed files under the data dir, written atomically.

Layout (sha = sha256 hex of the file's bytes):
    images/<sha[:2]>/<sha>          original upload bytes, exactly as received
    images/<sha[:2]>/<sha>.png      the decoded 8-bit grayscale film (what overlays are drawn on)
    cams/<sha[:2]>/<sha>.npy        raw CAM maps of one result, K×h×w float32 in CLASSES order
    masks/<sha[:2]>/<sha>.png       the film's lung mask (1-bit PNG, 256×256, the film squashed to a square)
    cache/overlays/<..>/<key>.png   rendered overlays; disposable, re-rendered when missing
    cache/thumbnails/<sha[:2]>/<sha>-<side>.jpg   worklist thumbnails of a film; disposable too

Files are written to a temp name and `os.replace`d into place before the database row that names
them is committed. A `WriteBatch` remembers what it newly created, so a failed commit can remove
exactly those files (if no committed row references them meanwhile). Existing files are never
rewritten: same name means same content.

A process killed between the two steps (kill -9, power loss) leaves files no row names. Every app
process holds `DataDirLock` shared; the one that starts while no other is alive gets it exclusively
and removes such leftovers (`FileStore.remove_unreferenced`) before it serves.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import tempfile
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SHA256_HEX_LEN = 64
LOCK_FILE = ".cxr-review.lock"
CONTENT_FOLDERS = ("images", "cams", "masks")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(text: str) -> bool:
    return len(text) == SHA256_HEX_LEN and all(c in "0123456789abcdef" for c in text)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` via a temp file + os.replace. False (and nothing written) if it exists."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself must be durable before a row names the file
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class WriteBatch:
    """Files created during one unit of work; `discard()` removes them after a failed commit."""

    store: FileStore
    created: list[Path] = field(default_factory=list)

    def put(self, path: Path, data: bytes) -> Path:
        if write_atomic(path, data):
            self.created.append(path)
        return path

    def discard(self, still_referenced: Callable[[Path], bool] = lambda _p: False) -> list[Path]:
        """Remove created files that no committed row references; returns what was removed."""
        removed = []
        for path in reversed(self.created):
            if still_referenced(path):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        self.created.clear()
        return removed


class DataDirLock:
    """An advisory lock (flock) on DATA_DIR/.cxr-review.lock.

    Every app process holds it shared while it runs. `try_exclusive()` succeeds only when no other
    live process holds it (the OS releases the lock of a killed process), i.e. when no upload can be
    between writing its files and committing its rows: the moment leftovers can be told apart.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._file = open(root / LOCK_FILE, "a+b")  # noqa: SIM115  (held for the app's lifetime)
        # An app that is dropped without its lifespan ending (tests, scripts) still closes the file
        # (and so drops the lock) when the lock object is collected, without a ResourceWarning.
        self._finalizer = weakref.finalize(self, self._file.close)

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def hold_shared(self) -> None:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_SH)

    def release(self) -> None:
        self._finalizer()  # closes the file, which drops the lock; idempotent


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------------
    def _sharded(self, folder: str, sha: str, suffix: str = "") -> Path:
        if not is_sha256(sha):
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        return self.root / folder / sha[:2] / f"{sha}{suffix}"

    def original_path(self, image_sha: str) -> Path:
        return self._sharded("images", image_sha)

    def gray_path(self, image_sha: str) -> Path:
        return self._sharded("images", image_sha, ".png")

    def cam_path(self, cam_sha: str) -> Path:
        return self._sharded("cams", cam_sha, ".npy")

    def mask_path(self, mask_sha: str) -> Path:
        return self._sharded("masks", mask_sha, ".png")

    def overlay_cache_path(self, key: str) -> Path:
        digest = sha256_bytes(key.encode("utf-8"))
        return self.root / "cache" / "overlays" / digest[:2] / f"{digest}.png"

    def thumbnail_path(self, image_sha: str, side: int) -> Path:
        return self._sharded("cache/thumbnails", image_sha, f"-{side}.jpg")

    # -- writing ----------------------------------------------------------------------------
    def batch(self) -> WriteBatch:
        return WriteBatch(self)

    def put_image(self, batch: WriteBatch, *, original: bytes, gray: np.ndarray) -> str:
        """Store the upload and its decoded film; returns the image sha256 (of the original bytes)."""
        sha = sha256_bytes(original)
        batch.put(self.original_path(sha), original)
        gray_path = self.gray_path(sha)
        if not gray_path.exists():  # same bytes, same film: skip the (costly) PNG encoding
            batch.put(gray_path, encode_png(gray))
        return sha

    def put_cam(self, batch: WriteBatch, cam_raw: np.ndarray) -> str:
        """Store raw CAM maps (K×h×w float32) as .npy; returns the sha256 of the .npy bytes."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(cam_raw, dtype=np.float32), allow_pickle=False)
        data = buf.getvalue()
        sha = sha256_bytes(data)
        batch.put(self.cam_path(sha), data)
        return sha

    def put_mask(self, batch: WriteBatch, mask: np.ndarray) -> str:
        """Store a lung mask (2-D bool) as a 1-bit PNG; returns the sha256 of the PNG bytes."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"lung mask must be a non-empty 2-D array, got shape {mask.shape}")
        buf = io.BytesIO()
        Image.fromarray(mask.astype(bool)).save(buf, format="PNG")  # mode "1": 8 KiB raw for 256×256
        data = buf.getvalue()
        sha = sha256_bytes(data)
        batch.put(self.mask_path(sha), data)
        return sha

    def put_cache(self, key: str, data: bytes) -> Path:
        path = self.overlay_cache_path(key)
        write_atomic(path, data)
        return path

    def remove_unreferenced(
        self, *, image_shas: Collection[str], cam_shas: Collection[str], mask_shas: Collection[str]
    ) -> list[Path]:
        """Remove content files no row names and temp files of interrupted writes; returns them.

        Only call while no other process can be writing (under `DataDirLock.try_exclusive`).
        Files whose names this store would never create are left alone.
        """
        doomed = list((self.root / "cache").rglob(".*.tmp"))
        for folder, keep in (("images", image_shas), ("cams", cam_shas), ("masks", mask_shas)):
            for path in (self.root / folder).glob("*/*"):
                sha = path.name.split(".", 1)[0]
                if _is_temp(path) or (is_sha256(sha) and sha not in keep):
                    doomed.append(path)
        removed = []
        for path in doomed:
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # -- reading ----------------------------------------------------------------------------
    def read_gray(self, image_sha: str) -> np.ndarray:
        with Image.open(self.gray_path(image_sha)) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)

    def read_cam(self, cam_sha: str) -> np.ndarray:
        return np.load(self.cam_path(cam_sha), allow_pickle=False)

    def read_mask(self, mask_sha: str) -> np.ndarray:
        """The stored lung mask as a 2-D bool array."""
        with Image.open(self.mask_path(mask_sha)) as img:
            return np.asarray(img.convert("L")) >= 128

    def read_cache(self, key: str) -> bytes | None:
        path = self.overlay_cache_path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None


def _is_temp(path: Path) -> bool:
    """A `write_atomic` temp file (`.<name>.<random>.tmp`)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def encode_png(gray: np.ndarray) -> bytes:
    # Level 1: ~5x faster than the default 6 for films, ~10-15 % larger; this runs on the upload path.
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
