"""The REST contract, exact: Schemathesis (every check, every phase but the long stateful one) runs
against the app with a reviewer's and an admin's token, and any 5xx, undocumented status code or
header, or response that breaks its schema fails the test. A bounded number of examples per
operation keeps it within the suite's time budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from tests.app.conftest import Env, start_env

MAX_EXAMPLES = 10
# Schema-valid requests the server refuses for reasons a JSON Schema cannot state: an upload is read by
# its content (random bytes are not a film), ImageNet weights exist for some architectures only, and a
# verdict's boxes need x0 < x1 and y0 < y1 (JSON Schema cannot compare two items of one array).
CONTENT_CHECKED = (
    "POST /api/v1/predictions",
    "POST /api/v1/training-jobs",
    "POST /api/v1/predictions/{prediction_id}/verdicts",
)


@pytest.fixture(scope="module")
def contract_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with ExitStack() as stack:
        yield start_env(stack, tmp_path_factory.mktemp("contract"))


def run_schemathesis(env: Env, who: str) -> dict[str, list[str]]:
    """Failures by operation label (each: the check's name and its message)."""
    config = SchemathesisConfig.from_dict(
        {
            "headers": env.auth(who),
            "seed": 1,
            "cache": {"enabled": False},  # no .schemathesis/ folder in the working tree
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"},
            "checks": {"enabled": True},
            "phases": {"stateful": {"enabled": False}},
            "operations": [{"include-name": label, "checks": {"positive_data_acceptance": {"enabled": False}}}
                           for label in CONTENT_CHECKED],
        }
    )  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/openapi.json", env.app, config=config, headers=env.auth(who))
    failures: dict[str, list[str]] = {}
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status == Status.FAILURE:
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        text = f"{node.name}: {failure.title}: {failure.message}"[:600]
                        failures.setdefault(event.recorder.label, [])
                        if text not in failures[event.recorder.label]:
                            failures[event.recorder.label].append(text)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.setdefault("(schemathesis error)", []).append(str(event)[:600])
    return failures


@pytest.mark.parametrize("who", ["reviewer", "admin"])
def test_every_operation_answers_as_documented(contract_env: Env, who: str) -> None:
    failures = run_schemathesis(contract_env, who)
    assert not failures, "\n".join(f"{label}\n  " + "\n  ".join(items) for label, items in failures.items())


def test_the_schema_states_the_upload_limits_the_errors_and_the_links(contract_env: Env) -> None:
    schema = contract_env.client.get("/openapi.json", headers=contract_env.auth("reviewer")).json()
    upload = schema["paths"]["/api/v1/predictions"]["post"]
    body = upload["requestBody"]["content"]["multipart/form-data"]
    assert "image/png" in body["encoding"]["file"]["contentType"]
    ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
    file_part = schema["components"]["schemas"][ref]["properties"]["file"]
    assert file_part["maxLength"] == contract_env.settings.max_upload_bytes
    assert str(contract_env.settings.max_pixels) in file_part["description"]
    for item in (p for path, p in schema["paths"].items() if path.startswith("/api/")):
        for operation in item.values():
            assert {"400", "401", "403", "404", "405", "409", "413", "415", "422"} <= set(operation["responses"])
    links = upload["responses"]["201"]["links"]
    assert {link["parameters"]["prediction_id"] for link in links.values()} == {"$response.body#/id"}
    r = contract_env.client.delete("/api/v1/predictions", headers=contract_env.auth("reviewer"))
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST" and "detail" in r.json()
