"""A radiologist's session in headless Chromium against a live server: log in, upload a real film,
read the heat maps, approve one, compare all models, reject another with a reason, find both in
the worklist and in the CSV/JSON export. No console errors (a CSP violation would be one).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots

pytestmark = pytest.mark.browser

ALL_IMAGES_LOADED = "() => Array.from(document.images).every(i => i.complete)"


def image_widths(page: Any, selector: str) -> list[int]:
    page.wait_for_function(ALL_IMAGES_LOADED)
    return page.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)")


def log_in(page: Any, server: LiveServer, shots: Shots) -> None:
    page.goto(f"{server.url}/worklist")
    assert re.search(r"/login\?next=%2Fworklist$", page.url), page.url
    page.fill("input[name=username]", server.username)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.inner_text("[role=alert]")
    shots.take(page, "01-login-wrong-password")
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/worklist")


def upload(page: Any, server: LiveServer, film: Path, *, compare: bool = False) -> int:
    page.goto(f"{server.url}/upload")
    page.set_input_files("input[type=file]", str(film))
    if compare:
        page.check("input[name=models][value=all]")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r"/cases/\d+(/compare\?ai=shown)?$"), timeout=120_000)
    return int(re.search(r"/cases/(\d+)", page.url).group(1))


def test_review_flow(page: Any, live_server: LiveServer, films: dict[str, Film], shots: Shots) -> None:
    server = live_server

    # Login page (anonymous → /login), then a wrong password, then the right one.
    page.goto(server.url)
    page.wait_for_url(f"{server.url}/login")
    shots.take(page, "01-login")
    log_in(page, server, shots)

    # A bad file gets the service's message on the upload page.
    page.goto(f"{server.url}/upload")
    page.set_input_files("input[type=file]", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
    page.click("#upload-form button[type=submit]")
    assert "upload a PNG, JPEG or DICOM image" in page.inner_text("#upload-error")
    shots.take(page, "01c-upload-error")

    # Upload an adult COVID-19 film (Hannover) with the active model: the case page with its heat maps.
    case = upload(page, server, films["hannover"].path)
    assert page.url == f"{server.url}/cases/{case}"
    widths = image_widths(page, "#overlay-main, .class-thumb img.heatmap")
    assert len(widths) == 5 and all(w > 0 for w in widths), widths
    assert "pediatric (Kermany)" in page.inner_text(".caveat")
    assert "right = strongest evidence for this class" in page.inner_text(".legend")
    assert page.is_visible("img[src='/legend/colorbar.png']")
    assert image_widths(page, ".legend img")[0] > 0
    shots.take(page, "02-case")

    # Keyboard: 2 = the second class's map, S = side by side with the plain film, H = heat map only.
    first_src = page.get_attribute("#overlay-main", "src")
    page.keyboard.press("2")
    assert page.get_attribute("#overlay-main", "src") != first_src
    page.keyboard.press("s")
    assert page.is_visible(".view-film img") and page.is_visible("#overlay-main")
    assert image_widths(page, ".view-film img")[0] > 0
    shots.take(page, "03-case-side-by-side")
    page.keyboard.press("h")
    assert not page.is_visible(".view-film img")

    # One click approves; the history shows it as the verdict that counts.
    page.click("#approve-btn")
    page.wait_for_url(re.compile(rf"/cases/{case}\?model=\d+&saved=\d+"))
    assert "Verdict saved" in page.inner_text("#verdict")
    first_row = page.inner_text(".history tbody tr:first-child")
    assert "approved" in first_row and server.username in first_row and "counts" in first_row
    shots.take(page, "04-case-after-approve", full_page=True)

    # Compare all models on a pediatric film: the Fig. 4 grid, every cell an image that loaded.
    compare_case = upload(page, server, films["kermany"].path, compare=True)
    assert page.url == f"{server.url}/cases/{compare_case}/compare?ai=shown"
    rows = page.locator("#compare-grid tbody tr")
    assert rows.count() == 2
    widths = image_widths(page, "#compare-grid img:not(.lung-outline)")
    assert len(widths) == 2 * 5 and all(w > 0 for w in widths), widths
    outlines = image_widths(page, "#compare-grid img.lung-outline")  # over every class's heat map
    assert len(outlines) == 2 * 4 and all(w > 0 for w in outlines), outlines
    assert page.locator("#compare-grid td.is-predicted").count() == 2
    shots.take(page, "05-compare", full_page=True)

    # Reject the second model's region: Reject (opens the reasons) → tick one → Submit: three clicks.
    page.click("#compare-grid tbody tr:nth-child(2) a.btn")
    page.wait_for_url(re.compile(rf"/cases/{compare_case}\?model=\d+"))
    page.click("#reject-btn")
    page.click("label.chip:has(input[value=outside_lungs])")
    shots.take(page, "06-reject-reasons")
    page.click("#reject-submit")
    page.wait_for_url(re.compile(r"saved=\d+"))
    first_row = page.inner_text(".history tbody tr:first-child")
    assert "rejected" in first_row and "Outside the lungs" in first_row
    # N opens the next waiting case: the bundled model's result on the same film.
    page.keyboard.press("n")
    page.wait_for_url(re.compile(rf"/cases/{compare_case}\?model=\d+$"))
    assert "cxr_default" in page.inner_text(".model-line")

    # The worklist: the remaining unreviewed result is there, reviewed ones under "reviewed".
    page.goto(f"{server.url}/worklist")
    waiting = page.locator("#worklist-table tbody tr")
    assert waiting.count() == 1
    page.select_option("select[name=reviewed]", "any")
    page.click("#worklist-filters button[type=submit]")
    page.wait_for_url(re.compile(r"reviewed=any"))
    assert page.locator("#worklist-table tbody tr").count() == 3
    assert image_widths(page, "#worklist-table img")[0] > 0
    shots.take(page, "07-worklist")
    page.click("#worklist-table a.rowlink >> nth=0")
    page.wait_for_url(re.compile(r"/cases/\d+\?model=\d+"))

    # Export: the same browser context (its session cookie) fetches the CSV and JSON.
    page.goto(f"{server.url}/export")
    csv_reply = page.request.get(server.url + page.get_attribute("#export-csv", "href"))
    json_reply = page.request.get(server.url + page.get_attribute("#export-json", "href"))
    assert csv_reply.ok and json_reply.ok
    exported = list(csv.DictReader(io.StringIO(csv_reply.text())))
    assert [(r["prediction_id"], r["verdict"], r["reviewer"]) for r in exported] == [
        (str(case), "approve", server.username),
        (str(compare_case), "reject", server.username),
    ]
    assert exported[1]["reasons"] == "outside_lungs"
    assert [v["verdict"] for v in json_reply.json()["verdicts"]] == ["approve", "reject"]

    # Models page, for the record.
    page.goto(f"{server.url}/models")
    assert page.locator(".model-card").count() == 2
    shots.take(page, "08-models", full_page=True)

    # The only failed requests are the two the test provoked; no script error, no CSP violation.
    assert page.failed == [(401, "/login"), (415, "/upload")], page.failed
    unexpected = [e for e in page.errors if not e.startswith("Failed to load resource")]
    assert unexpected == [], unexpected
    assert len(shots.taken) == 10
