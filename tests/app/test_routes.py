"""The route table's rules, read from the app itself, so that a route added later cannot forget a guard:

- every admin page (under /admin, and the models page's activation form) depends on `AdminPage`;
- every state-changing page (POST, PUT, PATCH, DELETE) depends on `PageCsrf`, after its user guard, so
  an anonymous visitor is sent to log in and a reviewer is told the page is for admins;
- every REST endpoint but /health needs a user, every admin one the admin role.

Behaviour (who gets which status) is tests/reliability/test_access_matrix.py; this is the wiring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Form
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts

from app.deps import (
    AdminPage,
    PageCsrf,
    get_admin_user,
    get_current_user,
    require_admin_page,
    require_page_csrf,
    require_page_user,
    require_signed_in,
)
from app.main import create_app
from tests.app.conftest import settings_for

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
ADMIN_PAGES_OUTSIDE_ADMIN = {"/models/{model_id}/activate"}
"""Admin page actions whose path does not start with /admin (the models page is for everyone)."""
PUBLIC_API = {"/api/v1/health"}
ADMIN_API = (
    "/api/v1/users",
    "/api/v1/models/{model_id}/activate",
    "/api/v1/training-jobs",
    "/api/v1/architectures",
    "/api/v1/audit-log",
    "/api/v1/analytics",
)
"""Path prefixes of the REST endpoints for admins only."""
USER_GUARDS = (require_page_user, require_signed_in, require_admin_page)


def calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """Every dependency callable of a route, depth first, in the order FastAPI resolves them."""
    for sub in dependant.dependencies:
        yield from calls(sub)
        if sub.call is not None:
            yield sub.call


def api_routes(app: FastAPI) -> list[RouteContext]:
    """The app's routes with their effective dependencies (those of included routers too); mounts left out."""
    return [c for c in iter_route_contexts(app.routes) if getattr(c, "dependant", None) is not None]


def is_page(route: RouteContext) -> bool:
    return not route.path.startswith("/api/") and route.path not in ("/openapi.json", "/docs", "/docs/assets/{name}")


def guard_problems(app: FastAPI) -> list[str]:
    """What the route table breaks of the rules above, one line a route."""
    problems = []
    for route in api_routes(app):
        deps = list(calls(route.dependant))
        where = f"{sorted(route.methods)} {route.path}"
        if is_page(route):
            admin = route.path.startswith("/admin") or route.path in ADMIN_PAGES_OUTSIDE_ADMIN
            if admin and require_admin_page not in deps:
                problems.append(f"{where}: an admin page without AdminPage")
            if route.methods & UNSAFE:
                if require_page_csrf not in deps:
                    problems.append(f"{where}: a state-changing page without PageCsrf")
                elif any(g in deps and deps.index(g) > deps.index(require_page_csrf) for g in USER_GUARDS):
                    problems.append(f"{where}: PageCsrf is checked before the user guard")
        elif route.path.startswith("/api/") and route.path not in PUBLIC_API:
            if get_current_user not in deps:
                problems.append(f"{where}: an API endpoint without CurrentUser")
            if route.path.startswith(ADMIN_API) and get_admin_user not in deps:
                problems.append(f"{where}: an admin API endpoint without AdminUser")
    return problems


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    data_dir: Path = tmp_path_factory.mktemp("routes")
    app = create_app(settings_for(data_dir), announce=lambda _line: None)
    yield app
    app.state.ctx.close()


def test_every_page_and_endpoint_has_its_guards(app: FastAPI) -> None:
    pages = [r for r in api_routes(app) if is_page(r)]
    assert any(r.methods & UNSAFE for r in pages) and any(r.path.startswith("/admin") for r in pages)
    assert guard_problems(app) == []


def test_the_check_reports_a_route_that_forgets_a_guard() -> None:
    """The check itself can fail: a toy app with one route of each mistake."""
    toy = FastAPI()
    router = APIRouter()

    @router.post("/admin/things")
    def no_csrf(_admin: AdminPage) -> None: ...

    @router.get("/admin/report")
    def no_admin() -> None: ...

    @router.post("/notes")
    def csrf_first(_csrf: PageCsrf, _admin: AdminPage, text: Annotated[str, Form()] = "") -> None: ...

    @router.get("/api/v1/things")
    def no_user() -> None: ...

    @router.post("/api/v1/users")
    def no_admin_api(_user: Annotated[Any, Depends(get_current_user)]) -> None: ...

    toy.include_router(router)
    assert guard_problems(toy) == [
        "['POST'] /admin/things: a state-changing page without PageCsrf",
        "['GET'] /admin/report: an admin page without AdminPage",
        "['POST'] /notes: PageCsrf is checked before the user guard",
        "['GET'] /api/v1/things: an API endpoint without CurrentUser",
        "['POST'] /api/v1/users: an admin API endpoint without AdminUser",
    ]
