"""Training scales past one process with PyTorch's own engine: the worker's training command under
`torchrun --standalone --nproc_per_node 2` (DistributedDataParallel, gloo on CPU) runs a few real
steps on real films and writes a checkpoint that records both processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from app.config import Settings
from app.services.training import TrainingParams
from app.worker import train_command
from ml.checkpoints import read_meta
from tests.support.training import write_tiny_manifest


def test_two_process_cpu_ddp_job(cxr_data_dir: Path, tmp_path: Path) -> None:
    data = write_tiny_manifest(cxr_data_dir, tmp_path / "tiny")
    settings = Settings(data_dir=tmp_path / "var", train_nproc=2, train_max_steps=2, train_device="cpu")
    params = TrainingParams(architecture="cnnx", scenario="s1", epochs=1, batch_size=2)
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    command = train_command(params, settings, dataset_dirs=[data], out=out, events=events)
    assert command[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert "--input-mode" not in command
    cropped = train_command(
        params.model_copy(update={"input_mode": "lung-crop"}), settings, dataset_dirs=[data], out=out, events=events
    )
    assert cropped[cropped.index("--input-mode") + 1] == "lung-crop"

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    meta = read_meta(out / "best.pt")
    assert meta["world_size"] == 2 and meta["arch"] == "cnnx" and meta["scenario"] == "s1"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [e["type"] for e in lines]
    # Only rank 0 reports: one start, its 2 steps (each rank trains on its half of the films), one epoch, one end.
    assert kinds == ["start", "step", "step", "epoch", "end"]
    assert lines[0]["steps_per_epoch"] == 2 and lines[2]["progress"] == 1.0
