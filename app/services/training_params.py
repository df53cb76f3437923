"""What an admin asks a training job for, derived from `ml.config.TrainConfig`.

`TrainingParams` — the request body of `POST /api/v1/training-jobs`, validated before anything is
queued (bad values → 422) — is generated from the spec's public fields under their public names
(`architecture`, `learning_rate`, ...) with their types, defaults, bounds, choices and help, so the
OpenAPI schema shows them all; `JobParams` adds what only a job has: `include_reviewed`, and
`datasets`, the job's choice among the service's configured dataset folders *by name* (`cxr`,
`cxr-adult`; `Settings.resolved_dataset_dirs`). The spec's `data_dirs` are paths, local to the
machine that trains, so a job never names a path: the worker turns the names into its own folders.
Names are checked against the configuration when the job is created (`training.create_job`).
`form_fields()` / `form_defaults()` / `form_values()` give the admin form the same fields. A new
public option in `ml/config.py` appears here, in the schema and in the form without an edit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ml.config import ConfigField, TrainConfig, public_fields

Widget = Literal["select", "radio", "checkbox", "checkboxes", "number"]


class JobParams(BaseModel):
    """The job's own options; `TrainingParams` adds the training options of `TrainConfig`."""

    model_config = ConfigDict(extra="forbid")

    include_reviewed: bool = Field(
        False,
        title="Add reviewed uploads (those with a reviewer diagnosis) to the training split",
        description="add uploads with a reviewer diagnosis to the training split (never val/test images)",
    )
    datasets: list[str] | None = Field(
        None,
        title="Datasets",
        description="the dataset folders to train, validate and test on, read together, by name: some of the "
        "service's configured ones (GET /api/v1/training-datasets; CXR_DATASET_DIRS); default: all of them",
        examples=[["cxr", "cxr-adult"]],
    )

    @field_validator("datasets")
    @classmethod
    def _datasets_named_once(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.strip() for name in value]
        if not names or not all(names):
            raise ValueError("choose at least one dataset (by name; leave the field out for all configured ones)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"dataset(s) {', '.join(twice)} named twice")
        return names

    def train_options(self) -> dict[str, Any]:
        """The training options asked for, under `TrainConfig`'s field names (`arch`, `lr`, ...)."""
        return {f.name: getattr(self, f.public) for f in public_fields()}

    def train_config(self, **local: Any) -> TrainConfig:
        """The run: the options asked for plus the machine-local fields (`data_dirs`, `out_dir`, ...)."""
        return TrainConfig(**{**self.train_options(), **local})

    @model_validator(mode="after")
    def _pretrained_possible(self) -> JobParams:
        from ml.registry import get_arch

        options = self.train_options()
        if options["pretrained"] and get_arch(options["arch"]).pretrained_weights is None:
            raise ValueError(f"{options['arch']} has no ImageNet weights; train it from scratch (pretrained=false)")
        return self


_KINDS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "list": list[str]}


def _describe(f: ConfigField) -> str:
    choices = f.static_choices
    meanings = "; ".join(f"{value}: {meaning}" for value, meaning in choices.items()) if choices else ""
    return f.option.help + (f" ({meanings})" if meanings else "")


def _checked(f: ConfigField) -> Any:
    """`f`'s checks beyond what the schema says (finite numbers, choices known at run time)."""

    def check(value: Any) -> Any:
        f.check(value)
        return value

    return AfterValidator(check)


def _request_field(f: ConfigField) -> tuple[Any, Any]:
    o = f.option
    annotation: Any = Literal[tuple(f.static_choices)] if f.static_choices else _KINDS[f.kind]
    if f.optional:
        annotation = annotation | None
    extra: dict[str, Any] = {}
    if callable(o.choices):  # the registry: listed in the schema, checked with a message naming the known ones
        choices = o.choices

        def extra_schema(schema: dict[str, Any]) -> None:
            schema["enum"] = list(choices())

        extra["json_schema_extra"] = extra_schema
    info = Field(
        ... if f.required else f.default,
        description=_describe(f),
        ge=o.minimum,
        gt=o.exclusive_minimum,
        le=o.maximum,
        examples=[o.example] if o.example is not None else None,
        **extra,
    )
    return Annotated[annotation, _checked(f)], info


if TYPE_CHECKING:  # the generated fields are not visible to the type checker; read them via train_options()
    TrainingParams = JobParams
else:
    TrainingParams = create_model(
        "TrainingParams",
        __base__=JobParams,
        __doc__="What an admin asks for. Validated before anything is queued (bad values → HTTP 422).",
        **{f.public: _request_field(f) for f in public_fields()},
    )


# ----------------------------------------------------------------------------- the admin form
@dataclass(frozen=True)
class FormField:
    """One input of the admin training form."""

    name: str
    label: str
    widget: Widget
    help: str = ""
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: str = "1"
    choices: list[tuple[str, str]] = field(default_factory=list)
    """(value, label) of a select or radio group."""

    @property
    def id(self) -> str:
        return "f-" + self.name.replace("_", "-")


def form_fields(architectures: list[dict[str, Any]], datasets: Sequence[str] = ()) -> list[FormField]:
    """The form's inputs: every public training option, then the job's own options. `architectures`
    are `architecture_choices()` rows (the registry, with whether ImageNet weights are here);
    `datasets` the configured dataset names (one checkbox each)."""
    out = []
    for f in public_fields():
        o = f.option
        label = f.label[:1].upper() + f.label[1:]
        if callable(o.choices):
            rows = [(a["name"], f"{a['name']} · {a['input_size']} px" + (" · ImageNet weights here"
                     if a.get("pretrained_available") else "")) for a in architectures]  # fmt: skip
            out.append(FormField(f.public, label, "select", o.help, f.required, choices=rows))
        elif f.static_choices:
            rows = [(value, f"{value} — {meaning}") for value, meaning in f.static_choices.items()]
            widget: Widget = "radio" if len(rows) <= 2 else "select"
            out.append(FormField(f.public, label, widget, o.help, f.required, choices=rows))
        elif f.kind == "bool":
            out.append(FormField(f.public, label, "checkbox", o.help))
        else:
            low = o.minimum if o.minimum is not None else o.exclusive_minimum
            out.append(FormField(f.public, label, "number", o.help, not f.optional, low, o.maximum,
                                 "1" if f.kind == "int" else "any"))  # fmt: skip
    for name, info in JobParams.model_fields.items():
        if name in MULTI_CHOICE:
            rows = [(d, d) for d in datasets]
            out.append(FormField(name, info.title or name, "checkboxes", info.description or "", choices=rows))
            continue
        assert info.annotation is bool, f"the form shows job options as checkboxes only, not {name}"
        out.append(FormField(name, info.title or name, "checkbox", info.description or ""))
    return out


MULTI_CHOICE = ("datasets",)
"""Job options the form shows as a group of checkboxes (one per value; posted as a list)."""


def form_defaults(datasets: Sequence[str] = ()) -> dict[str, Any]:
    """What the form shows before anything was typed: the fields' defaults (or examples); every
    configured dataset (`datasets`) ticked."""
    values: dict[str, Any] = {f.public: f.option.example if f.required else f.default for f in public_fields()}
    values.update({name: info.default for name, info in JobParams.model_fields.items()})
    values["datasets"] = list(datasets) or None
    return values


def form_values(posted: Mapping[str, Any]) -> dict[str, Any]:
    """The posted form as the values `TrainingParams` validates: a checkbox is sent only when ticked, a
    blank optional number is None, a field not sent at all gets its default; a checkbox group
    (`MULTI_CHOICE`) is posted as the list of its ticked values (with a blank one, so that a group with
    nothing ticked is sent too, and refused, rather than taken for its default)."""
    values: dict[str, Any] = {}
    for f in public_fields():
        if f.kind == "bool":
            values[f.public] = f.public in posted
        elif f.public in posted:
            text = posted[f.public]
            values[f.public] = (text.strip() or None) if f.optional else text
    for name in JobParams.model_fields:
        if name in MULTI_CHOICE:
            if name in posted:  # the form always sends the group (a blank hidden input), ticked or not
                ticked = posted[name]
                values[name] = [v for v in ([ticked] if isinstance(ticked, str) else ticked) if v.strip()]
        else:
            values[name] = name in posted
    return values
