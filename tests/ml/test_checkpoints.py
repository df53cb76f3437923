"""Self-describing checkpoints: round trips, float16 storage, clear errors, and the bundled model's description."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from ml import CLASSES
from ml.architectures import CXRNet
from ml.checkpoints import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    base_meta,
    file_sha256,
    load_model,
    read_checkpoint,
    read_meta,
    save_checkpoint,
)
from ml.registry import ArchSpec, get_arch


@pytest.fixture(scope="module")
def squeezenet() -> tuple[ArchSpec, CXRNet]:
    spec = get_arch("squeezenet1_1")
    torch.manual_seed(0)
    return spec, spec.build(pretrained=False).eval()


def test_round_trip_restores_weights_and_meta(squeezenet: tuple[ArchSpec, CXRNet], tmp_path: Path) -> None:
    spec, model = squeezenet
    meta = {**base_meta(spec, input_size=224, scenario_classes=CLASSES), "scenario": "s2", "epoch": 3}
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, meta)
    assert path.is_file() and not list(tmp_path.rglob("*.tmp")), "written atomically, no temp file left"
    loaded, loaded_meta = load_model(path)
    assert loaded_meta == meta and read_meta(path) == meta
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2
        assert torch.equal(a, b)


def test_half_checkpoint_is_stored_as_float16_and_loaded_as_float32(
    squeezenet: tuple[ArchSpec, CXRNet], tmp_path: Path
) -> None:
    spec, model = squeezenet
    meta = base_meta(spec, input_size=224, scenario_classes=CLASSES)
    full = save_checkpoint(tmp_path / "full.pt", model, meta)
    half = save_checkpoint(tmp_path / "half.pt", model, meta, half=True)
    _, stored = read_checkpoint(half)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_model(half)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert b.dtype == torch.float32
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a torch file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="no meta/state_dict"):
        read_meta(plain)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_unknown_architecture_and_mismatched_weights_are_checkpoint_errors(
    squeezenet: tuple[ArchSpec, CXRNet], tmp_path: Path
) -> None:
    spec, model = squeezenet
    meta = base_meta(spec, input_size=224, scenario_classes=CLASSES)
    path = save_checkpoint(tmp_path / "alien.pt", model, {**meta, "arch": "lenet"})
    with pytest.raises(CheckpointError, match="unknown architecture 'lenet'"):
        load_model(path)
    path = save_checkpoint(tmp_path / "wrong.pt", model, {**meta, "arch": "cnnx"})
    with pytest.raises(CheckpointError, match="do not fit architecture cnnx"):
        load_model(path)


def test_file_sha256(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1_000_000)
    assert file_sha256(f) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_bundled_model_describes_itself() -> None:
    assert DEFAULT_CHECKPOINT.is_file(), f"the bundled default model is missing: {DEFAULT_CHECKPOINT}"
    meta = read_meta(DEFAULT_CHECKPOINT)
    spec = get_arch(meta["arch"])
    assert meta["classes"] == list(CLASSES)
    assert set(meta["active_classes"]) <= set(CLASSES)
    assert meta["input_size"] == spec.input_size
    assert meta["mean"] == list(spec.mean) and meta["std"] == list(spec.std)
    assert meta["cam_method"] == spec.cam_method
    assert meta["scenario"] in ("s1", "s2", "s3")
    assert meta["hparams"]["arch"] == meta["arch"]
    assert len(meta["data"]["manifest_sha256"]) == 64
    assert meta["metrics"]["val"]["per_class"].keys() == set(CLASSES)
    assert re.fullmatch(r"\d+\.\d+\.\d+(\+g[0-9a-f]+)?", meta["code_version"]), meta["code_version"]
    model, _ = load_model(DEFAULT_CHECKPOINT)
    assert sum(p.numel() for p in model.parameters()) > 0
