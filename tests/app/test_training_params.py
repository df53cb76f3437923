"""Every training option is written once, in `ml.config.TrainConfig`: walking its fields finds each one
in the `train` command's help, and each public one — under its public name, with its type, default,
bounds, choices and help — in the OpenAPI schema of `POST /api/v1/training-jobs` and as an input of
the admin training form; the others (machine-local or CLI-only) are in neither, on purpose."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.services.training_params import JobParams, TrainingParams, form_defaults, form_values
from ml.cli import build_parser
from ml.config import ConfigField, config_fields
from tests.app.conftest import Env

JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array"}


@pytest.fixture(scope="module")
def request_schema(env: Env) -> dict[str, Any]:
    spec = env.client.get("/openapi.json", headers=env.auth("admin")).json()
    body = spec["paths"]["/api/v1/training-jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]


@pytest.fixture(scope="module")
def form_page(env: Env) -> str:
    page = env.client.get("/admin/training", headers=env.auth("admin"))
    assert page.status_code == 200
    form = re.search(r'<form [^>]*id="job-form".*?</form>', page.text, re.S)
    assert form is not None
    return form.group(0)


@pytest.fixture(scope="module")
def train_help() -> str:
    sub = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    return str(sub.format_help())


def schema_of(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional property."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    return {**prop, **branches[0]}


@pytest.mark.parametrize("field", config_fields(), ids=lambda f: f.name)
def test_every_training_option_is_offered_where_its_exposure_says(
    field: ConfigField, request_schema: dict[str, Any], form_page: str, train_help: str
) -> None:
    assert re.search(rf"{re.escape(field.flag)}\b", train_help), f"{field.flag} missing from `train --help`"
    properties = request_schema["properties"]
    names_in_form = set(re.findall(r'name="([a-z_]+)"', form_page))
    if not field.exposed:
        assert field.option.expose in ("cli", "local")
        assert field.public not in properties and field.name not in properties, "not offered to admins"
        assert field.public not in names_in_form and field.name not in names_in_form
        return
    prop = schema_of(properties[field.public])
    assert prop["type"] == JSON_TYPES[field.kind]
    assert field.option.help in prop["description"]
    assert (field.public in request_schema.get("required", [])) == field.required
    if not field.required:
        assert prop.get("default") == field.default  # (OpenAPI leaves a null default out)
    o = field.option
    for key, bound in (("minimum", o.minimum), ("maximum", o.maximum), ("exclusiveMinimum", o.exclusive_minimum)):
        assert prop.get(key) == bound, key
    choices = field.choices()
    if choices is not None:
        assert prop["enum"] == list(choices)
    # and the admin form has an input for it, with the same bounds and choices
    assert field.public in names_in_form, f"{field.public} missing from the admin form"
    inputs = re.findall(rf'<(?:input|select)[^>]*name="{field.public}"[^>]*>', form_page)
    if field.kind in ("int", "float"):
        (tag,) = inputs
        low = o.minimum if o.minimum is not None else o.exclusive_minimum
        assert (f'min="{low}"' in tag) == (low is not None) and (f'max="{o.maximum}"' in tag) == (o.maximum is not None)
    for value in choices or ():
        assert f'value="{value}"' in form_page


def test_the_job_options_are_in_the_schema_and_the_form(request_schema: dict[str, Any], form_page: str) -> None:
    for name in JobParams.model_fields:
        assert name in request_schema["properties"] and f'name="{name}"' in form_page
    expected = {f.public for f in config_fields() if f.exposed} | set(JobParams.model_fields)
    assert set(request_schema["properties"]) == expected


def test_form_defaults_and_posted_values_follow_the_spec() -> None:
    defaults = form_defaults()
    assert defaults["architecture"] == "resnet18" and defaults["epochs"] == 20 and defaults["learning_rate"] == 3e-4
    assert TrainingParams.model_validate(defaults).train_options()["arch"] == "resnet18"
    posted = {"architecture": "cnnx", "epochs": "3", "max_steps_per_epoch": " ", "include_reviewed": "on"}
    values = form_values(posted)
    assert values["pretrained"] is False and values["include_reviewed"] is True  # checkboxes: sent only when ticked
    assert values["max_steps_per_epoch"] is None and "input_mode" not in values  # blank → none; not sent → default
    params = TrainingParams.model_validate(values)
    config = params.train_config(data_dirs=["d"], out_dir="o")
    assert (config.arch, config.epochs, config.input_mode, config.lr) == ("cnnx", 3, "full", 3e-4)
