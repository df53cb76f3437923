"""HTTP routes, one module a feature, each with its REST endpoints (router `api`, under /api/v1) and its
browser pages (router `pages`), combined in its `router`:

    accounts        login, logout, own password, /me; users (admin)
    cases           upload, predictions, films and heat maps, verdicts; the case and compare pages
    viewer          the case viewer's heat-map values and the worklist's film thumbnails
    worklist        the worklist (search, assigning a second reader) and the verdict export
    models          model versions and their metrics; activation (promote, roll back; admin)
    admin_training  retraining jobs, their reports, the audit log (admin)
    analytics       review analytics per model version: verdicts, agreement, warnings vs rejects (admin)
    docs            /api/v1/health, the OpenAPI schema and Swagger UI
    templating      what the pages share: templates, `render`, the error page, redirects

Routes stay thin: parse the request, call one service, return a schema, file or template. Guards are
`app.deps` aliases (`CurrentUser`/`AdminUser` for the API; `PageUser`, `AdminPage`, `PageCsrf` for
pages); request and response models are in `app.schemas`.

API errors are JSON `{"detail": ...}`: 401 unauthenticated, 403 wrong role/CSRF, 404 unknown id,
409 conflicting state, 413 file too large, 415 not PNG/JPEG/DICOM, 422 undecodable file, unknown
model id or invalid body, 429 too many failed logins, 503 a model's checkpoint is unavailable or (uploads)
the inference queue is full: Retry-After says when to send the same request again, nothing was stored.
Every API endpoint except /health needs a user (Bearer token, or the session cookie plus
X-CSRF-Token for unsafe methods).
"""

from fastapi import APIRouter

from app.routes import accounts, admin_training, analytics, cases, docs, models, viewer, worklist

ROUTERS: tuple[APIRouter, ...] = (
    docs.router,
    accounts.router,
    models.router,
    cases.router,
    viewer.router,
    worklist.router,
    admin_training.router,
    analytics.router,
)
"""Every router of the app, in the order `create_app` includes them."""
