"""API latency of POST /api/v1/predictions next to the bare model forward and decode.

Starts `cxr-review serve` (live uvicorn) on a free local port with a temporary data dir and the
bundled default model, creates a reviewer and token with the CLI, then measures:

  decode          ml.imageio.decode_image of the JPEG (in this process)
  lung mask       LungSegmenter.predict_small (the service segments every upload for lung focus)
  forward         Predictor.predict_one on the decoded film (in this process, same torch threads)
  api sequential  one client, POST /api/v1/predictions (upload, decode, forward, files, DB, JSON);
                  every upload is made unique (bytes after the JPEG end marker), so none is deduplicated
  api 8 clients   8 threads posting at once (per-request latency and throughput)

Target: sequential API p50 <= 1.3 x (forward p50 + lung mask p50 + decode p50). The machine may be
shared (e.g. with a training run); the load average is printed so the numbers can be read in context.

Usage: python bench/api_latency.py [--requests 40] [--concurrency 8] [--image PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _live import Uploader, default_image, live_server, percentile  # bench/ is the script's directory


def summary(values_s: list[float]) -> tuple[float, float, float]:
    ms = [v * 1000.0 for v in values_s]
    return percentile(ms, 0.5), percentile(ms, 0.95), statistics.fmean(ms)


def measure_in_process(data: bytes, n: int, threads: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds per decode, per lung mask (segmenter) and per forward with all-class CAMs."""
    import torch

    from ml.imageio import decode_image
    from ml.inference import Predictor
    from ml.lungseg import LungSegmenter

    torch.set_num_threads(threads)
    predictor = Predictor.from_checkpoint()
    segmenter = LungSegmenter.from_checkpoint()
    decoded = decode_image(data, max_pixels=40_000_000)
    for _ in range(3):
        predictor.predict_one(decoded.gray, segmenter.predict_small(decoded.gray))
    decode_s, lungs_s, forward_s = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        decoded = decode_image(data, max_pixels=40_000_000)
        t1 = time.perf_counter()
        mask = segmenter.predict_small(decoded.gray)
        t2 = time.perf_counter()
        predictor.predict_one(decoded.gray, mask)
        t3 = time.perf_counter()
        decode_s.append(t1 - t0)
        lungs_s.append(t2 - t1)
        forward_s.append(t3 - t2)
    return decode_s, lungs_s, forward_s


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
        with live_server(env, Path(tmp) / "server.log") as server:
            uploader = Uploader(server.base_url, server.token, data, image.name)
            with uploader.client() as client:
                for _ in range(3):
                    uploader.post(client)  # warm-up (first overlays, caches, lazy imports)
                sequential = [uploader.post(client) for _ in range(args.requests)]
            concurrent, wall = uploader.run(args.concurrency, args.concurrency * args.per_client)
        decode_s, lungs_s, forward_s = measure_in_process(data, args.requests, args.torch_threads)

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
        ("lung mask (in process)", lungs_s),
        ("forward + CAM (in process)", forward_s),
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
    budget = 1.3 * (summary(forward_s)[0] + summary(lungs_s)[0] + summary(decode_s)[0])
    api_p50 = summary(sequential)[0]
    verdict = "PASS" if api_p50 <= budget else "FAIL"
    print(f"target: API p50 {api_p50:.1f} ms <= 1.3 x (forward + mask + decode) p50 = {budget:.1f} ms -> {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
