"""Lung focus in the reading station, in headless Chromium against live servers: the lung outline is
laid exactly over each heat map and can be switched off and on (checkbox and L), the warning banner
appears when the predicted class is flagged (CXR_LUNG_FOCUS_THRESHOLD=1.0: every real map is) and is
absent when nothing can be flagged (0.0), and the worklist shows the badge and sorts flagged first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots, running_server
from tests.browser.test_review_flow import image_widths, upload

pytestmark = pytest.mark.browser


def log_in(page: Any, server: LiveServer) -> None:
    page.goto(f"{server.url}/login")
    page.fill("input[name=username]", server.username)
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/worklist")


def box(page: Any, selector: str) -> tuple[float, float, float, float]:
    b = page.locator(selector).bounding_box()
    return (b["x"], b["y"], b["width"], b["height"])


def check_outline_layer(page: Any) -> None:
    """The outline PNG has the overlay's pixel size and sits on exactly the same box on the page."""
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    natural = page.eval_on_selector_all(
        "#overlay-main, #lung-outline-main", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
    )
    assert natural[0] == natural[1] and natural[0][0] > 0, natural
    assert box(page, "#overlay-main") == box(page, "#lung-outline-main")
    thumbs = page.locator(".class-thumb img.lung-outline")
    assert thumbs.count() == 4 and all(w > 0 for w in image_widths(page, ".class-thumb img.lung-outline"))


def test_flagged_case_shows_warning_outline_and_toggle(
    page: Any,
    films: dict[str, Film],
    tmp_path_factory: pytest.TempPathFactory,
    shots: Shots,
) -> None:
    data_dir: Path = tmp_path_factory.mktemp("lung-focus-1")
    with running_server(data_dir, extra_models=False, CXR_LUNG_FOCUS_THRESHOLD="1.0") as server:
        log_in(page, server)
        case = upload(page, server, films["hannover"].path)
        # a calibrated model: the plain warning lines (#risk-warnings) replace the lung-focus banner
        assert page.locator("#lung-focus-warning").count() == 0
        assert "flagged" in page.inner_text("#lung-focus-summary")
        assert "Error risk" in page.inner_text("#error-risk")
        check_outline_layer(page)

        # On by default; the checkbox hides it, L brings it back; the heat map itself never goes.
        assert page.is_checked("#outline-toggle") and page.is_visible("#lung-outline-main")
        shots.take(page, "lung-01-flagged-case-outline-on")
        page.uncheck("#outline-toggle")
        assert not page.is_visible("#lung-outline-main") and page.is_visible("#overlay-main")
        assert not page.locator(".class-thumb img.lung-outline").first.is_visible()
        shots.take(page, "lung-02-outline-off")
        page.keyboard.press("l")
        assert page.is_visible("#lung-outline-main") and page.is_checked("#outline-toggle")

        # Another class: the outline stays registered and the caption gives that class's lung focus.
        page.keyboard.press("2")  # the fixed key of bacterial pneumonia
        second = page.locator(".class-thumb[data-cls=bacterial]")
        assert page.get_attribute("#overlay-main", "src") == second.get_attribute("data-src")
        assert page.inner_text("#overlay-focus") == second.get_attribute("data-focus")
        check_outline_layer(page)
        page.keyboard.press("s")  # side by side: the outline follows the overlay's smaller box
        check_outline_layer(page)
        shots.take(page, "lung-03-side-by-side")

        # The worklist: a flagged badge per row, and "flagged first" as a sort choice.
        page.goto(f"{server.url}/worklist")
        row = page.locator("#worklist-table tbody tr").first
        assert "flagged" in row.inner_text() and "is-flagged" in (row.get_attribute("class") or "")
        page.select_option("select[name=sort]", "flagged")
        page.click("#worklist-filters button[type=submit]")
        page.wait_for_url(re.compile(r"sort=flagged"))
        assert page.locator("#worklist-table tbody tr").count() == 1
        shots.take(page, "lung-04-worklist-flagged-first")

        page.goto(f"{server.url}/cases/{case}")
        assert page.failed == [], page.failed
        assert [e for e in page.errors if not e.startswith("Failed to load resource")] == []


def test_unflagged_case_has_no_warning(
    page: Any,
    films: dict[str, Film],
    tmp_path_factory: pytest.TempPathFactory,
    shots: Shots,
) -> None:
    data_dir: Path = tmp_path_factory.mktemp("lung-focus-0")
    with running_server(data_dir, extra_models=False, CXR_LUNG_FOCUS_THRESHOLD="0.0") as server:
        log_in(page, server)
        upload(page, server, films["kermany"].path)
        assert page.locator("#lung-focus-warning").count() == 0
        assert "ok" in page.inner_text("#lung-focus-summary")
        assert "in the lungs" in page.inner_text("#overlay-focus")
        check_outline_layer(page)
        shots.take(page, "lung-05-unflagged-case")
        page.goto(f"{server.url}/worklist")
        assert "flagged" not in page.inner_text("#worklist-table tbody")
        assert page.failed == [], page.failed
        assert [e for e in page.errors if not e.startswith("Failed to load resource")] == []
