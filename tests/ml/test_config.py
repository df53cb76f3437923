"""`TrainConfig` is the one specification of a training run: every field is a `train` option, a JSON
config file can hold any of them (the command line overrides it), bad files are clear `error:` lines,
and the config a checkpoint records, fed back with `--config`, is the same run again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ml.checkpoints import read_meta
from ml.cli import build_parser, config_from_args, main
from ml.config import (
    INPUT_MODE_CHOICES,
    INTENSITY_CHOICES,
    SCENARIO_CHOICES,
    ConfigError,
    TrainConfig,
    config_fields,
)
from ml.data import SCENARIOS
from ml.lung_crop import INPUT_MODES
from ml.transforms import INTENSITY_MODES


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("field", config_fields(), ids=lambda f: f.name)
def test_every_field_is_a_train_option(field: Any, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text("train", capsys)
    assert f"{field.flag} " in text or f"{field.flag}," in text or f"{field.flag}\n" in text, field.flag
    if field.kind == "bool":
        assert "--no-" + field.flag.removeprefix("--") in text
    for value in field.static_choices or ():
        assert value in text
    # the option parses into the field: given on the command line, it reaches the config
    args = build_parser().parse_args(["train", field.flag, *sample_argument(field)])
    assert hasattr(args, field.name)


def sample_argument(field: Any) -> list[str]:
    if field.kind == "bool":
        return []
    if field.static_choices:
        return [next(iter(field.static_choices))]
    if field.kind in ("int", "float"):
        low = field.option.minimum if field.option.minimum is not None else 1
        return [str(int(low)) if field.kind == "int" else str(float(low))]
    return ["x"]


def test_fixed_choices_agree_with_the_code_that_uses_them() -> None:
    assert list(SCENARIO_CHOICES) == list(SCENARIOS)
    assert tuple(INPUT_MODE_CHOICES) == INPUT_MODES
    assert tuple(INTENSITY_CHOICES) == INTENSITY_MODES


def test_every_field_declares_its_exposure_and_hparams_leave_out_machine_local_ones() -> None:
    config = TrainConfig(arch="cnnx", data_dirs=["d"], out_dir="o")
    local = {f.name for f in config_fields() if f.option.expose == "local"}
    assert {"data_dirs", "out_dir", "device", "threads", "num_workers", "resume", "lungseg_checkpoint"} <= local
    assert set(config.hparams()) == {f.name for f in config_fields()} - local
    assert set(config.to_dict()) == {f.name for f in config_fields()}


def write_config(path: Path, values: dict[str, Any]) -> str:
    path.write_text(json.dumps(values))
    return str(path)


def parse(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(argv))


def test_command_line_options_override_the_config_file(tmp_path: Path, small_dataset: Path) -> None:
    file = write_config(
        tmp_path / "c.json",
        {"arch": "resnet18", "data_dirs": [str(small_dataset)], "out_dir": "o", "epochs": 5, "batch_size": 4,
         "augment": False, "extra_train_dirs": ["a"]},
    )  # fmt: skip
    config = parse(["train", "--config", file, "--epochs", "7", "--augment", "--out", str(tmp_path / "o2")])
    assert (config.epochs, config.batch_size, config.augment) == (7, 4, True)
    assert config.out_dir == str(tmp_path / "o2") and config.data_dirs == [str(small_dataset)]
    assert config.extra_train_dirs == ["a"] and config.lr == 3e-4  # from the file; a field's default
    assert parse(["train", "--config", file, "--extra-train-dir", "b"]).extra_train_dirs == ["b"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"arch": "cnnx", "out_dir": "o", "epochz": 3}, "unknown option(s) epochz; known: arch, data_dirs"),
        ({"arch": "cnnx", "out_dir": "o", "epochs": "3"}, "epochs must be an integer, got '3'"),
        ({"arch": "cnnx", "out_dir": "o", "epochs": 2.5}, "epochs must be an integer"),
        ({"arch": "cnnx", "out_dir": "o", "pretrained": "yes"}, "pretrained must be true or false"),
        ({"arch": "cnnx", "out_dir": "o", "input_size": None, "threads": "4"}, "threads must be an integer or null"),
        ({"arch": "cnnx", "out_dir": "o", "epochs": 0}, "epochs must be > 0, got 0"),
        ({"arch": "cnnx", "out_dir": "o", "lr": 2}, "learning rate must be ≤ 1, got 2"),
        (
            {"arch": "cnnx", "out_dir": "o", "input_mode": "lungs"},
            "input mode must be one of full, lung-crop",
        ),
        ({"arch": "lenet", "out_dir": "o"}, "unknown architecture 'lenet'"),
    ],
)
def test_bad_config_files_are_error_lines(
    values: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_config(tmp_path / "bad.json", values)
    assert main(["train", "--config", file]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_unreadable_or_non_object_config_files_are_error_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    for name, message in (("list.json", "must hold a JSON object"), ("broken.json", "is not JSON"),
                          ("missing.json", "cannot read config")):  # fmt: skip
        assert main(["train", "--arch", "cnnx", "--out", "o", "--config", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err


def test_a_required_option_missing_from_both_is_an_argparse_error(tmp_path: Path, capsys) -> None:
    file = write_config(tmp_path / "c.json", {"arch": "cnnx"})
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", file])
    assert info.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="missing required option"):
        TrainConfig.from_dict({"arch": "cnnx"})


def test_the_recorded_config_fed_back_with_config_reproduces_the_run(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    first = ["train", "--arch", "resnet18", "--data", str(small_dataset), "--out", str(out), "--epochs", "1",
             "--max-steps-per-epoch", "2", "--batch-size", "4", "--input-size", "32", "--no-augment", "--seed", "5",
             "--lr", "0.002", "--threads", "1"]  # fmt: skip
    assert main(first) == 0, capsys.readouterr().err
    recorded = read_meta(out / "best.pt").train_config
    assert recorded == {**TrainConfig(arch="resnet18", data_dirs=["d"], out_dir="o").to_dict(), **recorded}
    assert (recorded["seed"], recorded["lr"], recorded["input_size"], recorded["augment"]) == (5, 0.002, 32, False)
    first_history = json.loads((out / "history.json").read_text())

    config_file = tmp_path / "train-config.json"
    config_file.write_text(json.dumps(recorded))
    shutil.rmtree(out)  # the same run, from scratch, into the same folder
    assert main(["train", "--config", str(config_file)]) == 0, capsys.readouterr().err
    assert read_meta(out / "best.pt").train_config == recorded
    again = json.loads((out / "history.json").read_text())
    assert [h["train_loss"] for h in again] == [h["train_loss"] for h in first_history]
    assert TrainConfig.from_json(config_file).to_dict() == recorded
