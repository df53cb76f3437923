"""Browser pages. STUB owned by the UI engineer: only `/` exists so the app factory is complete.

Anonymous visitors are sent to /login (which the UI adds); logged-in users see a minimal page.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.deps import OptionalUser

router = APIRouter(include_in_schema=False)


@router.get("/", response_model=None)
def home(user: OptionalUser) -> Response:
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return HTMLResponse("<!doctype html><title>cxr-review</title><p>cxr-review: the review pages are coming.</p>")
