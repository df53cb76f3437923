"""Helpers of the reliability tests: a live server in its own process, accounts made before it starts,
small distinct films, and a consistency audit of the database and the data dir.

`LiveServer` runs `uvicorn --factory app.main:create_app` (the web process only: no training worker)
on a free 127.0.0.1 port with CXR_TORCH_THREADS=1, so tests can load it with real HTTP clients,
`kill()` it with SIGKILL mid-write and `start()` it again on the same data dir and database.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, text

from app.config import Settings
from app.db import make_engine
from app.main import build_context
from app.services import accounts
from app.services.storage import is_sha256

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER_START_SECONDS = 240  # a cold start imports torch and hashes the bundled checkpoint; the CPU may be shared
PASSWORD = "reliable horse battery"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Account:
    username: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def prepare(data_dir: Path, database_url: str | None, users: dict[str, str]) -> dict[str, Account]:
    """Migrate, register the bundled model and create `users` (name → role), each with an API token."""
    settings = Settings(data_dir=data_dir, database_url=database_url, env="development").prepared()
    ctx = build_context(settings, announce=lambda _line: None)
    made = {}
    try:
        with ctx.session_factory() as session:
            for name, role in users.items():
                user = accounts.create_user(session=session, username=name, password=PASSWORD, role=role)
                made[name] = Account(name, role, accounts.create_api_token(session=session, user=user).token)
    finally:
        ctx.close()
    return made


@dataclass
class LiveServer:
    data_dir: Path
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / f"server-{self.starts}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> LiveServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        self.starts += 1
        env = {
            **os.environ,
            "CXR_DATA_DIR": str(self.data_dir),
            "CXR_ENV": "development",
            "CXR_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        env.pop("CXR_DATABASE_URL", None)
        if self.database_url:
            env["CXR_DATABASE_URL"] = self.database_url
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode} before answering:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the server did not answer within {SERVER_START_SECONDS} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no rollback; what the OS keeps is all there is."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def engine(self) -> Engine:
        return make_engine(self.database_url or f"sqlite:///{self.data_dir / 'cxr-review.sqlite3'}")


def film_png(seed: int, size: int = 128) -> bytes:
    """A small film-like 8-bit PNG (two bright 'lungs' on a dark field plus noise); distinct bytes per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size), 40.0)
    for cx in (0.32, 0.68):
        inside = ((xx - cx * size) / (0.16 * size)) ** 2 + ((yy - 0.5 * size) / (0.3 * size)) ** 2 < 1
        img[inside] = 150 + 40 * rng.random()
    img += rng.normal(0, 12, size=img.shape)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ audit
CONTENT_FOLDERS = ("images", "cams", "masks")


def content_files(data_dir: Path) -> list[Path]:
    return sorted(p for f in CONTENT_FOLDERS for p in (data_dir / f).rglob("*") if p.is_file())


def audit(engine: Engine, data_dir: Path) -> list[str]:
    """Every inconsistency between rows and files; [] when the store is whole.

    Rows: every verdict belongs to an existing result of its own prediction and model; every
    prediction has an image and at least one result. Files: every image row has its original (its
    decoded film's PNG may be there too: it is derived on first read), every result its CAM file and
    its lung mask; every file under images/, cams/ and masks/ is named by a row (no orphans) and no
    temp file is left. SQLite: integrity_check and
    foreign_key_check are clean.
    """
    problems: list[str] = []
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            check = conn.execute(text("PRAGMA integrity_check")).scalars().all()
            if check != ["ok"]:
                problems.append(f"integrity_check: {check}")
            fk = conn.execute(text("PRAGMA foreign_key_check")).all()
            if fk:
                problems.append(f"foreign_key_check: {fk[:5]}")
        queries = {
            "verdict without its result/prediction": """
                SELECT v.id FROM verdicts v LEFT JOIN prediction_results r ON r.id = v.result_id
                WHERE r.id IS NULL OR r.prediction_id <> v.prediction_id OR r.model_id <> v.model_id""",
            "prediction without image row": """
                SELECT p.id FROM predictions p LEFT JOIN images i ON i.id = p.image_id WHERE i.id IS NULL""",
            "prediction without a result": """
                SELECT p.id FROM predictions p LEFT JOIN prediction_results r ON r.prediction_id = p.id
                WHERE r.id IS NULL""",
        }
        for label, sql in queries.items():
            ids = conn.execute(text(sql)).scalars().all()
            if ids:
                problems.append(f"{label}: {ids[:10]}")
        image_shas = set(conn.execute(text("SELECT sha256 FROM images")).scalars())
        cam_shas = set(conn.execute(text("SELECT cam_sha256 FROM prediction_results")).scalars())
        mask_shas = set(
            conn.execute(
                text("SELECT lung_mask_sha256 FROM prediction_results WHERE lung_mask_sha256 IS NOT NULL")
            ).scalars()
        )
    expected, allowed = set(), set()
    for sha in image_shas:
        expected.add(data_dir / "images" / sha[:2] / sha)
        allowed.add(data_dir / "images" / sha[:2] / f"{sha}.png")
    for sha in cam_shas:
        expected.add(data_dir / "cams" / sha[:2] / f"{sha}.npy")
    for sha in mask_shas:
        expected.add(data_dir / "masks" / sha[:2] / f"{sha}.png")
    present = set(content_files(data_dir))
    missing = sorted(expected - present)
    if missing:
        problems.append(f"files named by rows but missing: {[str(p) for p in missing[:5]]} ({len(missing)})")
    orphans = sorted(present - expected - allowed)
    if orphans:
        problems.append(f"files no row names (orphans or temp files): {[p.name for p in orphans[:5]]} ({len(orphans)})")
    bad_names = [p for p in present if not is_sha256(p.name.split(".", 1)[0])]
    if bad_names:
        problems.append(f"files not named by a content hash: {[str(p) for p in bad_names[:5]]}")
    return problems
