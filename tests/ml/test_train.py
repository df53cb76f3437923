"""Short real training runs on real films (16 training images, 64 px ResNet-18): the loss falls, runs are
reproducible for a seed, checkpoints describe themselves, `last.pt` resumes, s1 masks the pneumonias."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ml import CLASSES
from ml.checkpoints import code_version, load_model, read_meta
from ml.data import SCENARIOS, Record, load_images, read_manifest, select
from ml.inference import Predictor
from ml.model_io import MASKED_LOGIT, class_mask
from ml.registry import get_arch
from ml.train import TrainConfig, TrainingCancelled, class_weights, train
from ml.transforms import normalize_batch
from tests.ml.conftest import write_manifest

SIZE = 64
Run = tuple[TrainConfig, dict[str, Any], list[dict[str, Any]]]
"""A finished run: its config, train()'s summary and the callback's events."""


def config(data_dir: Path, out_dir: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        arch="resnet18",
        data_dirs=[str(data_dir)],
        out_dir=str(out_dir),
        scenario="s2",
        epochs=3,
        batch_size=8,
        lr=1e-3,
        input_size=SIZE,
        augment=False,
        seed=0,
    )
    return TrainConfig(**{**base, **overrides})


def run(cfg: TrainConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return train(cfg, callback=events.append), events


@pytest.fixture(scope="module")
def s2_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    cfg = config(small_dataset, tmp_path_factory.mktemp("train-s2"))
    summary, events = run(cfg)
    return cfg, summary, events


def fixed_batch(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 16 training films of the small dataset, normalised for resnet18, with their labels."""
    spec = get_arch("resnet18")
    loaded = load_images(select(read_manifest(data_dir), SCENARIOS["s2"], "train"), SIZE)
    x = normalize_batch(torch.from_numpy(loaded.images).unsqueeze(1), spec.mean, spec.std)
    return x, torch.from_numpy(loaded.labels)


def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    # batch statistics (train mode) as during training; no gradient, nothing is updated but BN running stats
    model.train()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def test_training_lowers_the_loss(s2_run: Run, small_dataset: Path) -> None:
    cfg, summary, _events = s2_run
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # every epoch sees the same 16 films: the epoch's mean loss must fall clearly
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], history

    # the same fixed batch before (a fresh network at the run's seed) and after training
    x, y = fixed_batch(small_dataset)
    torch.manual_seed(cfg.seed)
    before = batch_loss(get_arch("resnet18").build(pretrained=False), x, y)
    after_model, _ = load_model(Path(cfg.out_dir) / "last.pt")
    after = batch_loss(after_model, x, y)
    print(f"fixed-batch loss before {before:.3f}, after {after:.3f}")
    assert after < 0.5 * before, (before, after)


def test_events_report_progress(s2_run: Run) -> None:
    _cfg, summary, events = s2_run
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "end"
    assert types.count("epoch") == 3 and types.count("step") == 3 * 2  # 16 films / batch 8
    start = events[0]
    assert start["train_images"] == 16 and start["val_images"] == 8 and start["skipped"] == 0
    progress = [e["progress"] for e in events if e["type"] == "step"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert all(np.isfinite(e["loss"]) for e in events if e["type"] == "step")
    out = Path(summary["out_dir"])
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "history.json"}
    assert json.loads((out / "history.json").read_text()) == summary["history"]


def test_same_seed_same_run(s2_run: Run, small_dataset: Path, tmp_path: Path) -> None:
    _cfg, _summary, events = s2_run
    _, again = run(config(small_dataset, tmp_path, epochs=1))
    losses = [e["loss"] for e in events if e["type"] == "step" and e["epoch"] == 1]
    assert [e["loss"] for e in again if e["type"] == "step"] == losses


def test_checkpoint_describes_itself(s2_run: Run, small_dataset: Path) -> None:
    cfg, summary, _events = s2_run
    spec = get_arch("resnet18")
    meta = read_meta(summary["best_checkpoint"])
    assert meta.arch == "resnet18"
    assert meta.classes == CLASSES and meta.active_classes == CLASSES
    assert meta.input_size == SIZE
    assert meta.mean == spec.mean and meta.std == spec.std
    assert meta.scenario == "s2" and meta.cam_method == "cam" and meta.pretrained is False
    assert meta.hparams == cfg.hparams()
    assert meta.hparams["lr"] == 1e-3 and meta.hparams["batch_size"] == 8
    manifest = (small_dataset / "manifest.csv").read_bytes()
    assert meta.data.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    assert meta.data.train_counts == {c: 4 for c in CLASSES}
    assert meta.code_version == code_version()
    val = meta.metrics["val"]
    assert set(val["per_class"]) == set(CLASSES) and val["n"] == 8
    # best.pt is the epoch with the best validation macro sensitivity
    best_epoch = summary["best_val"]["epoch"]
    assert meta.epoch == best_epoch
    scores = [h["val_macro_sensitivity"] for h in summary["history"]]
    assert scores[best_epoch - 1] == max(scores)
    # last.pt also carries what resuming needs
    last = read_meta(Path(cfg.out_dir) / "last.pt")
    assert last.epoch == 3 and last.optimizer is not None and last.history is not None and len(last.history) == 3
    assert meta.optimizer is None and meta.history is None  # best.pt: no training state


def test_resume_continues_from_last_checkpoint(s2_run: Run, tmp_path: Path, capsys) -> None:
    cfg, summary, _events = s2_run
    out = tmp_path / "resumed"
    shutil.copytree(cfg.out_dir, out)
    capsys.readouterr()
    resumed, events = run(config(Path(cfg.data_dirs[0]), out, epochs=4, resume=True))
    assert "resuming resnet18 from epoch 4" in capsys.readouterr().out
    assert {e["epoch"] for e in events if e["type"] == "step"} == {4}, "epochs 1-3 are not trained again"
    assert resumed["history"][:3] == summary["history"]
    assert len(resumed["history"]) == 4
    # it went on from the trained weights: epoch 4 is no worse a start than a fresh network's first epoch
    assert resumed["history"][3]["train_loss"] < 0.5 * summary["history"][0]["train_loss"]
    assert read_meta(out / "last.pt").epoch == 4


def test_s1_run_masks_the_pneumonias_and_counts_a_corrupt_film(
    small_dataset: Path, tmp_path: Path, real_films: list[np.ndarray]
) -> None:
    # the same films plus one corrupt training film, which must be skipped and counted, not fatal
    data = tmp_path / "data"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    write_manifest(
        data, [*read_manifest(small_dataset), Record(corrupt, "covid19", "cohen", "cohen-corrupt", "PA", "train")]
    )
    summary, events = run(config(data, tmp_path / "out", scenario="s1", epochs=1, max_steps_per_epoch=1))
    assert sum(e["type"] == "step" for e in events) == 1
    assert events[0]["skipped"] == 1 and summary["skipped_unreadable"] == 1
    meta = read_meta(summary["best_checkpoint"])
    assert meta.data.skipped_unreadable == 1
    assert meta.active_classes == ("normal", "covid19")
    assert meta.data.train_counts == {"normal": 4, "bacterial": 0, "viral": 0, "covid19": 4}
    predictor = Predictor.from_checkpoint(summary["best_checkpoint"])
    for pred in predictor.predict(real_films):
        assert pred.probabilities["bacterial"] == 0.0 and pred.probabilities["viral"] == 0.0
        assert pred.probabilities["normal"] + pred.probabilities["covid19"] == pytest.approx(1.0, abs=1e-6)
        assert pred.predicted_class in ("normal", "covid19")


def test_cancelling_from_the_callback_stops_after_the_current_step(small_dataset: Path, tmp_path: Path) -> None:
    steps: list[int] = []

    def cancel(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            steps.append(event["step"])
            raise TrainingCancelled

    with pytest.raises(TrainingCancelled):
        train(config(small_dataset, tmp_path), callback=cancel)
    assert steps == [1]
    assert not (tmp_path / "best.pt").exists()


def test_invalid_configurations_are_refused(small_dataset: Path, tmp_path: Path) -> None:
    for overrides, message in [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch size"),
        ({"lr": float("nan")}, "learning rate"),
        ({"arch": "cnnx", "input_size": 64}, "cnnx needs input size 180"),
        ({"input_size": 16}, "between 32 and 1024"),
        ({"lr_schedule": "step"}, "lr schedule"),
        ({"lr_schedule": "onecycle", "warmup_epochs": 1}, "its own warm-up"),
        ({"optimizer": "sgd"}, "optimizer must be one of adam, adamw"),
        ({"data_dirs": []}, "no dataset folder"),
    ]:
        with pytest.raises(ValueError, match=message):
            config(small_dataset, tmp_path, **overrides).validate()
    with pytest.raises(KeyError, match="unknown architecture"):
        config(small_dataset, tmp_path, arch="lenet").validate()
    with pytest.raises(KeyError, match="unknown scenario"):
        config(small_dataset, tmp_path, scenario="s9").validate()


def test_class_weights_balance_the_classes_present() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1, 3, 3])  # no viral film
    w = class_weights(labels, CLASSES, "inverse-frequency")
    # N / (K · n_c) with K = 3 classes present: 8/6, 8/12, -, 8/6 (and no pneumonia group)
    torch.testing.assert_close(w, torch.tensor([8 / 6, 8 / 12, 0.0, 8 / 6, 0.0]))
    torch.testing.assert_close(class_weights(labels, CLASSES, "none"), torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]))
    s1_labels = np.array([0, 0, 3, 3, 3, 3, 3, 3])  # s1 trains on normal and covid19 only
    torch.testing.assert_close(
        class_weights(s1_labels, ("normal", "covid19"), "inverse-frequency"),
        torch.tensor([2.0, 0.0, 0.0, 8 / 12, 0.0]),
    )  # 8 / (2 · 2), 8 / (2 · 6)


def test_class_mask_silences_inactive_classes() -> None:
    mask = class_mask(("normal", "covid19"))
    assert mask.tolist() == [0.0, MASKED_LOGIT, MASKED_LOGIT, 0.0]
    probs = torch.softmax(torch.tensor([[0.3, 5.0, 9.0, -1.0]]) + mask, dim=1)
    assert probs[0, 1] == 0.0 and probs[0, 2] == 0.0
