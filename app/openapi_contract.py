"""The REST contract as integrators generate clients from it: `/openapi.json` says what the server does.

`install(app, settings)` replaces FastAPI's schema builder with one that post-processes its output
once, in one place, for every `/api/` operation (whatever router declared it):

- every error the middleware, the framework and the services can answer is documented with the
  `{"detail": ...}` model: 400 (a body that cannot be parsed), 401, 403, 404, 405 (the `Allow`
  header lists the path's methods), 409, 413 (the body limit), 415, 422, 429 where logins are
  throttled, and 503 where the inference queue can be full (both with their Retry-After header);
- the upload's accepted content and limits (PNG, JPEG or DICOM; CXR_MAX_UPLOAD_BYTES; CXR_MAX_PIXELS)
  are in its request body schema;
- links between operations where ids flow (a created prediction → its detail and verdicts;
  a queued training job → its status), so clients and stateful testers can follow them.

`allowed_methods(app, path)` gives the methods the schema documents for a path: the `Allow` header of a
405, which Starlette would otherwise fill from the first matching route only.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from app.config import Settings

API_PREFIX = "/api/"
ERROR_DESCRIPTIONS = {
    400: "the body cannot be parsed (malformed JSON or multipart)",
    401: "no credentials, or a bad, expired or revoked token",
    403: "not allowed for this role, or a cookie-authenticated call without a valid CSRF token",
    404: "no such resource",
    405: "method not allowed on this path; the Allow header lists the methods that are",
    409: "conflicts with the current state (e.g. the name exists, the job already finished)",
    413: "the body is larger than the upload limit, or the film has more pixels than allowed",
    415: "not a PNG, JPEG or DICOM file",
    422: "well-formed, but a value is out of range or unknown",
}
THROTTLED = {429: "too many failed logins; retry after the Retry-After header's seconds"}
OVERLOADED = {
    503: "the inference queue is full (nothing was stored: send the same request again after the Retry-After "
    "header's seconds), or a model's checkpoint is unavailable"
}
RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
}
ERROR_SCHEMA = {
    "title": "ErrorOut",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "title": "Detail",
            "description": "a message for people; for request validation errors, a list of {type, loc, msg}",
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"type": {"type": "string"}, "loc": {"type": "array"}, "msg": {"type": "string"}},
                    },
                },
            ],
        }
    },
}
FILM_MEDIA_TYPES = "image/png, image/jpeg, application/dicom, application/octet-stream"
_PATH_PARAM = re.compile(r"\{(\w+)\}")


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the post-processed schema from `app.openapi()` (built once, then cached by FastAPI)."""
    build = app.openapi

    def contract_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = apply_contract(build(), settings)
        return app.openapi_schema

    app.openapi = contract_openapi  # type: ignore[method-assign]


def apply_contract(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorOut"] = ERROR_SCHEMA
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    for path, item in paths.items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            errors = {
                **ERROR_DESCRIPTIONS,
                **(THROTTLED if "429" in responses else {}),
                **(OVERLOADED if "503" in responses else {}),
            }
            for code, description in errors.items():
                responses[str(code)] = {
                    "description": description,
                    "content": {"application/json": {"schema": error_ref}},
                    **({"headers": RETRY_AFTER_HEADER} if code in THROTTLED or code in OVERLOADED else {}),
                }
            _describe_upload(operation, settings, components)
    _add_links(paths)
    return schema


def _describe_upload(operation: dict[str, Any], settings: Settings, components: dict[str, Any]) -> None:
    """Multipart bodies with a binary `file` part: the accepted films and the limits."""
    content = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if content is None:
        return
    ref = content.get("schema", {}).get("$ref", "")
    body = components.get(ref.rsplit("/", 1)[-1], {}) if ref else content.get("schema", {})
    file_part = body.get("properties", {}).get("file")
    if file_part is None:
        return
    megabytes = settings.max_upload_bytes / (1024 * 1024)
    file_part["description"] = (
        f"a PNG, JPEG or DICOM (Part 10) chest film, recognised by its content (not its name or type); at most "
        f"{settings.max_upload_bytes} bytes ({megabytes:.1f} MiB) and {settings.max_pixels} pixels (width × height). "
        "Other content: 415; a damaged film: 422; over a limit: 413"
    )
    file_part["minLength"] = 1
    file_part["maxLength"] = settings.max_upload_bytes
    content["encoding"] = {"file": {"contentType": FILM_MEDIA_TYPES}}


def _add_links(paths: dict[str, dict[str, Any]]) -> None:
    """A POST to P whose 2xx reply has an `id` links to every operation on P/{x_id}[/...]."""
    for path, item in paths.items():
        post = item.get("post")
        if not path.startswith(API_PREFIX) or post is None:
            continue
        for code, response in post.get("responses", {}).items():
            if not code.startswith("2"):
                continue
            links: dict[str, Any] = {}
            for target, target_item in paths.items():
                prefix = f"{path}/{{"
                if not target.startswith(prefix):
                    continue
                params = _PATH_PARAM.findall(target)
                first = params[0] if params else None
                if first is None or not target[len(path) + 1 :].startswith(f"{{{first}}}"):
                    continue
                for method, target_op in target_item.items():
                    if method not in ("get", "post", "put", "patch", "delete") or "operationId" not in target_op:
                        continue
                    if any(p not in (first,) for p in params):
                        continue  # the reply's id fills only the first parameter
                    links[f"{method}_{target_op['operationId']}"] = {
                        "operationId": target_op["operationId"],
                        "parameters": {first: "$response.body#/id"},
                    }
            if links:
                response["links"] = links


def allowed_methods(app: Any, path: str) -> list[str] | None:
    """The methods the schema documents for the path template `path` matches (the full `Allow` list of
    a 405, HEAD with GET); None for a path the schema does not describe (pages)."""
    for template, item in app.openapi().get("paths", {}).items():
        if _template_regex(template).fullmatch(path):
            methods = {m.upper() for m in item if m in ("get", "post", "put", "patch", "delete")}
            if "GET" in methods:
                methods.add("HEAD")
            return sorted(methods)
    return None


def _template_regex(template: str) -> re.Pattern[str]:
    parts = _PATH_PARAM.split(template)  # literal, name, literal, name, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts)))
