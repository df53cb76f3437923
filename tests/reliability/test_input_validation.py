"""Malformed and out-of-range input on every write endpoint: 422 with a detail, and nothing written.

`BAD_INPUT` holds the cases per API write route; the route table is checked against it, so a new
write endpoint without bad-input cases fails `test_every_api_write_endpoint_has_bad_input_cases`.
Hostile query strings on every GET route and garbage bodies on every page form must never produce a
5xx. Runs on SQLite and PostgreSQL (PostgreSQL refuses NUL characters and 64-bit ids in INTEGER
columns, so a value SQLite stores can still crash a PostgreSQL deployment).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.deps import CSRF_HEADER, SESSION_COOKIE
from app.models import ApiToken, AuditEntry, MLModel, Prediction, TrainingJob, User, Verdict
from app.services import accounts
from tests.app.conftest import Env, start_env
from tests.reliability.conftest import Database
from tests.reliability.support import film_png

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
MALFORMED = {"content": b'{"verdict": "approve", ', "headers": {"Content-Type": "application/json"}}
NUL = "a\x00b"
TOO_BIG = 2**70
JOB = {"architecture": "cnnx", "scenario": "s1", "epochs": 1, "max_steps_per_epoch": 1}
VERDICT = {"verdict": "approve"}  # + model_id of the fixture's case


def job(**changes: Any) -> dict[str, Any]:
    return {"json": JOB | changes}


def verdict(**changes: Any) -> dict[str, Any]:
    return {"json": VERDICT | {"model_id": "MODEL"} | changes}


BAD_INPUT: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("POST", "/api/v1/predictions"): {
        "no file": {"data": {"models": "all"}},
        "JSON body": {"json": {"file": "aGVsbG8="}},
        "models not ids": {"files": {"file": ("a.png", b"PNG")}, "data": {"models": "one,two"}},
        "model id out of range": {"files": {"file": ("a.png", b"PNG")}, "data": {"models": str(TOO_BIG)}},
    },
    ("POST", "/api/v1/predictions/{prediction_id}/verdicts"): {
        "malformed JSON": MALFORMED,
        "empty body": {"content": b"", "headers": {"Content-Type": "application/json"}},
        "JSON array": {"json": [VERDICT]},
        "form instead of JSON": {"data": {"verdict": "approve", "model_id": "1"}},
        "model_id not a number": verdict(model_id="one"),
        "model_id zero": verdict(model_id=0),
        "model_id negative": verdict(model_id=-1),
        "model_id out of range": verdict(model_id=TOO_BIG),
        "model_id a float": verdict(model_id=1.5),
        "verdict unknown": verdict(verdict="maybe"),
        "verdict missing": {"json": {"model_id": "MODEL"}},
        "reasons not a list": verdict(reasons="outside_lungs"),
        "reason unknown": verdict(reasons=["looks_odd"]),
        "comment too long": verdict(comment="x" * 4001),
        "comment not text": verdict(comment={"a": 1}),
        "comment with NUL": verdict(comment=NUL),
        "diagnosis unknown": verdict(diagnosis="flu"),
        "extra field": verdict(reviewer="someone-else"),
    },
    ("POST", "/api/v1/models/{model_id}/activate"): {
        "model id not a number": {"path": {"model_id": "latest"}},
    },
    ("POST", "/api/v1/users"): {
        "malformed JSON": MALFORMED,
        "JSON array": {"json": [{"username": "x"}]},
        "username empty": {"json": {"username": ""}},
        "username too long": {"json": {"username": "u" * 65}},
        "username with NUL": {"json": {"username": NUL}},
        "username with a path": {"json": {"username": "../admin"}},
        "username not text": {"json": {"username": 7}},
        "role unknown": {"json": {"username": "newbie", "role": "root"}},
        "password too short": {"json": {"username": "newbie", "password": "short"}},
        "password not text": {"json": {"username": "newbie", "password": 12345678}},
        "extra field": {"json": {"username": "newbie", "is_admin": True}},
    },
    ("POST", "/api/v1/training-jobs"): {
        "malformed JSON": MALFORMED,
        "architecture unknown": job(architecture="resnet9000"),
        "architecture with NUL": job(architecture=NUL),
        "scenario unknown": job(scenario="s9"),
        "epochs zero": job(epochs=0),
        "epochs absurd": job(epochs=10**6),
        "epochs out of range": job(epochs=TOO_BIG),
        "batch size negative": job(batch_size=-1),
        "learning rate zero": job(learning_rate=0),
        "learning rate NaN": {
            "content": b'{"architecture": "cnnx", "learning_rate": NaN}',
            "headers": {"Content-Type": "application/json"},
        },
        "learning rate huge": job(learning_rate=1e9),
        "seed negative": job(seed=-1),
        "seed out of range": job(seed=TOO_BIG),
        "pretrained not a boolean": job(pretrained="maybe"),
        "pretrained for CNN-X": job(pretrained=True),
        "steps per epoch zero": job(max_steps_per_epoch=0),
        "extra field": job(priority="high"),
    },
    ("POST", "/api/v1/training-jobs/{job_id}/cancel"): {
        "job id not a number": {"path": {"job_id": "newest"}},
    },
}
COUNTED = (User, ApiToken, Prediction, Verdict, TrainingJob, AuditEntry)


@dataclass
class Site:
    env: Env
    prediction_id: int
    model_id: int
    job_id: int

    def state(self) -> tuple[Any, ...]:
        with self.env.session() as s:
            counts = tuple(s.scalar(select(func.count()).select_from(m)) for m in COUNTED)
            active = tuple(s.scalars(select(MLModel.id).where(MLModel.active.is_(True))))
        return counts, active

    def admin_browser(self) -> TestClient:
        with self.env.session() as s:
            web = accounts.create_session(
                session=s, settings=self.env.settings, user=accounts.get_user_by_name(session=s, username="admin2")
            )
        client = TestClient(self.env.app, follow_redirects=False, raise_server_exceptions=False)
        client.cookies.set(SESSION_COOKIE, web.token)
        client.headers[CSRF_HEADER] = web.csrf_token
        return client


@pytest.fixture(scope="module")
def site(module_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with ExitStack() as stack:
        env = start_env(stack, tmp_path_factory.mktemp("validation"), database_url=module_database.url)
        env.client = stack.enter_context(TestClient(env.app, raise_server_exceptions=False))
        case = env.upload(film_png(seed=3), who="admin").json()
        job = env.client.post("/api/v1/training-jobs", headers=env.auth("admin"), json=JOB)
        assert job.status_code == 202, job.text
        yield Site(env, case["id"], case["results"][0]["model_id"], job.json()["id"])


def routes(app: Any) -> list[APIRoute]:
    return [c.original_route for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]


def test_every_api_write_endpoint_has_bad_input_cases(site: Site) -> None:
    writes = {
        (method, route.path)
        for route in routes(site.env.app)
        for method in route.methods
        if method in UNSAFE and route.path.startswith("/api/")
    }
    assert sorted(writes - set(BAD_INPUT)) == [], "API write endpoints without bad-input cases (add them)"
    assert sorted(set(BAD_INPUT) - writes) == [], "bad-input cases for routes that no longer exist"


@pytest.mark.parametrize(
    ("method", "template", "label"), [(m, t, label) for (m, t), cases in BAD_INPUT.items() for label in cases]
)
def test_bad_input_is_422_and_writes_nothing(site: Site, method: str, template: str, label: str) -> None:
    case = dict(BAD_INPUT[(method, template)][label])
    params = {"prediction_id": site.prediction_id, "model_id": site.model_id, "job_id": site.job_id}
    url = template.format(**(params | case.pop("path", {})))
    if isinstance(case.get("json"), dict) and case["json"].get("model_id") == "MODEL":
        case["json"] = case["json"] | {"model_id": site.model_id}
    before = site.state()
    headers = site.env.auth("admin") | case.pop("headers", {})
    r = site.env.client.request(method, url, headers=headers, **case)
    assert r.status_code == 422, f"{label}: {r.status_code} {r.text[:300]}"
    detail = r.json()["detail"]
    assert detail and (isinstance(detail, str) or all({"loc", "msg"} <= set(e) for e in detail)), detail
    assert NUL not in r.text and "x" * 4001 not in r.text  # the input is not echoed back
    assert site.state() == before


HOSTILE_VALUES = {
    "NUL": NUL,
    "huge number": str(TOO_BIG),
    "negative": "-1",
    "long": "q" * 5000,
    "SQL": "1' OR '1'='1'; DROP TABLE verdicts; --",
    "path": "../../etc/passwd",
    "markup": "<script>alert(1)</script>",
}


def query_names(dependant: Any) -> set[str]:
    """Query parameters of an endpoint and of all its dependencies."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names


def query_targets(app: Any) -> list[tuple[str, str]]:
    """(path template, query parameter) of every GET route that takes query parameters."""
    return [
        (route.path, name)
        for route in routes(app)
        if "GET" in route.methods
        for name in sorted(query_names(route.dependant))
    ]


def test_hostile_query_strings_never_cause_a_server_error(site: Site) -> None:
    """Every query parameter of every GET route, with each hostile value, as an admin (API: token,
    pages: session): never a 5xx."""
    browser = site.admin_browser()
    params = {
        "prediction_id": site.prediction_id,
        "model_id": site.model_id,
        "job_id": site.job_id,
        "cls": "normal",
        "name": "curves",
        "image_sha256": "0" * 64,
    }
    targets = query_targets(site.env.app)
    assert len(targets) >= 15, targets
    failures = []
    for template, name in targets:
        url = template.format(**params)
        for label, value in HOSTILE_VALUES.items():
            if template.startswith("/api/") or template == "/openapi.json":
                r = site.env.client.get(url, params={name: value}, headers=site.env.auth("admin"))
            else:
                r = browser.get(url, params={name: value})
            if r.status_code >= 500:
                failures.append(f"{template}?{name}={label}: {r.status_code}")
    assert failures == []


# Starlette's multipart parser (1.10) does not close the temp file of a part cut short by the end of
# the body (no closing boundary, no parse error); CPython frees it when the request's parser goes.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function SpooledTemporaryFile.__del__:pytest.PytestUnraisableExceptionWarning"
)
def test_garbage_bodies_on_page_forms_never_cause_a_server_error(site: Site) -> None:
    """Every page form (with a valid admin session and CSRF header), sent JSON, a broken multipart
    body, NUL characters and numbers beyond any column: a page or a redirect, never a 5xx."""
    page_writes = [
        (method, route.path)
        for route in routes(site.env.app)
        for method in route.methods
        if method in UNSAFE and not route.path.startswith("/api/") and route.path not in ("/logout", "/login")
    ]
    assert len(page_writes) >= 8, page_writes
    bodies: dict[str, dict[str, Any]] = {
        "JSON": {"json": {"verdict": "approve", "username": "x", "architecture": "cnnx"}},
        "broken multipart": {
            "content": b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG',
            "headers": {"Content-Type": "multipart/form-data; boundary=zz"},
        },
        "NUL in every field": {
            "data": {
                f: NUL
                for f in [
                    "username",
                    "password",
                    "role",
                    "model_id",
                    "verdict",
                    "comment",
                    "diagnosis",
                    "current",
                    "new",
                    "repeat",
                    "active",
                    "architecture",
                    "scenario",
                    "epochs",
                    "seed",
                    "models",
                ]
            }
        },
        "numbers beyond any column": {
            "data": {f: str(TOO_BIG) for f in ("model_id", "epochs", "batch_size", "seed", "max_steps_per_epoch")}
        },
        "huge comment": {"data": {"model_id": str(site.model_id), "verdict": "approve", "comment": "c" * 100_000}},
    }
    params = {"prediction_id": site.prediction_id, "model_id": site.model_id, "job_id": site.job_id}
    failures = []
    for method, template in page_writes:
        for label, body in bodies.items():
            for ids in (params, {k: TOO_BIG for k in params}):
                url = template.format(**ids, username="a%00b" if label.startswith("NUL") else "nobody")
                r = site.admin_browser().request(method, url, **body)
                if r.status_code >= 500:
                    failures.append(f"{method} {url[:60]} {label}: {r.status_code}")
    assert failures == []
