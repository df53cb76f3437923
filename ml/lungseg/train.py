"""`cxr-review train-lungs`: training the lung segmenter on `lungseg/`, and its Dice.

Loss: BCE + soft Dice; Adam with linear warm-up and cosine decay; validated and saved weights are an
exponential moving average of the trained ones.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.checkpoints import (
    LungSegMeta,
    code_version,
    file_sha256,
    now_iso,
    read_lungseg_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from ml.lungseg.data import LungSegData, augment_batch, load_lungseg_split
from ml.lungseg.inference import load_lung_model
from ml.lungseg.model import ARCH_NAME, INPUT_SIZE, LungUNet, predict_logits, standardize


def dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks of one image; 1.0 when both are empty."""
    a = torch.as_tensor(pred).bool()
    b = torch.as_tensor(target).bool()
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image, averaged over the batch (B×1×H×W logits and {0, 1} targets)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def dice_per_image(model: nn.Module, data: LungSegData, threshold: float = 0.5) -> list[float]:
    """Dice of each image's thresholded prediction against its mask, at the data's own size."""
    probs = torch.sigmoid(predict_logits(model, data.images))
    return [dice(p > threshold, m) for p, m in zip(probs, data.masks, strict=True)]


@dataclass
class LungTrainConfig:
    data_dir: str
    out_dir: str
    epochs: int = 100
    batch_size: int = 8
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: int = 2
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    base_channels: int = 16
    multipliers: tuple[int, ...] = (1, 2, 4, 8, 8, 8)
    stem_stride: int = 2
    ema_decay: float = 0.99
    scale_range: tuple[float, float] = (0.75, 1.15)
    max_shift: float = 0.08
    padding: str = "border"
    seed: int = 0
    augment: bool = True
    max_steps_per_epoch: int | None = None
    half_checkpoint: bool = True
    device: str = "cpu"
    threads: int | None = None

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch size must be > 0")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 <= self.min_lr <= self.lr:
            raise ValueError("need a positive learning rate and 0 <= min_lr <= lr")
        if self.base_channels <= 0 or self.stem_stride not in (1, 2, 4):
            raise ValueError("base channels must be > 0 and stem stride 1, 2 or 4")
        if self.threads is not None and self.threads <= 0:
            raise ValueError("threads must be > 0")
        if self.padding not in ("border", "zeros") or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("padding must be 'border' or 'zeros' and the scale range positive and ordered")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("EMA decay must be in [0, 1) (0 turns the weight average off)")

    def hparams(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("data_dir", "out_dir", "device", "threads"):
            d.pop(k)
        d["multipliers"] = list(self.multipliers)
        d["scale_range"] = list(self.scale_range)
        return d


def _lr_at(config: LungTrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr over the remaining steps."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def train_lungs(
    config: LungTrainConfig, *, callback: Callable[[dict[str, Any]], None] | None = None, command: str | None = None
) -> dict[str, Any]:
    """Train on the `train` split, validate (mean Dice at 256×256, threshold 0.5) after every epoch.

    Loss: BCE + soft Dice; Adam with linear warm-up and cosine decay; the weights that are validated and
    saved are an exponential moving average of the trained ones (`ema_decay` per step; 0 turns it off).

    Writes `best.pt` (highest val Dice; float16 weights when `half_checkpoint`), `last.pt` and
    `history.json` to `out_dir`; returns a summary. `callback(event)` receives dicts with `type` in
    {"start", "epoch", "end"}; an exception raised from it stops training.
    """
    config.validate()
    emit = callback or (lambda event: None)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = torch.device(
        config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )

    train_data = load_lungseg_split(config.data_dir, "train")
    val_data = load_lungseg_split(config.data_dir, "val")
    model = LungUNet(config.base_channels, config.multipliers, config.stem_stride)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Validation, checkpoints and the bundle use an exponential moving average of the weights (and BN
    # statistics): with 166 films, single-step weights jitter by ~0.005 Dice from epoch to epoch.
    averaged = copy.deepcopy(model) if config.ema_decay > 0 else model
    averaged_state = list(averaged.state_dict().values())
    model_state = list(model.state_dict().values())

    n = len(train_data.images)
    steps_per_epoch = n // config.batch_size if n >= config.batch_size else 1
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_base = LungSegMeta(
        arch=ARCH_NAME,
        net=dict(model.config),
        input_size=INPUT_SIZE,
        normalization="per-image standardisation (mean 0, std 1) of the 256x256 film scaled to [0, 1]",
        threshold=0.5,
        parameters=sum(p.numel() for p in model.parameters()),
        hparams=config.hparams(),
        data={
            "data_dir": str(Path(config.data_dir).resolve()),
            "manifest_sha256": file_sha256(Path(config.data_dir) / "manifest.csv"),
            "train_images": n,
            "val_images": len(val_data.images),
        },
        command=command,
        code_version=code_version(),
    )
    emit(
        {
            "type": "start",
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "train_images": n,
            "val_images": len(val_data.images),
        }
    )
    print(
        f"training {ARCH_NAME} ({meta_base.parameters:,} parameters) on {n} images, validating on "
        f"{len(val_data.images)}; {steps_per_epoch} steps/epoch, device {device}, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    started = time.monotonic()
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        running, seen = 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[(i * config.batch_size) % n :][: config.batch_size]
            if config.augment:
                x, y = augment_batch(
                    train_data.images[idx],
                    train_data.masks[idx],
                    generator,
                    scale_range=config.scale_range,
                    max_shift=config.max_shift,
                    padding=config.padding,
                )
            else:
                x, y = train_data.images[idx].float() / 255.0, train_data.masks[idx].float()
            x = standardize(x).to(device).contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, step, steps_per_epoch)
            logits = model(x)
            loss = config.bce_weight * F.binary_cross_entropy_with_logits(
                logits, y
            ) + config.dice_weight * soft_dice_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if averaged is not model:
                with torch.no_grad():
                    for avg, current in zip(averaged_state, model_state, strict=True):
                        if avg.is_floating_point():
                            avg.lerp_(current, 1.0 - config.ema_decay)
                        else:
                            avg.copy_(current)
            step += 1
            running += float(loss.item()) * len(idx)
            seen += len(idx)
        scores = dice_per_image(averaged, val_data)
        row = {
            "epoch": epoch,
            "train_loss": running / max(1, seen),
            "val_dice": float(np.mean(scores)),
            "val_dice_min": float(np.min(scores)),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_seconds": round(time.monotonic() - started, 1),
        }
        history.append(row)
        improved = best is None or row["val_dice"] > best["val_dice"]
        if improved:
            best = dict(row)
            meta = replace(
                meta_base,
                val=dict(best, split="val", per_image=dict(zip(val_data.names, scores, strict=True))),
                created_at=now_iso(),
            )
            save_checkpoint(out_dir / "best.pt", averaged, meta, half=config.half_checkpoint)
        print(
            f"epoch {epoch:3d}/{config.epochs}  loss {row['train_loss']:.4f}  val Dice {row['val_dice']:.4f} "
            f"(min {row['val_dice_min']:.3f})  lr {row['lr']:.2e}  {row['elapsed_seconds']:.0f}s"
            f"{'  *best' if improved else ''}",
            flush=True,
        )
        emit({"type": "epoch", **row, "best": improved})
    assert best is not None
    train_seconds = round(time.monotonic() - started, 1)
    last_meta = replace(
        meta_base, val=dict(history[-1], split="val"), train_seconds=train_seconds, created_at=now_iso()
    )
    save_checkpoint(out_dir / "last.pt", averaged, last_meta)
    # Re-score what was actually written (float16 rounding may move Dice in the 4th decimal).
    best_model, _ = load_lung_model(out_dir / "best.pt")
    stored_meta, stored_state = read_lungseg_checkpoint(out_dir / "best.pt")
    dice_as_stored = float(np.mean(dice_per_image(best_model.to(device), val_data)))
    stored_meta = replace(
        stored_meta, train_seconds=train_seconds, val={**stored_meta.val, "dice_as_stored": dice_as_stored}
    )
    write_checkpoint(out_dir / "best.pt", stored_meta, stored_state)
    summary = {
        "best_val": best,
        "best_val_dice_as_stored": dice_as_stored,
        "best_checkpoint": str(out_dir / "best.pt"),
        "last_checkpoint": str(out_dir / "last.pt"),
        "train_seconds": train_seconds,
        "history": history,
    }
    (out_dir / "history.json").write_text(json.dumps({"config": config.hparams(), **summary}, indent=2))
    emit({"type": "end", **{k: v for k, v in summary.items() if k != "history"}})
    return summary
