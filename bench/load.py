"""Prediction service under load, next to its in-process limit; memory over 1,000 predictions; the same
with `models=all`.

Starts `cxr-review serve --no-worker` (live uvicorn, the web process only) on a free local port with
a temporary data dir, the bundled default model active and, in CXR_MODELS_DIR, one untrained
checkpoint per other registered architecture (weights do not change the cost of a forward pass, and
nothing is downloaded). Every upload is a 512-px Kermany JPEG made unique per request (bytes after
the JPEG end marker, so no upload is deduplicated). In one run it prints:

  1. the in-process limit: films/s when an `InferenceExecutor` sized as the server's (workers x torch
     threads = the usable cores) is fed the decoded film directly, at each batch size; the best one
     is the limit (measured in this process while the server is idle, before and, for the default
     model, after the load: their mean is the limit, so a CPU shared with other work is compared
     like with like);
  2. 1, 4, 8, 16 and 32 concurrent clients: requests/s, p50/p95/p99 latency, throughput/limit;
  3. the server's RSS after a warm-up (a few lone uploads and one burst at the highest concurrency, so
     full batches have run once) and after 1,000 more predictions (growth must stay within 10 %), each
     read after the server has been idle for SETTLE_S (the reading at once is printed too);
  4. all of it again with `models=all` (every registered model on each film; fewer requests, and the
     RSS over --all-total predictions).

The CPU may be shared (e.g. with a training run): the load average before and after is printed, and
`taskset -c 0 python bench/load.py` pins the whole run (server included) to one core. Usage:
    python bench/load.py [--requests 1:40,4:80,8:120,16:160,32:200] [--total 1000] [--archs all|none|a,b]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from _live import Uploader, default_image, live_server, percentile  # bench/ is the script's directory

START_TIMEOUT_S = 600
RSS_GROWTH_LIMIT = 0.10
SETTLE_S = 3.0
"""Seconds idle before an RSS reading (more than the server's CXR_INFERENCE_IDLE_TRIM_SECONDS, 1 s)."""


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


def in_process_limit(
    data: bytes, archs: list[str] | None, models_dir: Path, batch_sizes: list[int], films: int
) -> dict[int, float]:
    """Films/s through an executor sized like the server's, fed the decoded film directly, per batch
    size. `archs=None`: the bundled model alone; else it plus the untrained checkpoints of `archs`."""
    import torch

    from app.config import Settings
    from app.services.executor import InferenceExecutor
    from ml.imageio import decode_image
    from ml.inference import Predictor
    from ml.lungseg import LungSegmenter

    torch.set_num_threads(1)
    decodes = []
    for _ in range(20):
        t0 = time.perf_counter()
        gray = decode_image(data, max_pixels=40_000_000).gray
        decodes.append(time.perf_counter() - t0)
    segmenter = LungSegmenter.from_checkpoint()
    predictors = [Predictor.from_checkpoint(segmenter=segmenter)]
    for arch in archs or []:
        predictors.append(Predictor.from_checkpoint(models_dir / f"{arch}-untrained.pt", segmenter=segmenter))
    workers = Settings(torch_threads=1).resolved_inference_workers
    limits = {0: 1 / statistics.median(decodes)}  # key 0: decodes/s (what a request adds before the queue)
    lone = InferenceExecutor(workers=workers, max_batch=1, torch_threads=1)
    try:  # key -1: one film alone through the executor, one after the other (a lone upload's own work)
        for _ in range(3):
            lone.run([gray], predictors, segmenter)
        singles = []
        for _ in range(20):
            t0 = time.perf_counter()
            lone.run([gray], predictors, segmenter)
            singles.append(time.perf_counter() - t0)
        limits[-1] = 1 / statistics.median(singles)
    finally:
        lone.close()
    for size in batch_sizes:
        executor = InferenceExecutor(workers=workers, max_batch=size, max_queue=max(films, size), torch_threads=1)
        try:
            for f in executor.submit([gray] * (workers * size), predictors, segmenter):
                f.result()  # warm-up
            t0 = time.perf_counter()
            for f in executor.submit([gray] * films, predictors, segmenter):
                f.result()
            limits[size] = films / (time.perf_counter() - t0)
        finally:
            executor.close()
    return limits


@dataclass
class Section:
    label: str
    limits: dict[int, float]
    rows: list[tuple[int, list[float], float]] = field(default_factory=list)
    rss_before: float = 0.0
    rss_after: float = 0.0
    rss_busy: float = 0.0
    done: int = 0

    @property
    def batches(self) -> dict[int, float]:
        return {k: v for k, v in self.limits.items() if k > 0}  # 0: decodes/s, -1: one film alone

    @property
    def limit(self) -> float:
        return max(self.batches.values())

    def report(self) -> bool:
        best = max(self.batches, key=lambda k: self.batches[k])
        sizes = ", ".join(f"batch {k}: {v:.2f}" for k, v in self.batches.items())
        print(f"\n{self.label}: in-process limit {self.limit:.2f} films/s (best batch size {best}; {sizes})")
        print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'/limit':>7}")
        for clients, latencies, wall in self.rows:
            ms = [v * 1000 for v in latencies]
            rate = len(ms) / wall
            print(
                f"{clients:>7} {len(ms):>8} {rate:>7.2f} {percentile(ms, 0.5):>8.0f} {percentile(ms, 0.95):>8.0f} "
                f"{percentile(ms, 0.99):>8.0f} {rate / self.limit:>6.0%}"
            )
        rates = {clients: len(lat) / wall for clients, lat, wall in self.rows}
        p50 = {clients: percentile([v * 1000 for v in lat], 0.5) for clients, lat, wall in self.rows}
        p99 = {clients: percentile([v * 1000 for v in lat], 0.99) for clients, lat, wall in self.rows}
        film_ms = 1000 / self.limits[0] + 1000 / self.limits[-1]  # decode + (mask + forward of one film alone)
        if 1 in rates:
            print(
                f"targets: 1-client p50 {p50[1]:.0f} ms vs 1.3 x (decode + mask + forward = {film_ms:.0f} ms) = "
                f"{1.3 * film_ms:.0f} ms -> {'PASS' if p50[1] <= 1.3 * film_ms else 'FAIL'}"
            )
            for c in (8, 16):
                if c in rates:
                    good = rates[c] >= 0.7 * self.limit and rates[c] >= rates[1]
                    print(
                        f"         {c} clients {rates[c] / self.limit:.0%} of the limit (>= 70 %) and "
                        f"{rates[c] / rates[1]:.2f} x the 1-client rate (>= 1) -> {'PASS' if good else 'FAIL'}"
                    )
        if 16 in p99:
            print(
                f"         16 clients p99 {p99[16]:.0f} ms = {p99[16] / p50[16]:.2f} x p50 (<= 3) -> "
                f"{'PASS' if p99[16] <= 3 * p50[16] else 'FAIL'}"
            )
        growth = (self.rss_after - self.rss_before) / self.rss_before
        ok = growth <= RSS_GROWTH_LIMIT
        print(
            f"server RSS {self.rss_before:.0f} MiB after the warm-up, {self.rss_after:.0f} MiB {SETTLE_S:.0f} s after "
            f"{self.done} more predictions ({self.rss_busy:.0f} MiB at once): {growth * 100:+.1f} % "
            f"(limit +{RSS_GROWTH_LIMIT * 100:.0f} %) -> {'PASS' if ok else 'FAIL'}"
        )
        return ok


def load_section(
    uploader: Uploader, pid: int, section: Section, phases: list[tuple[int, int]], total: int, models: str | None
) -> None:
    with uploader.client() as http:
        for _ in range(5):
            uploader.post(http, models=models)
    # and one burst at the highest concurrency: the executor's batches reach their full size once, so
    # the reading after it has the server's working set; growth past it is what accumulates
    top = max(clients for clients, _ in phases)
    uploader.run(top, top, models=models)
    time.sleep(SETTLE_S)
    section.rss_before = rss_mib(pid)
    counted_from = uploader.count
    for clients, n in phases:
        latencies, wall = uploader.run(clients, n, models=models)
        section.rows.append((clients, latencies, wall))
        print(f"  {section.label}: {clients:>2} clients, {n} requests in {wall:.0f} s", flush=True)
    remaining = total - (uploader.count - counted_from)
    if remaining > 0:
        uploader.run(8, remaining, models=models)
    section.done = uploader.count - counted_from
    section.rss_busy = rss_mib(pid)
    time.sleep(SETTLE_S)  # the executor gives its heaps back after CXR_INFERENCE_IDLE_TRIM_SECONDS idle
    section.rss_after = rss_mib(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", default="1:40,4:80,8:120,16:160,32:200", help="clients:requests per phase")
    parser.add_argument("--all-requests", default="1:4,4:8,8:16,16:32,32:64", help="the same, models=all")
    parser.add_argument("--total", type=int, default=1000, help="predictions between the two RSS readings")
    parser.add_argument("--all-total", type=int, default=150, help="the same, models=all")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="in-process limit: batch sizes tried")
    parser.add_argument("--limit-films", type=int, default=48, help="in-process limit: films per batch size")
    parser.add_argument("--archs", default="all", help="extra untrained models for models=all: all, none or a,b")
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    phases = [(int(c), int(n)) for c, n in (p.split(":") for p in args.requests.split(","))]
    all_phases = [(int(c), int(n)) for c, n in (p.split(":") for p in args.all_requests.split(","))]
    sizes = [int(x) for x in args.batch_sizes.split(",")]

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
        one = Section("default model", in_process_limit(data, None, models_dir, sizes, args.limit_films))
        print(f"in-process limit, default model: {one.limit:.2f} films/s", flush=True)
        every = Section(
            f"models=all ({len(archs) + 1} models)",
            in_process_limit(data, archs, models_dir, sizes[:2], max(4, args.limit_films // 8)),
        )
        print(f"in-process limit, models=all: {every.limit:.2f} films/s", flush=True)
        env = {**os.environ, "CXR_DATA_DIR": tmp, "CXR_MODELS_DIR": str(models_dir), "CXR_TORCH_THREADS": "1"}
        with live_server(
            env, Path(tmp) / "server.log", extra_args=["--no-worker"], start_timeout_s=START_TIMEOUT_S
        ) as server:
            uploader = Uploader(server.base_url, server.token, data, image.name)
            rss_idle = rss_mib(server.process.pid)
            load_section(uploader, server.process.pid, one, phases, args.total, None)
            load_section(uploader, server.process.pid, every, all_phases, args.all_total, "all")
        # Again after the load, so the ratios compare like with like on a CPU shared with other work.
        after = in_process_limit(data, None, models_dir, sizes, args.limit_films)
        one.limits = {k: (v + after[k]) / 2 for k, v in one.limits.items()}  # batch sizes, decode, lone film
        print(f"in-process limit, default model, after the load: {max(after[k] for k in sizes):.2f} films/s")
    load_after = os.getloadavg()

    from PIL import Image

    from app.config import Settings

    with Image.open(image) as img:
        size = img.size
    print()
    print(f"machine: {machine()}; usable cores {len(os.sched_getaffinity(0))}")
    print(
        f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}"
    )
    workers = Settings(torch_threads=1).resolved_inference_workers
    print(
        f"image: {image.name} {size[0]}x{size[1]} JPEG, {len(data) / 1024:.0f} KiB; default model: bundled "
        f"{bundled_arch}; server: cxr-review serve --no-worker (one uvicorn process), {workers} inference "
        f"worker(s) x CXR_TORCH_THREADS=1; idle RSS after start {rss_idle:.0f} MiB"
    )
    ok = [section.report() for section in (one, every)]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
