"""Training scales past one process with PyTorch's own engine: the worker's training command (the
job's config as a JSON file) under `torchrun --standalone --nproc_per_node 2` (DistributedDataParallel,
gloo on CPU) runs a few real steps on real films and writes a checkpoint that records both processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from app.config import Settings
from app.services.training import TrainingParams
from app.worker import job_train_config, train_command
from ml.checkpoints import read_meta
from tests.support.training import write_tiny_manifest


def test_two_process_cpu_ddp_job(cxr_data_dir: Path, tmp_path: Path) -> None:
    data = write_tiny_manifest(cxr_data_dir, tmp_path / "tiny")
    settings = Settings(data_dir=tmp_path / "var", train_nproc=2, train_max_steps=2, train_device="cpu")
    params = TrainingParams(architecture="cnnx", scenario="s1", epochs=1, batch_size=2)
    out, events, config_file = tmp_path / "out", tmp_path / "events.jsonl", tmp_path / "train-config.json"
    config = job_train_config(params, settings, dataset_dirs=[data], out=out)
    assert (config.arch, config.scenario, config.epochs, config.batch_size) == ("cnnx", "s1", 1, 2)
    assert (config.max_steps_per_epoch, config.device, config.input_mode) == (2, "cpu", "full")  # the worker's cap
    cropped = job_train_config(
        params.model_copy(update={"input_mode": "lung-crop"}), settings, dataset_dirs=[data], out=out
    )
    assert cropped.input_mode == "lung-crop"
    config_file.write_text(config.to_json())
    command = train_command(config_file, settings, events=events)
    assert command[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert command[-5:] == ["train", "--config", str(config_file), "--events", str(events)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    meta = read_meta(out / "best.pt")
    assert meta.world_size == 2 and meta.arch == "cnnx" and meta.scenario == "s1"
    assert meta.train_config == config.to_dict()  # the whole config, as handed over
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [e["type"] for e in lines]
    # Only rank 0 reports: one start, its 2 steps (each rank trains on its half of the films), one epoch, one end.
    assert kinds == ["start", "step", "step", "epoch", "end"]
    assert lines[0]["steps_per_epoch"] == 2 and lines[2]["progress"] == 1.0
