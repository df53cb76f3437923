"""`TrainConfig`: the one specification of a training run.

Every field says, as data, its type (the annotation), default, bounds or choices, help text and
exposure (`option(...)`). Everything else is derived from it:

- the `train` and `benchmark` command options and `--config FILE` (`ml.cli`);
- the request schema of `POST /api/v1/training-jobs` and the admin training form
  (`app.services.training_params`);
- the JSON file a training worker hands its trainer (`to_json` / `from_json`);
- the checkpoint's `train_config` entry (the whole config, as run) and its `hparams` (the
  hyper-parameters only, without machine-local fields).

Adding a training option is one `option(...)` field here plus its behaviour in `ml/train.py`.

Exposure:
- `public`: offered to REST and admin-form users (under `public_name` where the job API has its
  own name, e.g. `learning_rate` for `lr`);
- `cli`: a hyper-parameter offered on the command line only (not offered to admins yet);
- `local`: machine-local (paths, device, threads, loader workers, resuming): command line only,
  and not a hyper-parameter of the model (left out of `hparams`).

This module imports neither torch nor the web service: the CLI builds its parser from it quickly and
the app builds its schema from it. Checks that need the registry import it when they run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

Exposure = Literal["public", "cli", "local"]
Kind = Literal["str", "int", "float", "bool", "list"]
Choices = Mapping[str, str]
"""Allowed values → what each one means (shown in help texts and the admin form)."""

SCENARIO_CHOICES: Choices = {
    "s1": "normal vs COVID-19",
    "s2": "all four classes, all training data",
    "s3": "four classes, at most 350 training films per non-COVID class",
}
INPUT_MODE_CHOICES: Choices = {
    "full": "the whole film (as in the paper)",
    "lung-crop": "the film cut to its lungs' bounding box plus the crop margin (bundled lung segmenter), "
    "so text markers and devices outside the chest are not seen",
}
INTENSITY_CHOICES: Choices = {"raw": "none", "equalize": "histogram equalisation"}
LR_SCHEDULE_CHOICES: Choices = {
    "constant": "the paper's constant rate",
    "cosine": "cosine decay to 0",
    "onecycle": "torch's OneCycleLR: warm-up to the learning rate, then anneal (no warmup epochs)",
}
OPTIMIZER_CHOICES: Choices = {
    "adam": "Adam (the paper; weight decay is L2)",
    "adamw": "AdamW (decoupled weight decay)",
}
CLASS_WEIGHTING_CHOICES: Choices = {
    "inverse-frequency": "each class weighted N / (K · n_c), so every class counts equally",
    "none": "every film counts the same",
}


class ConfigError(ValueError):
    """A config that cannot be a training run: unknown keys, wrong types, values out of bounds."""


def _architectures() -> Choices:
    from ml.registry import get_arch, list_archs

    return {name: f"{get_arch(name).input_size} px" for name in list_archs()}


@dataclass(frozen=True)
class Option:
    """What one field of `TrainConfig` is, beyond its type and default."""

    help: str
    expose: Exposure
    public_name: str | None = None
    """Its name in the job API and the admin form when that differs from the field's."""
    label: str | None = None
    """A short human name (messages, form labels); default: the public name in words."""
    flag: str | None = None
    """Its command-line flag when that differs from `--field-name`."""
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    choices: Choices | Callable[[], Choices] | None = None
    """Allowed values with their meaning; a callable for choices known at run time (the registry)."""
    example: Any = None
    """A sensible value to suggest where the field has no default (form preselection, OpenAPI)."""


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A `TrainConfig` field: `dataclasses.field` with its `Option` as metadata."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": Option(**spec)})


@dataclass(frozen=True)
class ConfigField:
    """One field of the spec, resolved: name, kind, whether None is allowed, default, `Option`."""

    name: str
    kind: Kind
    optional: bool
    required: bool
    default: Any
    option: Option

    @property
    def public(self) -> str:
        return self.option.public_name or self.name

    @property
    def label(self) -> str:
        return self.option.label or self.public.replace("_", " ")

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def exposed(self) -> bool:
        return self.option.expose == "public"

    def choices(self) -> Choices | None:
        c = self.option.choices
        return c() if callable(c) else c

    @property
    def static_choices(self) -> Choices | None:
        c = self.option.choices
        return None if callable(c) else c

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.kind == "bool":
            return "on" if self.default else "off"
        return "none" if self.default in (None, []) else str(self.default)

    def bound_rule(self, value: float | None = None) -> str | None:
        """The bounds in words, e.g. 'between 0 and 1', '> 0', '≥ 0'. Given a value, the side it breaks.

        A two-sided inclusive range is said whole; otherwise the broken side is named. An integer's
        lower bound of 1 is said '> 0' (a positive count)."""
        o = self.option
        lower = None
        if o.exclusive_minimum is not None:
            lower = f"> {_num(o.exclusive_minimum)}"
        elif o.minimum is not None:
            lower = "> 0" if self.kind == "int" and o.minimum == 1 else f"≥ {_num(o.minimum)}"
        upper = f"≤ {_num(o.maximum)}" if o.maximum is not None else None
        if o.minimum is not None and o.maximum is not None and lower and lower.startswith("≥"):
            return f"between {_num(o.minimum)} and {_num(o.maximum)}"
        if value is not None and upper and o.maximum is not None and value > o.maximum:
            return upper
        if value is not None and lower:
            return lower
        return " and ".join(r for r in (lower, upper) if r) or None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` as 'must be ...' (bounds, finiteness, fixed choices), else None."""
        if value is None:
            return None if self.optional else "must be given"
        if self.kind == "float" and not math.isfinite(value):
            return "must be a finite number"
        if self.kind in ("int", "float"):
            o = self.option
            below = (o.minimum is not None and value < o.minimum) or (
                o.exclusive_minimum is not None and value <= o.exclusive_minimum
            )
            if below or (o.maximum is not None and value > o.maximum):
                return f"must be {self.bound_rule(value)}, got {_num(value)}"
        choices = self.static_choices
        if choices is not None and value not in choices:
            return f"must be one of {', '.join(choices)}, got {value!r}"
        return None

    def check(self, value: Any) -> None:
        """Raise `ConfigError` with a message naming the field if `value` breaks its bounds or choices."""
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(f"{self.label} {problem}")
        choices = self.choices()
        if value is not None and choices is not None and value not in choices:  # run-time choices (registry)
            raise ConfigError(f"unknown {self.label} {value!r}; known: {', '.join(choices)}")

    def coerce(self, value: Any) -> Any:
        """`value` (as read from JSON) as this field's type; `ConfigError` if it is not one."""
        if value is None and self.optional:
            return None
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[self.kind]
        if not ok:
            noun = {"str": "a string", "bool": "true or false", "int": "an integer", "float": "a number",
                    "list": "a list of strings"}[self.kind]  # fmt: skip
            raise ConfigError(f"{self.name} must be {noun}{' or null' if self.optional else ''}, got {value!r}")
        return float(value) if self.kind == "float" else (list(value) if self.kind == "list" else value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


@dataclass
class TrainConfig:
    """One training run: what `ml.train.train` needs, and all it needs."""

    arch: str = option(
        help="a registry name (`cxr-review archs` lists them)",
        expose="public",
        public_name="architecture",
        choices=_architectures,
        example="resnet18",
    )
    data_dirs: list[str] = option(
        help="dataset folder with manifest.csv; repeat for several, read together (their train/val splits are used)",
        expose="local",
        flag="--data",
    )
    out_dir: str = option(help="output folder (best.pt, last.pt, history.json)", expose="local", flag="--out")
    scenario: str = option("s2", help="the paper's class scenario", expose="public", choices=SCENARIO_CHOICES)
    epochs: int = option(20, help="epochs to train (paper: 20)", expose="public", minimum=1, maximum=1000)
    batch_size: int = option(15, help="films per step (paper: 15)", expose="public", minimum=1, maximum=1024)
    lr: float = option(
        3e-4,
        help="initial learning rate (Adam; paper: 3e-4)",
        expose="public",
        public_name="learning_rate",
        exclusive_minimum=0,
        maximum=1.0,
    )
    weight_decay: float = option(0.0, help="weight decay of the optimiser", expose="cli", minimum=0)
    lr_schedule: str = option("constant", help="learning rate over the run", expose="cli", choices=LR_SCHEDULE_CHOICES)
    optimizer: str = option("adam", help="the optimiser", expose="cli", choices=OPTIMIZER_CHOICES)
    warmup_epochs: int = option(0, help="epochs of linear learning rate warm-up", expose="cli", minimum=0)
    label_smoothing: float = option(0.0, help="cross-entropy label smoothing", expose="cli", minimum=0, maximum=1)
    seed: int = option(
        0, help="seed of the shuffling, augmentation and initialisation", expose="public", minimum=0, maximum=2**31 - 1
    )
    pretrained: bool = option(
        False,
        help="start from ImageNet weights (transfer learning; the weights must be on this machine or downloadable)",
        label="Start from ImageNet weights (transfer learning)",
        expose="public",
    )
    input_size: int | None = option(
        None, help="override the architecture's input size (px)", expose="cli", minimum=32, maximum=1024
    )
    augment: bool = option(True, help="light affine/contrast augmentation of training films", expose="cli")
    class_weighting: str = option(
        "inverse-frequency", help="class weights of the loss", expose="cli", choices=CLASS_WEIGHTING_CHOICES
    )
    max_steps_per_epoch: int | None = option(
        None,
        help="cap the steps per epoch (smoke and trial runs; none: the whole training set)",
        label="steps per epoch at most",
        expose="public",
        minimum=1,
    )
    num_workers: int = option(0, help="data loader worker processes", expose="local", flag="--workers", minimum=0)
    half_checkpoint: bool = option(False, help="store best.pt weights in float16", expose="cli", flag="--half")
    calibrate: bool = option(
        True,
        help="fit best.pt's error risk, temperature and warning cut-offs on this run's train/val splits at the end "
        "(ml/calibrate.py; one more pass over train and val)",
        expose="cli",
    )
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...", expose="local")
    resume: bool = option(False, help="continue from OUT/last.pt if present", expose="local")
    channels_last: bool = option(
        True, help="channels-last memory format (~20 % faster convolutions on CPU and tensor cores)", expose="local"
    )
    threads: int | None = option(
        None,
        help="torch CPU threads (none: torch's choice; one thread is faster on a busy machine)",
        expose="local",
        minimum=1,
    )
    intensity: str = option(
        "raw", help="grey-level standardisation after resizing", expose="cli", choices=INTENSITY_CHOICES
    )
    extra_train_dirs: list[str] = option(
        default_factory=list,
        help="another manifest folder whose train split is added to the training set (repeatable)",
        expose="local",
        flag="--extra-train-dir",
    )
    input_mode: str = option("full", help="what the network sees", expose="public", choices=INPUT_MODE_CHOICES)
    crop_margin: float = option(
        0.1,
        help="lung-crop: margin added on every side, as a fraction of the lung box's height/width",
        expose="cli",
        minimum=0,
        maximum=1,
    )
    lungseg_checkpoint: str | None = option(
        None,
        help="lung-crop and explanation loss: lung segmentation checkpoint (none: the bundled ml/bundled/lungseg.pt)",
        expose="local",
    )
    explanation_weight: float = option(
        0.0,
        help="weight λ of the explanation loss: the share of the true class's positive CAM evidence outside "
        "the film's allowed region (lungs plus margin; reviewers' boxes), added to the classification loss "
        "(0: off; see ml.explanation)",
        label="explanation loss weight (λ)",
        expose="public",
        minimum=0,
        maximum=100,
    )
    explanation_margin: float = option(
        0.04,
        help="explanation loss: the lung mask is dilated by this fraction of the input side, so hila and lung "
        "borders count as allowed",
        expose="cli",
        minimum=0,
        maximum=0.5,
    )
    dilate_last_stage: bool = option(
        False,
        help="ResNets: last stage with stride 1 and dilation 2, so the CAMs are 2x finer (14x14 at 224 px); "
        "a normal checkpoint's weights fit (see ml.network)",
        expose="cli",
    )
    init_checkpoint: str | None = option(
        None,
        help="start from this checkpoint's weights (same architecture) instead of a fresh network, e.g. to "
        "fine-tune a trained model with the explanation loss",
        expose="local",
    )

    # ------------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise `KeyError` (unknown architecture or scenario) or `ValueError` with a clear message."""
        from ml.data import get_scenario
        from ml.registry import get_arch

        spec = get_arch(self.arch)  # raises KeyError for unknown names
        get_scenario(self.scenario)
        for f in config_fields():
            f.check(getattr(self, f.name))
        if self.pretrained and spec.pretrained_weights is None:
            raise ValueError(f"{spec.name} has no ImageNet weights; train it from scratch (--no-pretrained)")
        if self.input_size is not None and spec.fixed_input_size and self.input_size != spec.input_size:
            raise ValueError(f"{spec.name} needs input size {spec.input_size}")
        if not self.data_dirs:
            raise ValueError("no dataset folder given")
        if self.lr_schedule == "onecycle" and self.warmup_epochs:
            raise ValueError("lr schedule 'onecycle' has its own warm-up: leave warmup epochs at 0")
        if self.dilate_last_stage:
            from ml.network import check_dilatable

            check_dilatable(spec)
        if self.init_checkpoint is not None:
            if self.pretrained:
                raise ValueError("init checkpoint and ImageNet weights both give the starting weights: choose one")
            if not Path(self.init_checkpoint).is_file():
                raise ValueError(f"init checkpoint {self.init_checkpoint} is not a file")
            from ml.checkpoints import read_meta

            found = read_meta(self.init_checkpoint).arch
            if found != spec.name:
                raise ValueError(f"init checkpoint {self.init_checkpoint} is a {found}; this run trains {spec.name}")

    # ----------------------------------------------------------------- conversions
    def hparams(self) -> dict[str, Any]:
        """The hyper-parameters: every field but the machine-local ones."""
        return {f.name: getattr(self, f.name) for f in config_fields() if f.option.expose != "local"}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready: what the checkpoint records as `train_config`."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from plain values (a JSON object): `ConfigError` for unknown keys, missing required
        fields and values of the wrong type. Bounds and choices are `validate()`'s."""
        checked = config_values(values)
        missing = [f.name for f in config_fields() if f.required and f.name not in checked]
        if missing:
            raise ConfigError(f"missing required option(s): {', '.join(missing)}")
        return cls(**checked)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a config file written by `to_json` (or by hand). `ConfigError` when it is not one."""
        values = read_config_file(path)
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from None


def config_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Some of a config's fields, type-checked (ints are accepted for floats): `ConfigError` for unknown
    keys and values of the wrong type."""
    fields = {f.name: f for f in config_fields()}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    return {name: fields[name].coerce(value) for name, value in values.items()}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options in a JSON config file (all or some of the fields), type-checked; `ConfigError` if
    it cannot be read, is not a JSON object, or holds unknown keys or values of the wrong type."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"config {path} is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must hold a JSON object of options, got {type(values).__name__}")
    try:
        return config_values(values)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None


def _kind(annotation: Any) -> tuple[Kind, bool]:
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if typing.get_origin(annotation) is list:
        return "list", optional
    kinds: dict[Any, Kind] = {str: "str", int: "int", float: "float", bool: "bool"}
    return kinds[annotation], optional


@cache
def config_fields() -> tuple[ConfigField, ...]:
    """The fields of `TrainConfig` in declaration order, resolved."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        kind, optional = _kind(hints[f.name])
        required = f.default is MISSING and f.default_factory is MISSING
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out.append(ConfigField(f.name, kind, optional, required, None if required else default, f.metadata["option"]))
    return tuple(out)


def public_fields() -> tuple[ConfigField, ...]:
    """The fields offered to REST and admin-form users."""
    return tuple(f for f in config_fields() if f.exposed)
