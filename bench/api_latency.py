"""API latency of POST /api/v1/predictions next to the bare model forward and decode.

Starts `cxr-review serve` (live uvicorn) on a free local port with a temporary data dir and the
bundled default model, creates a reviewer and token with the CLI, then measures:

  decode          ml.imageio.decode_image of the JPEG (in this process)
  forward         Predictor.predict_one on the decoded film (in this process, same torch threads)
  api sequential  one client, POST /api/v1/predictions (upload, decode, forward, files, DB, JSON);
                  every upload is made unique (bytes after the JPEG end marker), so none is deduplicated
  api 8 clients   8 threads posting at once (per-request latency and throughput)

Target: sequential API p50 <= 2 x (forward p50 + decode p50). The machine may be shared (e.g. with
a training run); the load average is printed so the numbers can be read in context.

Usage: python bench/api_latency.py [--requests 40] [--concurrency 8] [--image PATH]
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values_s: list[float]) -> tuple[float, float, float]:
    ms = [v * 1000.0 for v in values_s]
    return percentile(ms, 0.5), percentile(ms, 0.95), statistics.fmean(ms)


def measure_in_process(data: bytes, n: int, threads: int) -> tuple[list[float], list[float]]:
    import torch

    from ml.imageio import decode_image
    from ml.inference import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor.from_checkpoint()
    decoded = decode_image(data, max_pixels=40_000_000)
    for _ in range(3):
        predictor.predict_one(decoded.gray)
    decode_s, forward_s = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        decoded = decode_image(data, max_pixels=40_000_000)
        t1 = time.perf_counter()
        predictor.predict_one(decoded.gray)
        t2 = time.perf_counter()
        decode_s.append(t1 - t0)
        forward_s.append(t2 - t1)
    return decode_s, forward_s


_unique = iter(range(1, 1 << 62))
_unique_lock = threading.Lock()


def post(client: httpx.Client, data: bytes, name: str) -> float:
    """One upload. A few bytes after the JPEG's end marker (ignored by decoders) make every upload a
    new content address, so each request pays for the full path: new files, new image row."""
    with _unique_lock:
        body = data + next(_unique).to_bytes(8, "big")
    t0 = time.perf_counter()
    r = client.post("/api/v1/predictions", files={"file": (name, body, "image/jpeg")})
    elapsed = time.perf_counter() - t0
    if r.status_code != 201:
        raise RuntimeError(f"POST /api/v1/predictions -> {r.status_code}: {r.text[:200]}")
    return elapsed


def run_concurrent(
    base: str, token: str, data: bytes, name: str, clients: int, per_client: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(clients)

    def worker() -> None:
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
                start.wait()
                for _ in range(per_client):
                    elapsed = post(c, data, name)
                    with lock:
                        latencies.append(elapsed)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return latencies, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="sequential requests (and in-process repeats)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=5, help="requests per concurrent client")
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--torch-threads", type=int, default=1, help="CXR_TORCH_THREADS for server and in-process")
    args = parser.parse_args()

    image = args.image or default_image()
    data = image.read_bytes()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        env = {**os.environ, "CXR_DATA_DIR": tmp, "CXR_TORCH_THREADS": str(args.torch_threads)}
        created = subprocess.run(
            [sys.executable, "-m", "app.cli", "users", "create", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        token = created.stdout.strip().splitlines()[-1]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read() if server.stderr else ''}")
                time.sleep(0.3)

            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
                for _ in range(3):
                    post(client, data, image.name)  # warm-up (first overlays, caches, lazy imports)
                sequential = [post(client, data, image.name) for _ in range(args.requests)]
            concurrent, wall = run_concurrent(base, token, data, image.name, args.concurrency, args.per_client)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        decode_s, forward_s = measure_in_process(data, args.requests, args.torch_threads)

    from PIL import Image

    with Image.open(image) as img:
        size = img.size
    load1, load5, _ = os.getloadavg()
    print(
        f"image: {image.name} {size[0]}x{size[1]} JPEG, {len(data) / 1024:.0f} KiB; model: bundled default; "
        f"torch threads {args.torch_threads}; CPUs {os.cpu_count()}; load average {load1:.1f} / {load5:.1f} (1/5 min)"
    )
    print(f"{'measurement':<32} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    rows = [
        ("decode (in process)", decode_s),
        ("forward (in process)", forward_s),
        ("POST /api/v1/predictions, 1 client", sequential),
        (f"POST, {args.concurrency} concurrent clients", concurrent),
    ]
    for label, values in rows:
        p50, p95, mean = summary(values)
        print(f"{label:<32} {len(values):>4} {p50:>9.1f} {p95:>9.1f} {mean:>9.1f}")
    print(
        f"throughput with {args.concurrency} clients: {len(concurrent) / wall:.2f} requests/s "
        f"(sequential: {1000 / summary(sequential)[2]:.2f} requests/s)"
    )
    budget = 2 * (summary(forward_s)[0] + summary(decode_s)[0])
    api_p50 = summary(sequential)[0]
    verdict = "PASS" if api_p50 <= budget else "FAIL"
    print(f"target: API p50 {api_p50:.1f} ms <= 2 x (forward + decode) p50 = {budget:.1f} ms -> {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
