"""CPU cost of lung segmentation per image (target: <= 30 ms at 256x256 on the project's 2 cores).

Measures, at batch 1 after a warm-up, for each torch thread count asked for:
- `network`: the bundled LungUNet forward pass on one standardised 256x256 film (the budgeted cost);
- `predict`: `LungSegmenter.predict` on a real film at its own size (resize in, network, resize the
  probability back, threshold): what a caller pays per film.
Prints median, 10th and 90th percentiles of the wall time in milliseconds, the median CPU time of the
process per call, and the load average. On shared cores the wall time moves with whatever else is
running; with one thread the CPU time is what the image itself costs (with two threads it also counts
the worker threads' spin-waiting, so read the wall time there).

    .venv/bin/python bench/lungseg_speed.py [--runs 100] [--threads 1,2] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ml.lungseg import BUNDLED_LUNGSEG, LungSegmenter
from ml.lungseg.data import default_lungseg_dir
from ml.lungseg.model import standardize
from ml.transforms import load_grayscale


def real_film() -> tuple[np.ndarray, str]:
    """A full-size film from the classifier dataset (a Kermany film), else a lungseg image, else noise."""
    cxr = Path(os.environ.get("CXR_DATASET_DIR") or Path(__file__).resolve().parents[2] / "shared/data/cxr")
    films = (
        sorted((cxr / "images" / "kermany").glob("*.jpg"))[:1]
        or sorted((Path(default_lungseg_dir()) / "images").glob("*.png"))[:1]
    )
    if films:
        return load_grayscale(str(films[0])), films[0].name
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(1024, 1024), dtype=np.uint8), "synthetic noise"


def time_ms(fn: Callable[[], object], runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU milliseconds of each of `runs` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return wall, cpu


def summary(times: tuple[list[float], list[float]]) -> str:
    wall, cpu = times
    deciles = statistics.quantiles(wall, n=10)
    return (
        f"wall median {statistics.median(wall):7.1f} ms  p10 {deciles[0]:7.1f}  p90 {deciles[-1]:7.1f}   "
        f"CPU median {statistics.median(cpu):7.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(BUNDLED_LUNGSEG))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to measure")
    args = parser.parse_args()

    segmenter = LungSegmenter.from_checkpoint(args.checkpoint)
    film, name = real_film()
    params = sum(p.numel() for p in segmenter.model.parameters())
    size = segmenter.input_size
    print(f"checkpoint {args.checkpoint} ({Path(args.checkpoint).stat().st_size / 1e6:.2f} MB, {params:,} parameters)")
    print(f"film {name} {film.shape[1]}x{film.shape[0]}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    x = standardize(torch.from_numpy(film[:size, :size].copy())[None, None])
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").contiguous(
        memory_format=torch.channels_last
    )
    for threads in [int(t) for t in args.threads.split(",") if t.strip()]:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            net = time_ms(lambda: segmenter.model(x), args.runs, args.warmup)
        full = time_ms(lambda: segmenter.predict(film), max(10, args.runs // 2), args.warmup // 2)
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"threads {threads}  network {size}x{size} batch 1: {summary(net)}   (load avg {load})")
        print(f"threads {threads}  predict {film.shape[1]}x{film.shape[0]} film:   {summary(full)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
