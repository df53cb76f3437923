"""What the live-server benchmarks share: a test film, percentiles, and `cxr-review serve` on a free port
with a throwaway data dir and a bench token."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def default_image() -> Path:
    """The first Kermany film of the shared dataset whose longest side is 512 px."""
    from PIL import Image

    data_dir = Path(os.environ.get("CXR_DATASET_DIR") or ROOT.parent / "shared" / "data" / "cxr")
    with open(data_dir / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            path = data_dir / row["path"]
            if row["source"] == "kermany":
                with Image.open(path) as img:
                    if max(img.size) == 512 and img.format == "JPEG":
                        return path
    raise SystemExit(f"no 512-px Kermany JPEG found under {data_dir}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class LiveServer:
    base_url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def live_server(
    env: dict[str, str], log: Path, *, extra_args: Sequence[str] = (), start_timeout_s: float = 180
) -> Iterator[LiveServer]:
    """Create a `bench` user and token with the CLI, start `cxr-review serve` on a free port (output to
    `log`), wait until /api/v1/health answers, and stop the server on exit."""
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "create", "bench"],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    token = created.stdout.strip().splitlines()[-1]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "app.cli", "serve", *extra_args, "--port", str(port), "--log-level", "warning"]
    with log.open("w") as out:
        server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        try:
            yield LiveServer(base, token, server, log)
        except BaseException:
            print(f"server log (last 3,000 characters):\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


class Uploader:
    """Posts the film, each time with distinct trailing bytes (a new content address)."""

    def __init__(self, base: str, token: str, data: bytes, name: str) -> None:
        self.base, self.token, self.data, self.name = base, token, data, name
        self._next = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self.count = 0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=600)

    def post(self, http: httpx.Client, models: str | None = None) -> float:
        with self._lock:
            body = self.data + next(self._next).to_bytes(8, "big")
        t0 = time.perf_counter()
        r = http.post(
            "/api/v1/predictions",
            files={"file": (self.name, body, "image/jpeg")},
            data={"models": models} if models else None,
        )
        elapsed = time.perf_counter() - t0
        if r.status_code != 201:
            raise RuntimeError(f"POST /api/v1/predictions -> {r.status_code}: {r.text[:300]}")
        with self._lock:
            self.count += 1
        return elapsed

    def run(self, clients: int, total: int, models: str | None = None) -> tuple[list[float], float]:
        """`total` requests spread over `clients` threads; returns latencies and the wall time."""
        latencies: list[float] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(clients)
        quota = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

        def worker(n: int) -> None:
            try:
                with self.client() as http:
                    start.wait()
                    for _ in range(n):
                        elapsed = self.post(http, models=models)
                        with lock:
                            latencies.append(elapsed)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in quota]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return latencies, wall
