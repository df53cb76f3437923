"""The reading station in headless Chromium: nothing cached after logout, a verdict that survives a
session expiry, the verdict controls inside a 1280×720 viewport, fixed class keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.services import accounts
from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots, log_in, running_server, upload_case

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The bundled model only, every result flagged for lung focus (threshold 100 %): the tallest case page."""
    with running_server(tmp_path_factory.mktemp("reading"), extra_models=False, CXR_LUNG_FOCUS_THRESHOLD="1.0") as s:
        yield s


@pytest.fixture(scope="module")
def case_id(live_server: LiveServer, chromium: Any, films: dict[str, Film]) -> int:
    """One Hannover film uploaded with the active model."""
    return upload_case(chromium, live_server, films["hannover"].path)


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


def test_a_verdict_survives_a_forced_session_expiry(page: Any, live_server: LiveServer, case_id: int) -> None:
    log_in(page, live_server, f"/cases/{case_id}")
    page.click("#reject-btn")
    page.check("input[name=reasons][value=text_or_marker]")
    page.click("#extras summary")
    page.fill("textarea[name=comment]", "hot spot on the L marker")
    page.context.clear_cookies()  # the session ends while the verdict is being written
    page.click("#reject-submit")
    page.wait_for_url(re.compile(r"/login\?next="))
    assert page.locator("pre").count() == 0 and "Method Not Allowed" not in page.content()
    page.fill("input[name=username]", live_server.username)
    page.fill("input[name=password]", live_server.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/cases/{case_id}")
    assert page.is_visible("#draft-banner") and "A reject" in page.inner_text("#draft-banner")
    assert page.is_checked("input[name=reasons][value=text_or_marker]")
    assert page.input_value("textarea[name=comment]") == "hot spot on the L marker"
    page.click("#draft-submit")
    page.wait_for_url(re.compile(r"saved=\d+"))
    assert "Verdict saved" in page.inner_text("#verdict")
    row = page.locator(".history tbody tr").first.inner_text()
    assert "rejected" in row and "hot spot on the L marker" in row and "Text" in row
    assert page.evaluate("Object.keys(sessionStorage).filter(k => k.startsWith('cxr-draft:'))") == []
    page.reload()
    assert page.is_hidden("#draft-banner")  # saved: not offered again


def test_a_stale_form_keeps_the_verdict_too(page: Any, live_server: LiveServer, case_id: int) -> None:
    log_in(page, live_server, f"/cases/{case_id}")
    page.click("#extras summary")
    page.fill("textarea[name=comment]", "looks fine to me")
    other = page.context.new_page()  # logs out and in again in another tab: this tab's form token is stale
    other.goto(f"{live_server.url}/worklist")
    other.click("form[action='/logout'] button")
    log_in(other, live_server)
    other.close()
    page.click("#approve-btn")
    assert "Form expired" in page.inner_text("h1")
    page.click("#error-back")
    page.wait_for_url(re.compile(rf"/cases/{case_id}"))
    assert "An approval" in page.inner_text("#draft-banner")
    assert page.input_value("textarea[name=comment]") == "looks fine to me"
    page.click("#draft-submit")
    page.wait_for_url(re.compile(r"saved=\d+"))
    assert "looks fine to me" in page.locator(".history tbody tr").first.inner_text()


def _inside(box: dict[str, float], width: int, height: int) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height


def test_film_probabilities_and_verdict_controls_fit_1280x720_on_a_flagged_case(
    chromium: Any, live_server: LiveServer, case_id: int, shots: Shots
) -> None:
    for width, height in ((1280, 720), (1440, 900)):
        context = chromium.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        page = context.new_page()
        log_in(page, live_server, f"/cases/{case_id}")
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
        assert page.is_visible("#error-risk")
        shots.take(page, f"reading-{width}x{height}")
        for selector in ("#overlay-main", "table.probs", "#approve-btn", "#reject-btn"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and _inside(box, width, height), (width, height, selector, box)
        page.click("#reject-btn")
        shots.take(page, f"reading-{width}x{height}-reject")
        box = page.locator("#reject-submit").bounding_box()
        assert box is not None and _inside(box, width, height), (width, height, "reject-submit", box)
        comment = page.locator("#extras").bounding_box()
        assert comment is not None and comment["y"] < box["y"]  # the submit comes after the optional fields
        context.close()


def test_class_keys_are_fixed_whatever_the_rail_order(page: Any, live_server: LiveServer, case_id: int) -> None:
    log_in(page, live_server, f"/cases/{case_id}")
    rail = page.eval_on_selector_all(".class-thumb", "els => els.map(e => e.dataset.cls)")
    assert rail[0] == page.get_attribute("#overlay-main", "data-cls")  # the rail starts with the predicted class
    for key, cls in (("4", "covid19"), ("1", "normal"), ("3", "viral"), ("2", "bacterial"), ("4", "covid19")):
        page.keyboard.press(key)
        assert page.get_attribute("#overlay-main", "data-cls") == cls, (key, rail)
        thumb = page.locator(f".class-thumb[data-cls={cls}]")
        assert "is-selected" in (thumb.get_attribute("class") or "")
        assert thumb.locator("kbd").inner_text() == key


def test_verdicts_of_others_are_hidden_before_ones_own(page: Any, live_server: LiveServer, case_id: int) -> None:
    settings = Settings(data_dir=live_server.data_dir, env="development").prepared()
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        accounts.create_user(session=s, username="dr.second", password="second reader 1")
    engine.dispose()
    log_in(page, live_server, f"/cases/{case_id}")
    page.click("#extras summary")
    page.fill("textarea[name=comment]", "first read by dr.reader")
    page.click("#approve-btn")
    page.wait_for_url(re.compile(r"saved=\d+"))
    page.context.clear_cookies()

    page.goto(f"{live_server.url}/cases/{case_id}")
    page.fill("input[name=username]", "dr.second")
    page.fill("input[name=password]", "second reader 1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/cases/{case_id}")
    assert page.is_visible("#hidden-verdicts")
    assert "first read by dr.reader" not in page.inner_text(".history")
    page.click("#approve-btn")
    page.wait_for_url(re.compile(r"saved=\d+"))
    history = page.inner_text(".history")
    assert "first read by dr.reader" in history and "dr.second" in history
    assert page.locator("#hidden-verdicts").count() == 0
