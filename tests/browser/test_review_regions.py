"""A reviewer rejects a heat map and marks, by dragging on it, where the model looked that it should not
("wrong evidence") and where the finding really is: the boxes are saved with the verdict, shown in the
history, returned by the API and exported. No console errors (a CSP violation would be one)."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest

from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots

pytestmark = pytest.mark.browser

PICTURE = """() => {
  const img = document.getElementById('overlay-main');
  const r = img.getBoundingClientRect();
  const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
  const w = img.naturalWidth * s, h = img.naturalHeight * s;
  return {left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h};
}"""


def drag(page: Any, box: tuple[float, float, float, float]) -> None:
    """Drag on the heat map from (x0, y0) to (x1, y1), given as fractions of the film."""
    page.wait_for_function("() => document.getElementById('overlay-main').complete")
    page.evaluate("() => document.getElementById('overlay-main').scrollIntoView({block: 'center'})")
    p = page.evaluate(PICTURE)
    x0, y0, x1, y1 = box
    page.mouse.move(p["left"] + x0 * p["width"], p["top"] + y0 * p["height"])
    page.mouse.down()
    page.mouse.move(p["left"] + (x0 + x1) / 2 * p["width"], p["top"] + (y0 + y1) / 2 * p["height"], steps=4)
    page.mouse.move(p["left"] + x1 * p["width"], p["top"] + y1 * p["height"], steps=4)
    page.mouse.up()


def test_reject_with_boxes_drawn_on_the_heat_map(
    page: Any, live_server: LiveServer, films: dict[str, Film], shots: Shots
) -> None:
    server = live_server
    page.goto(f"{server.url}/login")
    page.fill("input[name=username]", server.username)
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/worklist")
    page.goto(f"{server.url}/upload")
    page.set_input_files("input[type=file]", str(films["hannover"].path))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r"/cases/\d+$"), timeout=120_000)
    case = int(re.search(r"/cases/(\d+)", page.url).group(1))

    # Before rejecting, a drag on the heat map draws nothing and the box tools are not shown.
    drag(page, (0.1, 0.1, 0.3, 0.3))
    assert page.locator("#region-layer .region-box").count() == 0 and not page.is_visible("#region-tools")

    page.click("#reject-btn")
    assert page.is_visible("#region-tools")
    page.click("label.chip:has(input[value=text_or_marker])")
    wrong, finding = (0.05, 0.04, 0.3, 0.2), (0.55, 0.35, 0.85, 0.7)
    drag(page, wrong)  # "wrong evidence" is the preselected kind
    page.click("[data-region-kind=finding]")
    drag(page, finding)
    drag(page, (0.4, 0.8, 0.5, 0.9))
    assert page.locator("#region-layer .region-box").count() == 3
    assert "2 finding" in page.inner_text("#region-count")
    page.click("#region-layer .region-box:nth-child(3) .region-remove")  # drawn by mistake: removed again
    assert page.locator("#region-layer .region-box").count() == 2
    assert page.inner_text("#region-count") == "· 1 wrong evidence, 1 finding"
    page.evaluate("() => document.getElementById('overlay-main').scrollIntoView({block: 'start'})")
    shots.take(page, "regions-01-drawn")
    sent = json.loads(page.input_value("#regions-input"))
    assert [r["kind"] for r in sent] == ["wrong_evidence", "finding"]

    page.click("#reject-submit")
    page.wait_for_url(re.compile(r"saved=\d+"))
    first_row = page.inner_text(".history tbody tr:first-child")
    assert "rejected" in first_row and "1 wrong evidence, 1 finding" in first_row
    shots.take(page, "regions-02-saved", full_page=True)

    detail = page.request.get(f"{server.url}/api/v1/predictions/{case}").json()
    (verdict,) = detail["verdicts"]
    assert [r["kind"] for r in verdict["regions"]] == ["wrong_evidence", "finding"]
    for got, want in zip(verdict["regions"], (wrong, finding), strict=True):
        assert got["box"] == pytest.approx(list(want), abs=0.01)
    exported = page.request.get(f"{server.url}/api/v1/verdicts?format=csv")
    row = next(csv.DictReader(io.StringIO(exported.text())))
    assert json.loads(row["regions"]) == verdict["regions"]

    assert page.failed == [], page.failed
    unexpected = [e for e in page.errors if not e.startswith("Failed to load resource")]
    assert unexpected == [], unexpected
