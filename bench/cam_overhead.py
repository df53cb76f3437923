"""CAM overhead: a bare forward pass next to a forward pass that also yields the maps of all four classes.

For each architecture (default: resnet18, densenet201, cnnx), on CPU, batch 1, at the architecture's
own input size, with random weights (timing does not depend on the weights):

  forward   model(x) under torch.no_grad()
  explain   ml.cam.explain(model, spec, x): the same forward, split into forward_features and
            forward_head, plus the four class maps (CAM, Grad-CAM or linear decomposition)

Finer maps: for each ResNet among the architectures, `explain` (forward + the maps of all four classes)
of the normal network next to the same network with its last stage dilated (stride 1, dilation 2,
`ml.network`: 14×14 maps at 224 px instead of 7×7), and with `--train-step` one training step
(batch 8: forward, loss, backward) with cross-entropy alone and with the explanation loss added, normal
and dilated.

The pairs are timed alternately, iteration by iteration, so background load (a training run on a
shared machine) hits both alike. Medians are reported of wall-clock time and of the process's CPU
time: on a busy machine the CPU-time ratio is the trustworthy one, because wall time then also
counts the time the process waited for a core. Target: explain / forward <= 1.15.

Usage: python bench/cam_overhead.py [--archs resnet18,densenet201,cnnx] [--repeats 30] [--warmup 5]
                                    [--threads 1] [--train-step]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml import CLASSES
from ml.cam import explain
from ml.explanation import ExplainedObjective, ExplanationLoss, FeaturesAndLogits
from ml.network import DILATABLE_ARCHS, build_network
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


def alternate(first: Callable[[], object], second: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Median (wall ms, CPU ms) of `first`, then of `second`, timed alternately: [wall1, cpu1, wall2, cpu2]."""
    for _ in range(warmup):
        first()
        second()
    times: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    for i in range(repeats):
        # alternate which goes first, so neither always runs right after the other has warmed a cache
        for k in (0, 1) if i % 2 else (1, 0):
            times[k].append(time_once((first, second)[k]))
    return [1000 * statistics.median(t[c] for t in times[k]) for k in (0, 1) for c in (0, 1)]


def measure(name: str, film: np.ndarray, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of forward and explain, and their ratio, per clock (`wall_…`, `cpu_…`)."""
    spec = get_arch(name)
    torch.manual_seed(0)
    model = spec.build(pretrained=False).eval()
    x = to_model_input([film], spec.input_size, spec.mean, spec.std)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    fw, fc, cw, cc = alternate(forward, lambda: explain(model, spec, x), repeats, warmup)
    return {"wall_forward_ms": fw, "wall_explain_ms": cw, "wall_ratio": cw / fw,
            "cpu_forward_ms": fc, "cpu_explain_ms": cc, "cpu_ratio": cc / fc}  # fmt: skip


def measure_finer(name: str, film: np.ndarray, repeats: int, warmup: int) -> dict[str, Any]:
    """explain() of the normal and the dilated network: map sizes, median ms per clock, dilated / normal."""
    spec = get_arch(name)
    torch.manual_seed(0)
    normal = spec.build(pretrained=False).eval()
    dilated = build_network(spec, dilated=True).eval()
    dilated.load_state_dict(normal.state_dict())
    x = to_model_input([film], spec.input_size, spec.mean, spec.std)
    sizes = [tuple(explain(m, spec, x).raw.shape[-2:]) for m in (normal, dilated)]
    nw, nc, dw, dc = alternate(lambda: explain(normal, spec, x), lambda: explain(dilated, spec, x), repeats, warmup)
    return {"maps": sizes, "wall": (nw, dw, dw / nw), "cpu": (nc, dc, dc / nc)}


def measure_train_step(name: str, repeats: int, warmup: int, batch: int = 8) -> dict[str, tuple[float, float]]:
    """Median ms of one training step (forward, loss, backward; no optimiser) per variant: (wall, CPU)."""
    spec = get_arch(name)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, spec.input_size, spec.input_size)
    y = torch.arange(batch) % len(CLASSES)
    allowed = torch.zeros(batch, 1, spec.input_size, spec.input_size)
    allowed[..., : spec.input_size // 2] = 1.0
    out: dict[str, tuple[float, float]] = {}
    for dilated in (False, True):
        plain, explained = _train_steps(spec, build_network(spec, dilated=dilated).train(), x, y, allowed)
        pw, pc, ew, ec = alternate(plain, explained, repeats, warmup)
        tag = "dilated" if dilated else "normal"
        out[f"{tag} CE"], out[f"{tag} CE+expl"] = (pw, pc), (ew, ec)
    return out


def _train_steps(
    spec: Any, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A training step with cross-entropy alone, and one with the explanation loss added (λ = 1)."""
    ce = torch.nn.CrossEntropyLoss()
    objective = ExplainedObjective(net, spec, ce, ExplanationLoss(CLASSES), 1.0)  # type: ignore[arg-type]
    both = FeaturesAndLogits(net)  # type: ignore[arg-type]

    def plain() -> None:
        net.zero_grad(set_to_none=True)
        ce(net(x), y).backward()

    def explained() -> None:
        net.zero_grad(set_to_none=True)
        objective(both, x, y, allowed).backward()

    return plain, explained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,densenet201,cnnx")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the service)")
    parser.add_argument("--train-step", action="store_true", help="also time training steps (batch 8) of ResNets")
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
    names = [a.strip() for a in args.archs.split(",") if a.strip()]
    for name in names:
        spec = get_arch(name)
        r = measure(name, film, args.repeats, args.warmup)
        cells = ""
        for clock in CLOCKS:
            worst[clock] = max(worst[clock], r[f"{clock}_ratio"])
            cells += f"{r[f'{clock}_forward_ms']:>9.1f} {r[f'{clock}_explain_ms']:>9.1f} {r[f'{clock}_ratio']:>8.3f}x  "
        print(f"{name:<14} {spec.input_size:>5}  {spec.cam_method:<21} {cells}", flush=True)
    for clock in CLOCKS:
        verdict = "meets" if worst[clock] <= TARGET_RATIO else "misses"
        print(f"worst {clock} ratio {worst[clock]:.3f}x: {verdict} the {TARGET_RATIO:.2f}x target")
    resnets = [n for n in names if n in DILATABLE_ARCHS]
    if resnets:
        print("\nfiner maps: explain (forward + all four CAMs), normal vs dilated last stage, median ms")
        print(f"{'arch':<14} {'maps':>13}  {'wall: normal':>12} {'dilated':>8} {'ratio':>7}  "
              f"{'CPU: normal':>11} {'dilated':>8} {'ratio':>7}")  # fmt: skip
    for name in resnets:
        f = measure_finer(name, film, args.repeats, args.warmup)
        (n0, n1), (d0, d1) = f["maps"]
        (w0, w1, wr), (c0, c1, cr) = f["wall"], f["cpu"]
        maps = f"{n0}x{n1} -> {d0}x{d1}"
        print(
            f"{name:<14} {maps:>13}  {w0:>12.1f} {w1:>8.1f} {wr:>6.2f}x  {c0:>11.1f} {c1:>8.1f} {cr:>6.2f}x", flush=True
        )
    if args.train_step and resnets:
        print("\ntraining step (batch 8, forward + loss + backward), median ms: wall / CPU")
        for name in resnets:
            steps = measure_train_step(name, max(3, args.repeats // 5), max(1, args.warmup // 2))
            base = steps["normal CE"][1]
            cells = "  ".join(f"{k} {w:.0f}/{c:.0f} ({c / base:.2f}x)" for k, (w, c) in steps.items())
            print(f"{name:<14} {cells}", flush=True)
    print(f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
