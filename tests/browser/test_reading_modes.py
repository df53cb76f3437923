"""Film-first reading, blind reading and safe promotion in headless Chromium (issue 14).

- the case opens on the plain film: no probabilities, heat maps or warnings; keys that would show or
  judge the AI do nothing until V ("Show AI"); the verdict then records film first, the reveal time and
  the time to the verdict (read back from the export);
- a second reviewer does not see the first one's verdict until theirs is in;
- promoting a model whose macro sensitivity is far below the active one's goes through a confirmation
  page with both models' figures and needs a typed reason, which the audit log keeps.
Screenshots at 1280×720 and 1440×900 (copied to CXR_UI_SHOTS_DIR).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.services import accounts
from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots, log_in, running_server, upload_case
from tests.support.checkpoints import write_untrained_cnnx

pytestmark = pytest.mark.browser
SMALL = {"width": 1280, "height": 720}
LARGE = {"width": 1440, "height": 900}
WORSE_METRICS = {
    "val": {
        "n": 337,
        "accuracy": 0.566,
        "macro_sensitivity": 0.48,
        "per_class": {
            "normal": {"sensitivity": 0.95},
            "bacterial": {"sensitivity": 0.0},
            "viral": {"sensitivity": 0.0},
            "covid19": {"sensitivity": 0.97},
        },
    }
}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Film first (the service's default), the bundled model plus a CNN-X whose recorded figures are far
    worse, a second reviewer and an admin."""
    data_dir = tmp_path_factory.mktemp("reading-modes")
    write_untrained_cnnx(data_dir / "models" / "cnnx-worse.pt", metrics=WORSE_METRICS)
    with running_server(data_dir, extra_models=False, CXR_READING_MODE="film_first") as server:
        settings = Settings(data_dir=data_dir, env="development").prepared()
        engine = make_engine(settings.resolved_database_url)
        with make_session_factory(engine)() as s:
            accounts.create_user(session=s, username="dr.second", password="second reader 1")
            accounts.create_user(session=s, username="chief", password="chief of radiology", role="admin")
            accounts.create_user(session=s, username="dr.third", password="third reader 1")
        engine.dispose()
        yield server


@pytest.fixture(scope="module")
def case_id(live_server: LiveServer, chromium: Any, films: dict[str, Film]) -> int:
    return upload_case(chromium, live_server, films["hannover"].path)


def test_film_first_reveal_and_timing_are_recorded(
    page: Any, live_server: LiveServer, case_id: int, shots: Shots
) -> None:
    page.set_viewport_size(SMALL)
    opened = time.monotonic()  # before the case page is even asked for: an upper bound of its age
    log_in(page, live_server, f"/cases/{case_id}", live_server.username, live_server.password)
    assert page.is_visible(".view-film img") and page.is_visible("#show-ai") and page.is_visible("#film-first-note")
    for hidden in ("#prediction-panel", "#overlay-main", ".class-rail", "#view-switch", "#lung-focus-summary"):
        assert page.is_hidden(hidden), hidden
    assert page.input_value("#ai-revealed-after") == "none"
    shots.take(page, "reading-01-film-first-1280x720")
    page.keyboard.press("4")  # a class key shows no heat map yet
    page.keyboard.press("h")
    assert page.is_hidden("#overlay-main") and page.is_hidden(".class-rail")
    page.keyboard.press("a")  # judging first is refused: the verdict is about the highlighted region
    page.click("#approve-btn")
    assert "/cases/" in page.url and "saved=" not in page.url
    assert "Show the AI first" in page.inner_text("#film-first-note")
    page.set_viewport_size(LARGE)
    shots.take(page, "reading-02-film-first-asks-1440x900")

    page.wait_for_timeout(1200)
    page.keyboard.press("v")
    revealed_after = (time.monotonic() - opened) * 1000
    assert page.is_visible("#prediction-panel") and page.is_visible("#overlay-main") and page.is_hidden("#show-ai")
    shown_ms = float(page.input_value("#ai-revealed-after"))
    assert 1200 <= shown_ms <= revealed_after  # ms since the page arrived (after the login above)
    page.set_viewport_size(SMALL)
    approve = page.locator("#approve-btn").bounding_box()
    assert approve["y"] + approve["height"] <= SMALL["height"]  # the verdict controls fit after the reveal
    shots.take(page, "reading-03-ai-shown-1280x720")
    page.wait_for_timeout(500)
    page.keyboard.press("a")
    page.wait_for_url(re.compile(r"saved=\d+"))
    saved = int(re.search(r"saved=(\d+)", page.url).group(1))

    rows = page.request.get(f"{live_server.url}/api/v1/verdicts?format=json").json()["verdicts"]
    row = next(r for r in rows if r["verdict_id"] == saved)
    assert row["reading_mode"] == "film_first" and row["ai_revealed"] is True
    assert row["ai_revealed_after_s"] == pytest.approx(shown_ms / 1000, abs=0.01)
    assert row["seconds_to_verdict"] >= row["ai_revealed_after_s"] + 0.4  # the verdict came after the reveal
    assert row["seconds_to_verdict"] < 600
    assert page.errors == []


def test_others_verdicts_stay_hidden_until_ones_own_in_film_first(
    page: Any, live_server: LiveServer, case_id: int, shots: Shots
) -> None:
    page.set_viewport_size(LARGE)
    log_in(page, live_server, f"/cases/{case_id}", "dr.second", "second reader 1")
    assert page.is_visible("#hidden-verdicts") and page.locator(".history tbody tr").count() == 0
    page.keyboard.press("v")
    assert page.is_visible("#hidden-verdicts")  # showing the AI does not show the colleagues' verdicts
    shots.take(page, "reading-04-second-reader-blind-1440x900")
    page.click("#reject-btn")
    page.check("input[name=reasons][value=outside_lungs]")
    page.click("#reject-submit")
    page.wait_for_url(re.compile(r"saved=\d+"))
    history = page.inner_text(".history")
    assert "dr.reader" in history and "dr.second" in history and page.locator("#hidden-verdicts").count() == 0
    rows = page.request.get(f"{live_server.url}/api/v1/verdicts?format=json").json()["verdicts"]
    assert {r["reviewer"] for r in rows if r["prediction_id"] == case_id} == {"dr.reader", "dr.second"}


def test_promotion_confirms_compares_and_needs_a_reason(page: Any, live_server: LiveServer, shots: Shots) -> None:
    page.set_viewport_size(LARGE)
    log_in(page, live_server, "/models", "chief", "chief of radiology")
    page.click("a[id^=activate-]")  # the only inactive model: the CNN-X with far worse figures
    page.wait_for_selector("#comparison")
    table = page.inner_text("#comparison")
    assert "Macro sensitivity" in table and "Sensitivity: Bacterial" in table and "candidate" in table
    assert "48.0 %" in page.inner_text("#fig-macro_sensitivity") and "pts" in page.inner_text("#fig-macro_sensitivity")
    assert page.is_visible("#reason-needed")
    shots.take(page, "reading-05-promotion-confirm-1440x900", full_page=True)
    # The browser asks for the reason (required); without the attribute the server refuses too.
    page.eval_on_selector("textarea[name=reason]", "t => t.removeAttribute('required')")
    page.click("#activate-submit")
    page.wait_for_selector("#activate-error")
    assert "give a reason" in page.inner_text("#activate-error")
    page.set_viewport_size(SMALL)
    shots.take(page, "reading-06-promotion-reason-missing-1280x720", full_page=True)
    page.fill("textarea[name=reason]", "trial on the night shift, checked by the chief")
    page.click("#activate-submit")
    page.wait_for_selector("#activated")
    assert "is now the active model" in page.inner_text("#activated")
    shots.take(page, "reading-07-promotion-done-1280x720")
    page.goto(f"{live_server.url}/admin/audit")
    audit = page.inner_text("#audit")
    assert "model.promote" in audit and "trial on the night shift" in audit
    # Back to the bundled model: better figures, no reason needed.
    page.goto(f"{live_server.url}/models")
    page.click("a[id^=activate-]")
    page.wait_for_selector("#comparison")
    assert page.locator("#reason-needed").count() == 0
    page.click("#activate-submit")
    page.wait_for_selector("#activated")
    assert [e for e in page.errors if "422" not in e] == []  # the 422 is the refused promotion's page


def test_search_assign_a_second_reader_and_the_analytics_page(
    page: Any, live_server: LiveServer, case_id: int, shots: Shots
) -> None:
    page.set_viewport_size(LARGE)
    log_in(page, live_server, "/worklist", "chief", "chief of radiology")
    page.fill("#worklist-search", str(case_id))
    page.select_option("select[name=reviewed]", "any")
    page.click("#worklist-filters button[type=submit]")
    rows = page.locator("#worklist-table tbody tr")
    assert rows.count() == 1 and f"Case {case_id}" in rows.first.inner_text()
    rows.first.locator("select[name=reviewer]").select_option("dr.third")
    rows.first.locator(".assign-form button").click()
    page.wait_for_url(re.compile(r"/worklist\?"))
    assert "assigned: dr.third" in page.locator("#worklist-table tbody tr").first.inner_text()
    shots.take(page, "reading-08-worklist-search-assign-1440x900")
    page.goto(f"{live_server.url}/admin/analytics")
    card = page.locator(".analytics-card").first
    assert "2 verdicts given" in card.inner_text() and "1 result read twice" in card.inner_text()
    shots.take(page, "reading-09-analytics-1440x900", full_page=True)
    page.set_viewport_size(SMALL)
    shots.take(page, "reading-10-analytics-1280x720")
    page.goto(f"{live_server.url}/export")
    shots.take(page, "reading-11-export-1280x720")
    page.context.clear_cookies()

    log_in(page, live_server, "/worklist", "dr.third", "third reader 1")
    assert page.is_visible("input[name=mine]")
    page.check("input[name=mine]")
    page.click("#worklist-filters button[type=submit]")
    rows = page.locator("#worklist-table tbody tr")
    assert rows.count() == 1 and "reviewed by others" in rows.first.inner_text()  # blind: not their verdicts
    page.goto(f"{live_server.url}/account")
    page.check("input[name=reading_mode][value=ai_first]")
    page.click("#reading-mode-form button[type=submit]")
    assert "with the AI shown" in page.inner_text("#mode-saved")
    shots.take(page, "reading-12-account-1280x720")
    page.goto(f"{live_server.url}/cases/{case_id}")
    assert page.is_visible("#prediction-panel") and page.locator("#show-ai").is_hidden()  # AI first for them
    assert page.errors == []
