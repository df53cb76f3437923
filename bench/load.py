"""Prediction service under load: throughput and latency at 1, 4 and 16 clients, memory over 1,000
predictions, and the time to compare every loaded model on one image.

Starts `cxr-review serve --no-worker` (live uvicorn, the web process only) on a free local port with
a temporary data dir, the bundled default model active and, in CXR_MODELS_DIR, one untrained
checkpoint per other registered architecture (weights do not change the cost of a forward pass, and
nothing is downloaded). Then, all against POST /api/v1/predictions with a 512-px Kermany JPEG made
unique per request (bytes after the JPEG end marker, so no upload is deduplicated):

  1. warm-up, then the server's RSS (VmRSS of its process, /proc/<pid>/status);
  2. 1, 4 and 16 concurrent clients: requests/s and p50/p95/p99 latency, default model only;
  3. more predictions until 1,000 since the warm-up, then RSS again: growth must stay within 10 %;
  4. `models=all` on one image (every registered model): cold (loads the weights) and warm.

The CPU may be shared (e.g. with a training run): the load average before and after is printed so the
figures can be read in context. Usage:
    python bench/load.py [--requests 1:60,4:120,16:320] [--total 1000] [--archs all|none|a,b]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _live import Uploader, default_image, live_server, percentile  # bench/ is the script's directory

START_TIMEOUT_S = 600
RSS_GROWTH_LIMIT = 0.10


def rss_mib(pid: int) -> float:
    """Resident set size of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine() -> str:
    mem_kib = next(
        int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
    )
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kib / 1024**2:.0f} GiB RAM, Python {platform.python_version()}"


def write_untrained_checkpoints(models_dir: Path, archs: list[str]) -> None:
    import torch

    from ml import CLASSES
    from ml.checkpoints import base_meta, save_checkpoint
    from ml.registry import get_arch

    models_dir.mkdir(parents=True, exist_ok=True)
    for name in archs:
        spec = get_arch(name)
        torch.manual_seed(0)
        meta = replace(base_meta(spec, input_size=spec.input_size, scenario_classes=CLASSES), name=f"{name}-untrained")
        save_checkpoint(models_dir / f"{name}-untrained.pt", spec.builder(False), meta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", default="1:60,4:120,16:320", help="clients:requests per phase")
    parser.add_argument("--total", type=int, default=1000, help="predictions between the two RSS readings")
    parser.add_argument("--archs", default="all", help="extra untrained models for compare-all: all, none or a,b")
    parser.add_argument("--compare-runs", type=int, default=3, help="warm compare-all repetitions")
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    phases = [tuple(int(x) for x in p.split(":")) for p in args.requests.split(",")]

    from ml.registry import get_arch, list_archs

    bundled_arch = "resnet18"
    archs = {"all": [a for a in list_archs() if a != bundled_arch], "none": []}.get(args.archs)
    if archs is None:
        archs = [get_arch(a).name for a in args.archs.split(",")]
    image = args.image or default_image()
    data = image.read_bytes()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="cxr-load-") as tmp:
        models_dir = Path(tmp) / "models"
        t0 = time.perf_counter()
        write_untrained_checkpoints(models_dir, archs)
        print(f"wrote {len(archs)} untrained checkpoints in {time.perf_counter() - t0:.0f} s", flush=True)
        env = {**os.environ, "CXR_DATA_DIR": tmp, "CXR_MODELS_DIR": str(models_dir), "CXR_TORCH_THREADS": "1"}
        with live_server(
            env, Path(tmp) / "server.log", extra_args=["--no-worker"], start_timeout_s=START_TIMEOUT_S
        ) as server:
            uploader = Uploader(server.base_url, server.token, data, image.name)
            rss_idle = rss_mib(server.process.pid)
            with uploader.client() as http:
                for _ in range(10):
                    uploader.post(http)
            rss_before = rss_mib(server.process.pid)
            counted_from = uploader.count

            rows = []
            for clients, n in phases:
                latencies, wall = uploader.run(clients, n)
                rows.append((clients, latencies, wall))
                print(f"  {clients:>2} clients: {n} requests in {wall:.0f} s", flush=True)
            remaining = args.total - (uploader.count - counted_from)
            if remaining > 0:
                uploader.run(8, remaining)
            done = uploader.count - counted_from
            rss_after = rss_mib(server.process.pid)

            with uploader.client() as http:
                n_models = len(http.get("/api/v1/models").json())
                cold = uploader.post(http, models="all")
                warm = [uploader.post(http, models="all") for _ in range(args.compare_runs)]
            rss_all = rss_mib(server.process.pid)
    load_after = os.getloadavg()

    from PIL import Image

    with Image.open(image) as img:
        size = img.size
    print()
    print(f"machine: {machine()}")
    print(
        f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}"
    )
    print(
        f"image: {image.name} {size[0]}x{size[1]} JPEG, {len(data) / 1024:.0f} KiB; default model: bundled "
        f"{bundled_arch}; CXR_TORCH_THREADS=1; server: cxr-review serve --no-worker (one uvicorn process)"
    )
    print()
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for clients, latencies, wall in rows:
        ms = [v * 1000 for v in latencies]
        print(
            f"{clients:>7} {len(ms):>8} {len(ms) / wall:>7.2f} {percentile(ms, 0.5):>8.0f} "
            f"{percentile(ms, 0.95):>8.0f} {percentile(ms, 0.99):>8.0f} {statistics.fmean(ms):>8.0f}"
        )
    growth = (rss_after - rss_before) / rss_before
    verdict = "PASS" if growth <= RSS_GROWTH_LIMIT else "FAIL"
    print()
    print(
        f"server RSS: {rss_idle:.0f} MiB idle after start, {rss_before:.0f} MiB after 10 warm-up predictions, "
        f"{rss_after:.0f} MiB after {done} more predictions: {growth * 100:+.1f} % "
        f"(limit +{RSS_GROWTH_LIMIT * 100:.0f} %) -> {verdict}"
    )
    print(
        f"compare all {n_models} models on one image (models=all): cold {cold:.1f} s (loads the weights), "
        f"warm median {statistics.median(warm):.1f} s over {len(warm)}; RSS with all models loaded {rss_all:.0f} MiB"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
