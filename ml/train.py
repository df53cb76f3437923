"""Training: flat functions in the style of torchvision's reference script.

`train(config)` is the orchestration (`main`): set up the runtime, data, model and loader
(`init_runtime`, `load_training_data`, `make_loader`, `resume_from`), then per epoch
`train_one_epoch` and, on rank 0, `validate_epoch` and `save_epoch`. It trains one registry
architecture on one scenario of a manifest dataset, keeps the best checkpoint (`best.pt`, by
validation macro sensitivity, ties broken by validation loss) and the last one (`last.pt`, with
optimiser state, for resuming), and writes `history.json`. It runs unchanged under `torchrun`
(DistributedDataParallel: gloo on CPU, nccl on GPU); then only rank 0 validates and writes files.
What a run is, option by option, is `ml.config.TrainConfig`.

It reads one or several manifest folders (`data_dirs`, see `ml.data.read_manifests`). The loss is
`ml.losses.PartialLabelLoss`: class-weighted cross-entropy, with `pneumonia` rows (bacterial or viral,
organism unknown) trained on −log(p_bacterial + p_viral) and weighted as their own group.
Scenarios that use a subset of the classes (s1) mask the other logits out, so those classes get
probability 0 everywhere, in training and at inference. With `explanation_weight` λ > 0 the loss adds
λ · the share of the true class's CAM evidence outside the film's allowed region (`ml.explanation`);
`dilate_last_stage` and `init_checkpoint` choose the network and its starting weights (`ml.network`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ml import CLASSES
from ml.architectures import CXRNet
from ml.checkpoints import (
    CheckpointMeta,
    TrainingDataMeta,
    base_meta,
    file_sha256,
    load_init_weights,
    read_checkpoint,
    read_meta,
    save_checkpoint,
)
from ml.config import TrainConfig
from ml.data import (
    LoadedImages,
    Scenario,
    XrayDataset,
    class_counts,
    get_scenario,
    is_full_label,
    load_images,
    manifest_sha256,
    read_manifest,
    read_manifests,
    select,
)
from ml.explanation import ExplainedObjective, ExplanationLoss, FeaturesAndLogits, allowed_masks, region_counts
from ml.losses import PartialLabelLoss, class_weights
from ml.lungseg import LungSegmenter
from ml.metrics import classification_report
from ml.model_io import class_mask, predict_logits
from ml.network import build_network
from ml.registry import ArchSpec, get_arch
from ml.schedules import lr_factor
from ml.transforms import apply_intensity, normalize_batch, train_augmentation

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised by a progress callback to stop training between steps."""


def _needs_calibration(best: Path, *, trained: bool) -> bool:
    """best.pt gets its error-risk calibration after this call trained an epoch, or when it has none (a
    resumed run with nothing left to train leaves a calibrated best.pt untouched)."""
    return best.is_file() and (trained or read_meta(best).risk is None)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def validate_epoch(
    model: nn.Module,
    loaded: LoadedImages,
    spec_mean: Any,
    spec_std: Any,
    mask: torch.Tensor,
    criterion: nn.Module,
    device: torch.device,
) -> dict[str, Any]:
    """4-class metrics over the 4-class rows; the loss over every row (partial labels included)."""
    logits = predict_logits(model, loaded.images, spec_mean, spec_std, mask=mask, device=device)
    labels = torch.from_numpy(loaded.labels)
    full = [i for i, t in enumerate(labels.tolist()) if is_full_label(t)]
    report = classification_report(labels[full].tolist(), logits[full].argmax(1).tolist())
    report["loss"] = float(criterion(logits, labels).item()) if len(labels) else None
    return report


def _better(new: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    a, b = new.get("macro_sensitivity") or 0.0, best.get("macro_sensitivity") or 0.0
    if abs(a - b) > 1e-9:
        return a > b
    return (new.get("loss") or math.inf) < (best.get("loss") or math.inf)


# ------------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device and its place among the DDP processes (rank 0 of 1 alone)."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(config: TrainConfig) -> Runtime:
    """The device ("auto": CUDA if there is one), and under `torchrun` (WORLD_SIZE > 1) the process group:
    nccl on GPU, gloo on CPU."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.device == "auto" else config.device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Runtime(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Runtime(device, dist.get_rank(), dist.get_world_size())


@dataclass
class TrainingData:
    """The decoded training and validation films of a run (resized, intensity-standardised)."""

    train: LoadedImages
    val: LoadedImages
    lungseg_sha256: str | None = None
    """The lung segmenter's checkpoint hash when the films are lung crops or have lung masks."""
    allowed: np.ndarray | None = None
    """N×S×S bool allowed regions of the training films (explanation loss only)."""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [*self.train.skipped, *self.val.skipped]


def load_training_data(config: TrainConfig, scenario: Scenario, input_size: int) -> TrainingData:
    """The scenario's train split (plus the train splits of `extra_train_dirs`) and val split."""
    records = read_manifests(config.data_dirs)
    train_records = select(records, scenario, "train", seed=config.seed)
    for extra in config.extra_train_dirs:
        train_records += select(read_manifest(extra), scenario, "train", seed=config.seed)
    val_records = select(records, scenario, "val", seed=config.seed)
    if not train_records:
        raise ValueError(f"no training images for scenario {scenario.name} in {', '.join(config.data_dirs)}")
    needs_masks = config.input_mode == "lung-crop" or config.explanation_weight > 0
    segmenter = LungSegmenter.from_checkpoint(config.lungseg_checkpoint) if needs_masks else None
    lung_inputs: dict[str, Any] = (
        {"input_mode": config.input_mode, "segmenter": segmenter, "crop_margin": config.crop_margin}
        if segmenter is not None
        else {}
    )
    train_data = load_images(train_records, input_size, **lung_inputs)
    val_data = load_images(val_records, input_size, **lung_inputs)
    train_data.images = apply_intensity(train_data.images, config.intensity)
    val_data.images = apply_intensity(val_data.images, config.intensity)
    allowed = allowed_masks(train_data, config.explanation_margin) if config.explanation_weight > 0 else None
    return TrainingData(train_data, val_data, segmenter.checkpoint_sha256 if segmenter else None, allowed)


def make_loader(
    config: TrainConfig, data: TrainingData, runtime: Runtime, generator: torch.Generator
) -> tuple[DataLoader[tuple[Any, ...]], DistributedSampler[tuple[Any, ...]] | None, int]:
    """The training loader (with allowed masks for the explanation loss), its DDP sampler (None alone) and the
    steps per epoch (capped)."""
    dataset = XrayDataset(data.train, train_augmentation() if config.augment else None, data.allowed)
    sampler: DistributedSampler[tuple[Any, ...]] | None = (
        DistributedSampler(dataset, num_replicas=runtime.world, rank=runtime.rank, shuffle=True, seed=config.seed)
        if runtime.distributed
        else None
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        generator=generator,
        drop_last=len(dataset) > config.batch_size,
    )
    steps_per_epoch = len(loader)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    return loader, sampler, steps_per_epoch


def resume_from(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[Any], Any]:
    """Load `last.pt` into the model and optimiser; (first epoch to train, history, best val so far)."""
    meta, state = read_checkpoint(path)
    if meta.optimizer is None or meta.epoch is None:
        raise ValueError(f"{path} holds no training state to resume from")
    model.load_state_dict(state)
    optimizer.load_state_dict(meta.optimizer)
    return meta.epoch + 1, list(meta.history or []), meta.best_val


def checkpoint_meta(
    config: TrainConfig, spec: ArchSpec, scenario: Scenario, input_size: int, data: TrainingData, world: int
) -> CheckpointMeta:
    """What every checkpoint of the run says about itself, the whole config as run included."""
    return replace(
        base_meta(spec, input_size=input_size, scenario_classes=scenario.classes),
        dilate_last_stage=config.dilate_last_stage,
        init_checkpoint_sha256=file_sha256(config.init_checkpoint) if config.init_checkpoint else None,
        intensity=config.intensity,
        input_mode=config.input_mode,
        crop_margin=config.crop_margin,
        lungseg_sha256=data.lungseg_sha256,
        scenario=scenario.name,
        pretrained=config.pretrained,
        hparams=config.hparams(),
        train_config=config.to_dict(),
        data=TrainingDataMeta(
            manifests={str(Path(d).resolve()): manifest_sha256(d) for d in config.data_dirs},
            extra_train_manifests={d: manifest_sha256(d) for d in config.extra_train_dirs},
            train_counts=class_counts(data.train.records),
            val_counts=class_counts(data.val.records),
            skipped_unreadable=len(data.skipped),
            reviewer_regions=region_counts(data.train.records),
        ),
        world_size=world,
    )


# ------------------------------------------------------------------------------ epochs
@dataclass
class RunClock:
    """Progress and ETA of a run over all its epochs (a resumed run times only what it trains itself)."""

    epochs: int
    steps_per_epoch: int
    start_epoch: int
    started: float = field(default_factory=time.monotonic)

    def step_event(self, epoch: int, step: int, loss: float) -> dict[str, Any]:
        done = (epoch - 1) * self.steps_per_epoch + step
        total = self.epochs * self.steps_per_epoch
        done_here = done - (self.start_epoch - 1) * self.steps_per_epoch
        elapsed = time.monotonic() - self.started
        return {
            "type": "step",
            "epoch": epoch,
            "step": step,
            "steps_per_epoch": self.steps_per_epoch,
            "loss": loss,
            "progress": done / total,
            "eta_seconds": elapsed / max(1, done_here) * (total - done),
        }


def seed_epoch(config: TrainConfig, epoch: int, generator: torch.Generator, rank: int, sampler: Any) -> None:
    """Every epoch draws its shuffling and augmentation from its own seed, so a run resumed from
    last.pt continues exactly as an uninterrupted one would."""
    epoch_seed = config.seed * 100_003 + epoch
    generator.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed + rank)
    if sampler is not None:
        sampler.set_epoch(epoch)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[Any, ...]],
    *,
    epoch: int,
    config: TrainConfig,
    spec: ArchSpec,
    device: torch.device,
    clock: RunClock,
    emit: Callable[[dict[str, Any]], None],
    memory_format: torch.memory_format = torch.contiguous_format,
    show_bar: bool = False,
    objective: ExplainedObjective | None = None,
) -> float:
    """One epoch of `clock.steps_per_epoch` steps; emits a `step` event after each. Mean training loss.

    With an `objective` (the explanation loss; `model` is then a `FeaturesAndLogits`) batches carry allowed masks."""
    model.train()
    steps = clock.steps_per_epoch
    running, seen = 0.0, 0
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=True)
    for step, (images, labels, *masks) in enumerate(loader):
        if step >= steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(config, (epoch - 1) * steps + step, steps)
        x = normalize_batch(images, spec.mean, spec.std).to(device, non_blocking=True)
        x = x.contiguous(memory_format=memory_format)
        y = labels.to(device)
        if objective is None:
            loss = criterion(model(x), y)
        else:
            loss = objective(model, x, y, masks[0].to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += float(loss.item()) * len(y)
        seen += len(y)
        if bar is not None:
            bar.set_postfix(loss=f"{running / seen:.4f}")
            bar.update(1)
        emit(clock.step_event(epoch, step + 1, float(loss.item())))
    if bar is not None:
        bar.close()
    return running / max(1, seen)


def save_epoch(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: CheckpointMeta,
    *,
    epoch: int,
    val: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    improved: bool,
    half: bool,
) -> None:
    """best.pt when the epoch improved, always last.pt (with what resuming needs) and history.json."""
    if improved:
        save_checkpoint(out_dir / "best.pt", model, replace(meta, epoch=epoch, metrics={"val": val}), half=half)
    last = replace(
        meta, epoch=epoch, metrics={"val": val}, optimizer=optimizer.state_dict(), history=history, best_val=best
    )
    save_checkpoint(out_dir / "last.pt", model, last)  # with what resuming needs
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))


# -------------------------------------------------------------------------------- main
def train(config: TrainConfig, *, callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, validate every epoch, keep the best checkpoint. Returns a summary dict.

    `callback(event)` receives dicts with `type` in {"start", "step", "epoch", "end"}; raising
    `TrainingCancelled` from it stops training cleanly after the current step.
    """
    config.validate()
    spec = get_arch(config.arch)
    scenario = get_scenario(config.scenario)
    input_size = config.input_size or spec.input_size
    out_dir = Path(config.out_dir)
    emit = callback or (lambda event: None)

    runtime = init_runtime(config)
    device, is_main = runtime.device, runtime.is_main
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)

    data = load_training_data(config, scenario, input_size)
    skipped = data.skipped
    if skipped and is_main:
        print(f"warning: skipped {len(skipped)} unreadable image(s); first: {skipped[0][0]} ({skipped[0][1]})")

    model: nn.Module = build_network(spec, pretrained=config.pretrained, dilated=config.dilate_last_stage)
    if config.init_checkpoint is not None:
        load_init_weights(model, config.init_checkpoint, arch=spec.name)
    model = model.to(device)
    # channels-last convolutions are ~20% faster on CPU (oneDNN) and on tensor-core GPUs
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    core: CXRNet = model  # type: ignore[assignment]
    mask = class_mask(scenario.classes, device)
    weights = class_weights(data.train.labels, scenario.classes, config.class_weighting).to(device)
    criterion = PartialLabelLoss(scenario.classes, weights, config.label_smoothing).to(device)
    eval_criterion = PartialLabelLoss(scenario.classes, weights.cpu())
    make_optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = make_optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader, sampler, steps_per_epoch = make_loader(config, data, runtime, generator)
    objective = None
    if config.explanation_weight > 0:
        explanation = ExplanationLoss(scenario.classes).to(device)
        objective = ExplainedObjective(core, spec, criterion, explanation, config.explanation_weight)
        model = FeaturesAndLogits(core)

    start_epoch, history, best = 1, list[dict[str, Any]](), None
    if config.resume and (out_dir / "last.pt").is_file():
        start_epoch, history, best = resume_from(out_dir / "last.pt", core, optimizer)
        if is_main:
            print(f"resuming {spec.name} from epoch {start_epoch}")
    if runtime.distributed:
        model = nn.parallel.DistributedDataParallel(model)
    meta = checkpoint_meta(config, spec, scenario, input_size, data, runtime.world)

    train_images, val_images = len(data.train.records), len(data.val.records)
    emit({"type": "start", "epochs": config.epochs, "steps_per_epoch": steps_per_epoch,
          "train_images": train_images, "val_images": val_images, "skipped": len(skipped)})  # fmt: skip
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = {k: n for k, n in class_counts(data.train.records).items() if k not in CLASSES}
        print(
            f"training {spec.name} ({config.scenario}) on {train_images} images"
            + "".join(f" (including {n} {k}, a partial label)" for k, n in partial.items())
            + f", validating on {val_images}; {steps_per_epoch} steps/epoch, device {device}"
        )

    clock = RunClock(config.epochs, steps_per_epoch, start_epoch)
    for epoch in range(start_epoch, config.epochs + 1):
        seed_epoch(config, epoch, generator, runtime.rank, sampler)
        train_loss = train_one_epoch(
            model, criterion, optimizer, loader, epoch=epoch, config=config, spec=spec, device=device, clock=clock,
            emit=emit, memory_format=memory_format, show_bar=is_main and callback is None, objective=objective,
        )  # fmt: skip
        outside = objective.take_mean_share() if objective is not None else None
        if runtime.distributed:
            dist.barrier()
        if is_main:
            val = validate_epoch(core, data.val, spec.mean, spec.std, mask, eval_criterion, device)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_accuracy":
                            val["accuracy"], "val_macro_sensitivity": val["macro_sensitivity"]})  # fmt: skip
            history[-1] |= {"train_evidence_outside": outside} if outside is not None else {}
            improved = _better(val, best)
            if improved:
                best = {**val, "epoch": epoch}
            save_epoch(out_dir, core, optimizer, meta, epoch=epoch, val=val, history=history, best=best,
                       improved=improved, half=config.half_checkpoint)  # fmt: skip
            print(
                f"epoch {epoch}: train loss {train_loss:.4f}{'' if outside is None else f' (outside {outside:.3f})'}, "
                f"val loss {val['loss']:.4f}, "
                f"val accuracy {val['accuracy']:.3f}, val macro sensitivity {val['macro_sensitivity']:.3f}"
                + (" (best)" if improved else ""),
                flush=True,
            )
            emit({"type": "epoch", "epoch": epoch, "train_loss": train_loss, "val": val, "best": improved,
                  "train_evidence_outside": outside})  # fmt: skip
        model.train()
        if runtime.distributed:
            dist.barrier()

    if is_main and config.calibrate and _needs_calibration(out_dir / "best.pt", trained=start_epoch <= config.epochs):
        from ml.calibrate import calibrate_checkpoint  # goes live with its own cut-offs

        calibrate_checkpoint(out_dir / "best.pt", config.data_dirs, lungseg_checkpoint=config.lungseg_checkpoint,
                             batch_size=config.batch_size, log=print)  # fmt: skip
    summary = {
        "out_dir": str(out_dir),
        "best_checkpoint": str(out_dir / "best.pt"),
        "best_val": best,
        "history": history,
        "seconds": time.monotonic() - clock.started,
        "skipped_unreadable": len(skipped),
    }
    emit({"type": "end", **summary})
    if runtime.distributed:
        dist.destroy_process_group()
    return summary
