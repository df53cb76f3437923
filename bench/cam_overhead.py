"""CAM overhead: a bare forward pass next to a forward pass that also yields the maps of all four classes.

For each architecture (default: resnet18, densenet201, cnnx), on CPU, batch 1, at the architecture's
own input size, with random weights (timing does not depend on the weights):

  forward   model(x) under torch.no_grad()
  explain   ml.cam.explain(model, spec, x): the same forward, split into forward_features and
            forward_head, plus the four class maps (CAM, Grad-CAM or linear decomposition)

The two are timed alternately, iteration by iteration, so background load (a training run on a
shared machine) hits both alike. Medians are reported of wall-clock time and of the process's CPU
time: on a busy machine the CPU-time ratio is the trustworthy one, because wall time then also
counts the time the process waited for a core. Target: explain / forward <= 1.15.

Usage: python bench/cam_overhead.py [--archs resnet18,densenet201,cnnx] [--repeats 30] [--warmup 5]
                                    [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ml.cam import explain
from ml.registry import get_arch
from ml.transforms import load_grayscale, to_model_input

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.15
CLOCKS = ("wall", "cpu")


def sample_film() -> np.ndarray:
    """The first Kermany test film of the shared dataset, or a synthetic one when it is missing."""
    data_dir = Path(os.environ.get("CXR_DATASET_DIR") or ROOT.parent / "shared" / "data" / "cxr")
    manifest = data_dir / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["source"] == "kermany" and row["split"] == "test":
                    return load_grayscale(str(data_dir / row["path"]))
    print(f"(no dataset at {data_dir}: timing a synthetic film)")
    return np.random.default_rng(0).integers(0, 256, size=(512, 420), dtype=np.uint8)


def time_once(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, film: np.ndarray, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of forward and explain, and their ratio, per clock (`wall_…`, `cpu_…`)."""
    spec = get_arch(name)
    torch.manual_seed(0)
    model = spec.build(pretrained=False).eval()
    x = to_model_input([film], spec.input_size, spec.mean, spec.std)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def with_cams() -> None:
        explain(model, spec, x)

    for _ in range(warmup):
        forward()
        with_cams()
    fwd: list[tuple[float, float]] = []
    cam: list[tuple[float, float]] = []
    for i in range(repeats):
        # alternate which goes first, so neither always runs right after the other has warmed a cache
        pair = (forward, with_cams) if i % 2 else (with_cams, forward)
        for fn in pair:
            (fwd if fn is forward else cam).append(time_once(fn))
    result: dict[str, float] = {}
    for index, clock in enumerate(CLOCKS):
        f = statistics.median(t[index] for t in fwd)
        c = statistics.median(t[index] for t in cam)
        result |= {f"{clock}_forward_ms": 1000 * f, f"{clock}_explain_ms": 1000 * c, f"{clock}_ratio": c / f}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,densenet201,cnnx")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the service)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    film = sample_film()
    print(
        f"CPU, batch 1, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} timed runs "
        f"after {args.warmup} warm-up; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"{'':<14} {'':>5}  {'':<21} {'wall clock, median ms':^29}  {'CPU time, median ms':^29}")
    print(
        f"{'arch':<14} {'input':>5}  {'cam method':<21} "
        + f"{'forward':>9} {'explain':>9} {'ratio':>9}  " * len(CLOCKS)
    )
    worst = dict.fromkeys(CLOCKS, 0.0)
    for name in [a.strip() for a in args.archs.split(",") if a.strip()]:
        spec = get_arch(name)
        r = measure(name, film, args.repeats, args.warmup)
        cells = ""
        for clock in CLOCKS:
            worst[clock] = max(worst[clock], r[f"{clock}_ratio"])
            cells += f"{r[f'{clock}_forward_ms']:>9.1f} {r[f'{clock}_explain_ms']:>9.1f} {r[f'{clock}_ratio']:>8.3f}x  "
        print(f"{name:<14} {spec.input_size:>5}  {spec.cam_method:<21} {cells}", flush=True)
    print(f"load average now {os.getloadavg()[0]:.2f}")
    for clock in CLOCKS:
        verdict = "meets" if worst[clock] <= TARGET_RATIO else "misses"
        print(f"worst {clock} ratio {worst[clock]:.3f}x: {verdict} the {TARGET_RATIO:.2f}x target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
