"""The command line as a user meets it: `archs`, and clear `error:` lines (exit 2, no traceback) for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml.cli import main
from ml.registry import get_arch, list_archs

CLI = str(Path(sys.executable).with_name("cxr-review"))


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CXR_TORCH_THREADS": "1", **extra}


def run_cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def test_archs_lists_every_architecture_with_its_facts(tmp_path: Path) -> None:
    weights, torch_home, hf_home = tmp_path / "weights", tmp_path / "torch", tmp_path / "hf"
    for d in (weights, torch_home, hf_home):
        d.mkdir()
    (weights / "resnet18-f37072fd.pth").write_bytes(b"")  # only resnet18's ImageNet file is "present"
    proc = run_cli(
        "archs", CXR_PRETRAINED_DIR=str(weights), TORCH_HOME=str(torch_home), HF_HOME=str(hf_home), HF_HUB_OFFLINE="1"
    )
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.strip().splitlines()
    assert header.split() == ["name", "input", "params", "cam", "method", "cam", "layer", "pretrained"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert list(rows) == list_archs() and len(rows) == 13
    for name, (_, size, params, method, layer, pretrained) in rows.items():
        spec = get_arch(name)
        assert int(size) == spec.input_size
        assert method == spec.cam_method and layer == spec.cam_layer
        assert int(params.replace(",", "")) > 500_000
        expected = "n/a" if spec.pretrained_weights is None else ("yes" if name == "resnet18" else "no")
        assert pretrained == expected, name
    for name in ("cnnx", "squeezenet1_1"):  # the two cheap ones, counted here
        model = get_arch(name).build(pretrained=False)
        assert int(rows[name][2].replace(",", "")) == sum(p.numel() for p in model.parameters())
    assert 1_300_000 <= int(rows["cnnx"][2].replace(",", "")) <= 1_500_000


def test_pretrained_without_weights_fails_clearly_and_fast(
    small_dataset: Path, tmp_path: Path, unresponsive_proxy: str
) -> None:
    weights, torch_home = tmp_path / "weights", tmp_path / "torch"
    weights.mkdir()
    torch_home.mkdir()
    started = time.monotonic()
    proc = run_cli(
        "train",
        "--arch",
        "resnet18",
        "--pretrained",
        "--data",
        str(small_dataset),
        "--out",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "1",
        "--input-size",
        "64",
        timeout=120,
        CXR_PRETRAINED_DIR=str(weights),
        TORCH_HOME=str(torch_home),
        CXR_DOWNLOAD_TIMEOUT="2",
    )
    assert time.monotonic() - started < 90
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1
    assert "ImageNet weights ResNet18_Weights.IMAGENET1K_V1 are not available" in error[0]
    assert f"put it at {weights / 'resnet18-f37072fd.pth'}" in error[0]
    assert "--no-pretrained" in error[0]
    assert not (tmp_path / "out" / "best.pt").exists()


def test_python_dash_m_ml_offers_the_ml_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "ml", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("archs", "train", "evaluate", "benchmark"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--arch", "resnet18", "--out", "x", "--epochs", "0"], "argument --epochs: must be > 0, got 0"),
        (["train", "--arch", "resnet18", "--out", "x", "--batch-size", "many"], "'many' is not an integer"),
        (["train", "--arch", "resnet18", "--out", "x", "--lr", "-1"], "argument --lr: must be > 0"),
        (["train", "--arch", "resnet18", "--out", "x", "--scenario", "s4"], "invalid choice: 's4'"),
        (["train", "--out", "x"], "the following arguments are required: --arch"),
        (["benchmark", "--archs", "cnnx", "--out", "x", "--epochs", "-2"], "argument --epochs: must be > 0"),
        (["train", "--arch", "resnet18", "--out", "x", "--input-mode", "lungs"], "invalid choice: 'lungs'"),
        (["train", "--arch", "resnet18", "--out", "x", "--crop-margin", "2"], "--crop-margin: must be between 0 and 1"),
        (["train", "--arch", "resnet18", "--out", "x", "--label-smoothing", "-0.1"], "must be between 0 and 1"),
        (["train", "--arch", "resnet18", "--out", "x", "--workers", "-1"], "argument --workers: must be ≥ 0"),
        (["train", "--arch", "resnet18", "--out", "x", "--warmup-epochs", "-1"], "--warmup-epochs: must be ≥ 0"),
        (["evaluate", "--lung-threshold", "1.5"], "--lung-threshold: must be between 0 and 1"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--arch", "lenet", "--out", "{tmp}/o"], "unknown architecture 'lenet'; known: alexnet, cnnx"),
        (["train", "--arch", "cnnx", "--input-size", "64", "--out", "{tmp}/o"], "cnnx needs input size 180"),
        (["train", "--arch", "cnnx", "--pretrained", "--out", "{tmp}/o"], "cnnx has no ImageNet weights"),
        (["train", "--arch", "cnnx", "--data", "{tmp}", "--out", "{tmp}/o"], "no manifest.csv in"),
        (["benchmark", "--archs", "cnnx,lenet", "--out", "{tmp}/b"], "unknown architecture(s): lenet; known:"),
        (["benchmark", "--archs", ",", "--out", "{tmp}/b"], "unknown architecture(s): (none given)"),
        (
            ["benchmark", "--archs", "cnnx,resnet18", "--input-size", "96", "--out", "{tmp}/b"],
            "cnnx needs input size 180",
        ),
        (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "checkpoint not found: "),
        (["evaluate", "--data", "{tmp}"], "no manifest.csv in"),
        (["evaluate", "--data", "{small}", "--data", "{small}"], "dataset folder given twice"),
        (
            ["train", "--arch", "resnet18", "--lr-schedule", "onecycle", "--warmup-epochs", "1", "--out", "{tmp}/o"],
            "its own warm-up",
        ),
        (["evaluate", "--data", "{small}", "--split", "validation"], "split 'validation' of"),
        (["evaluate", "--data", "{small}", "--lungseg-checkpoint", "{tmp}/none.pt"], "none.pt"),
    ],
)
def test_user_errors_are_error_lines_with_exit_2(
    argv: list[str], message: str, tmp_path: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(tmp=tmp_path, small=small_dataset) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.err.count("\n") == 1, "one line, no traceback"
    assert not (tmp_path / "o").exists() and not (tmp_path / "b" / "comparison.json").exists()
