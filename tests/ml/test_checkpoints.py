"""Self-describing checkpoints: round trips, float16 storage, clear errors, the bundled models' descriptions,
and typed metadata that reads older checkpoints (missing keys get defaults, unknown keys are kept)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from ml import CLASSES
from ml.architectures import CXRNet
from ml.checkpoints import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    CheckpointMeta,
    LungSegMeta,
    TrainingDataMeta,
    base_meta,
    file_sha256,
    load_model,
    read_checkpoint,
    read_lungseg_checkpoint,
    read_meta,
    save_checkpoint,
)
from ml.lung_crop import DEFAULT_MARGIN
from ml.lungseg import BUNDLED_LUNGSEG
from ml.registry import ArchSpec, get_arch


@pytest.fixture(scope="module")
def squeezenet() -> tuple[ArchSpec, CXRNet]:
    spec = get_arch("squeezenet1_1")
    torch.manual_seed(0)
    return spec, spec.build(pretrained=False).eval()


def test_round_trip_restores_weights_and_meta(squeezenet: tuple[ArchSpec, CXRNet], tmp_path: Path) -> None:
    spec, model = squeezenet
    meta = replace(base_meta(spec, input_size=224, scenario_classes=CLASSES), scenario="s2", epoch=3)
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
    path = save_checkpoint(tmp_path / "alien.pt", model, replace(meta, arch="lenet"))
    with pytest.raises(CheckpointError, match="unknown architecture 'lenet'"):
        load_model(path)
    path = save_checkpoint(tmp_path / "wrong.pt", model, replace(meta, arch="cnnx"))
    with pytest.raises(CheckpointError, match="do not fit architecture cnnx"):
        load_model(path)


def test_file_sha256(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1_000_000)
    assert file_sha256(f) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_bundled_model_describes_itself() -> None:
    assert DEFAULT_CHECKPOINT.is_file(), f"the bundled default model is missing: {DEFAULT_CHECKPOINT}"
    meta = read_meta(DEFAULT_CHECKPOINT)
    spec = get_arch(meta.arch)
    assert meta.classes == CLASSES
    assert set(meta.active_classes) <= set(CLASSES)
    assert meta.input_size == spec.input_size
    assert meta.mean == spec.mean and meta.std == spec.std
    assert meta.cam_method == spec.cam_method
    assert meta.scenario in ("s1", "s2", "s3")
    assert meta.input_mode == "full" and meta.intensity == "raw"
    assert meta.hparams["arch"] == meta.arch
    assert meta.data is not None and meta.data.manifest_sha256 is not None and len(meta.data.manifest_sha256) == 64
    assert meta.metrics["val"]["per_class"].keys() == set(CLASSES)
    assert meta.code_version is not None
    assert re.fullmatch(r"\d+\.\d+\.\d+(\+g[0-9a-f]+)?", meta.code_version), meta.code_version
    assert meta.extra == {}, "every key of the bundled checkpoint is known"
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta
    model, _ = load_model(DEFAULT_CHECKPOINT)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_bundled_lung_segmenter_reads_as_its_own_kind_and_is_no_classifier() -> None:
    meta, state = read_lungseg_checkpoint(BUNDLED_LUNGSEG)
    assert meta.net == {"base_channels": 16, "multipliers": [1, 2, 4, 8, 8, 8], "stem_stride": 2}
    assert meta.input_size == 256 and meta.threshold == 0.5 and meta.extra == {} and state
    assert LungSegMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        read_meta(BUNDLED_LUNGSEG)
    with pytest.raises(CheckpointError, match="not a lung segmentation checkpoint"):
        read_lungseg_checkpoint(DEFAULT_CHECKPOINT)


OLD_FORMAT: dict[str, Any] = {
    "format": 1,
    "arch": "cnnx",
    "input_size": 224,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "classes": list(CLASSES),
    "scenario": "s1",
    "active_classes": ["normal", "covid19"],
    "hparams": {"epochs": 3},
    "data": {
        "data_dir": "/data/cxr",
        "manifest_sha256": "a" * 64,
        "extra_train_manifests": {"/jobs/7/reviewed": "b" * 64},
        "train_counts": {"normal": 4, "covid19": 4},
    },
    "metrics": {"val": {"accuracy": 0.5}, "test": {"n": 6}},
    "name": "cnnx-s1",
    "training_job": {"id": 7, "parent_model_id": 1},
    "a_key_from_the_future": [1, 2],
}


def test_an_older_checkpoints_description_gets_defaults_and_keeps_what_it_does_not_know() -> None:
    """A checkpoint written before intensity, input modes, train_config and cam_method were recorded (and a
    worker-registered one, with its name and job) still reads; nothing it holds is lost when written back."""
    meta = CheckpointMeta.from_dict(OLD_FORMAT)
    assert (meta.arch, meta.input_size, meta.mean) == ("cnnx", 224, (0.5, 0.5, 0.5))
    assert meta.active_classes == ("normal", "covid19") and meta.classes == CLASSES
    assert (meta.intensity, meta.input_mode, meta.crop_margin) == ("raw", "full", DEFAULT_MARGIN)
    assert meta.train_config == {} and meta.cam_method == "" and meta.lungseg_sha256 is None
    assert meta.name == "cnnx-s1" and meta.training_job == {"id": 7, "parent_model_id": 1}
    assert meta.data == TrainingDataMeta(
        manifests={"/data/cxr": "a" * 64},
        extra_train_manifests={"/jobs/7/reviewed": "b" * 64},
        train_counts={"normal": 4, "covid19": 4},
    )
    assert meta.data.manifest_sha256 == "a" * 64  # what a registered model records
    assert meta.extra == {"a_key_from_the_future": [1, 2]}
    again = meta.to_dict()
    assert again["a_key_from_the_future"] == [1, 2] and again["data"]["manifest_sha256"] == "a" * 64
    assert CheckpointMeta.from_dict(again) == meta
    # the minimal description: the four keys no classifier can do without
    minimal = CheckpointMeta.from_dict({k: OLD_FORMAT[k] for k in ("arch", "input_size", "mean", "std")})
    assert minimal.active_classes == CLASSES and minimal.data is None and minimal.scenario is None


def test_a_description_without_its_essentials_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="lacks input_size, mean"):
        CheckpointMeta.from_dict({"arch": "cnnx", "std": [0.5] * 3})
    with pytest.raises(CheckpointError, match="malformed"):
        CheckpointMeta.from_dict({**OLD_FORMAT, "input_size": "big"})
    path = tmp_path / "no-arch.pt"
    torch.save({"meta": {"input_size": 224}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"no-arch.pt: checkpoint meta lacks arch"):
        load_model(path)


def test_a_run_that_read_several_data_folders_records_each_manifest() -> None:
    data = TrainingDataMeta(manifests={"/data/cxr": "a" * 64, "/data/cxr-adult": "c" * 64})
    assert data.manifest_sha256 == "a" * 64  # the primary (first) folder's
    assert TrainingDataMeta.from_dict(data.to_dict()) == data
    assert list(TrainingDataMeta.from_dict(data.to_dict()).manifests) == ["/data/cxr", "/data/cxr-adult"]
