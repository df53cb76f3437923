"""The reading station in headless Chromium: nothing cached after logout, a verdict that survives a
session expiry, the verdict controls inside a 1280×720 viewport, fixed class keys.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots  # noqa: F401

pytestmark = pytest.mark.browser


def log_in(page: Any, server: LiveServer, path: str = "/worklist") -> None:
    page.goto(f"{server.url}{path}")
    page.fill("input[name=username]", server.username)
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}{path}")


@pytest.fixture(scope="module")
def case_id(live_server: LiveServer, chromium: Any, films: dict[str, Film]) -> int:
    """One Hannover film uploaded with the active model."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(120_000)
    log_in(page, live_server, "/upload")
    page.set_input_files("input[type=file]", str(films["hannover"].path))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r"/cases/\d+$"))
    case = int(re.search(r"/cases/(\d+)", page.url).group(1))
    context.close()
    return case


def test_back_after_logout_shows_no_film(page: Any, live_server: LiveServer, case_id: int) -> None:
    log_in(page, live_server, f"/cases/{case_id}")
    film = page.locator(".view-film img")
    assert film.get_attribute("src").startswith("/api/v1/images/")
    page.click("form[action='/logout'] button")
    page.wait_for_url(f"{live_server.url}/login")
    page.go_back()
    page.wait_for_load_state()
    assert "/login" in page.url, page.url  # the case page was asked for again and refused
    assert page.locator("img[src^='/api/v1/images/']").count() == 0
    assert page.locator("#overlay-main").count() == 0
