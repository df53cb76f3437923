"""Learning-rate schedules: the factor of the peak rate at each training step (`TrainConfig.lr_schedule`)."""

from __future__ import annotations

import math

from ml.config import TrainConfig


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The factor of `config.lr` at 0-based `step` (warm-up, then constant, cosine or one-cycle)."""
    total = config.epochs * steps_per_epoch
    warm = config.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if config.lr_schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if config.lr_schedule == "onecycle":
        return onecycle_factor(step, total)
    return 1.0


def onecycle_factor(step: int, total: int, pct_start: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    """torch's OneCycleLR (two cosine phases, its defaults) as a factor of the peak lr at `step` of
    `total`: from 1/div up to 1 over the first pct_start of the steps, then down to 1/(div·final_div)."""
    peak = pct_start * total - 1
    if step <= peak:
        begin, end, first, last = 0.0, peak, 1 / div, 1.0
    else:
        begin, end, first, last = peak, total - 1.0, 1.0, 1 / (div * final_div)
    pct = min(1.0, (step - begin) / (end - begin)) if end > begin else 1.0
    return last + (first - last) / 2.0 * (math.cos(math.pi * pct) + 1.0)
