"""Fixtures of the browser tests: a live uvicorn server and headless Debian Chromium driven by Playwright.

The server runs in its own process (`uvicorn --factory app.main:create_app`) on a free local port
with a temp data dir, the bundled model plus a small untrained CNN-X (so "compare all models" has
two rows) and a reviewer created through `app.services.accounts` before it starts. Chromium is
Debian's (/usr/bin/chromium, installed by `make install` via scripts/install-system-deps.sh); no
browser is ever downloaded. Its absence fails the test with the fix, it is not skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.config import Settings
from app.main import build_context
from app.services import accounts
from tests.app.conftest import Film, films  # noqa: F401  (films: the shared fixture, one film per source)
from tests.support.checkpoints import write_untrained_cnnx

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS_COPY_DIR = Path(os.environ.get("CXR_UI_SHOTS_DIR", "/tmp/ui-shots"))
"""Screenshots are also copied here, where a person (or an agent) can look at them after a run."""
SERVER_START_SECONDS = 180


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    username: str
    password: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode} before answering:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    pytest.fail(f"the server did not answer within {SERVER_START_SECONDS} s:\n{log.read_text()[-4000:]}")


@contextmanager
def spawned(args: list[str], env: dict[str, str], log: Path, *, stop_timeout: float) -> Iterator[str]:
    """Start `python <args> --host 127.0.0.1 --port <free>` (output to `log`), yield its URL once it
    answers, terminate it on exit (kill after `stop_timeout` seconds)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_server(data_dir: Path, *, extra_models: bool = True, **env_settings: str) -> Iterator[LiveServer]:
    """A live server on `data_dir` (the bundled model, plus an untrained CNN-X when `extra_models`) with
    a reviewer; `env_settings` are further CXR_* variables, e.g. CXR_LUNG_FOCUS_THRESHOLD="1.0"."""
    if extra_models:
        write_untrained_cnnx(data_dir / "models" / "cnnx-untrained.pt")
    settings = Settings(data_dir=data_dir, env="development").prepared()
    ctx = build_context(settings, announce=lambda _line: None)  # migrate, register models, bootstrap admin
    username, password = "dr.reader", "reading room 4"
    with ctx.session_factory() as session:
        accounts.create_user(session=session, username=username, password=password, role="reviewer")
    ctx.close()

    env = {
        **os.environ,
        "CXR_DATA_DIR": str(data_dir),
        "CXR_ENV": "development",
        "PYTHONUNBUFFERED": "1",
        # The tests written before film-first reading judge the heat map straight away; the reading-mode
        # tests (test_reading_modes.py) ask for film_first, the service's default.
        "CXR_READING_MODE": "ai_first",
        **env_settings,
    }
    args = ["-m", "uvicorn", "--factory", "app.main:create_app"]
    with spawned(args, env, data_dir / "server.log", stop_timeout=15) as url:
        yield LiveServer(url=url, data_dir=data_dir, username=username, password=password)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("browser-data")) as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (make install, or apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Shots:
    """Screenshots into the test's temp dir, copied to SHOTS_COPY_DIR as well."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    def take(self, page: Any, name: str, *, full_page: bool = False) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.taken.append(path)
        try:
            SHOTS_COPY_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SHOTS_COPY_DIR / path.name)
        except OSError:  # the copy is a convenience; the test's own folder holds the screenshots
            pass
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return Shots(folder)


VIEWPORT = {"width": 1600, "height": 1000}


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context and page; `page.errors` collects script errors, `page.failed` 4xx/5xx replies."""
    context = chromium.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(60_000)  # a shared CPU: the first overlays render while the model runs elsewhere
    errors: list[str] = []
    failed: list[tuple[int, str]] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: failed.append((r.status, urlsplit(r.url).path)) if r.status >= 400 else None)
    page.errors, page.failed = errors, failed
    try:
        yield page
    finally:
        context.close()


def log_in(
    page: Any, server: LiveServer, path: str = "/worklist", username: str | None = None, password: str | None = None
) -> None:
    """Open `path`, log in on the page it sends to (the server's reviewer unless told), land on `path`."""
    page.goto(f"{server.url}{path}")
    page.fill("input[name=username]", username or server.username)
    page.fill("input[name=password]", password or server.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(f"{server.url}{path}")))


def upload_case(chromium: Any, server: LiveServer, film: Path) -> int:
    """Upload `film` through the upload page (the active model) as the server's reviewer; the case id."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        log_in(page, server, "/upload")
        page.set_input_files("input[type=file]", str(film))
        page.click("#upload-form button[type=submit]")
        page.wait_for_url(re.compile(r"/cases/\d+$"))
        found = re.search(r"/cases/(\d+)", page.url)
        assert found is not None, page.url
        return int(found.group(1))
    finally:
        context.close()
