"""The case viewer in headless Chromium: window/level, zoom and pan, invert change the rendered film;
opacity, contours, colour map and flash change the heat map; everything by keyboard; the controls fit
1280×720 on a flagged case; worklist thumbnails are small. Pixels are read back from the canvases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.app.conftest import Film
from tests.browser.conftest import LiveServer, Shots, log_in, running_server, upload_case
from tests.browser.test_reading_station import _inside
from tests.support.dicom_films import windowed_dicom

pytestmark = pytest.mark.browser

FILM = "#viewer .view-overlay canvas.vw-film"
HEAT = "#viewer canvas.vw-heat"
STATS = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, maxA = 0, sumA = 0, n = d.length / 4, probe = [];
  for (let i = 0; i < d.length; i += 4) { sum += d[i]; sumA += d[i + 3]; if (d[i + 3] > maxA) maxA = d[i + 3]; }
  for (let k = 1; k < 10; k++) {
    const i = 4 * Math.floor(n * k / 10);
    probe.push([d[i], d[i + 1], d[i + 2], d[i + 3]]);
  }
  return {w: c.width, h: c.height, mean: sum / n, maxAlpha: maxA, meanAlpha: sumA / n, probe: probe};
}"""


RESOURCES = "() => performance.getEntriesByType('resource').map(e => e.name)"
PIXEL = """([sel, x, y]) => document.querySelector(sel).getContext('2d').getImageData(x, y, 1, 1).data[0]"""
SAME_AS_PNG = """() => {  // the windowed canvas against the stored 8-bit film, pixel for pixel: the mismatches
  const img = document.querySelector('.view-film img'), c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const a = ctx.getImageData(0, 0, c.width, c.height).data;
  const f = document.querySelector('#viewer .view-overlay canvas.vw-film');
  const b = f.getContext('2d').getImageData(0, 0, f.width, f.height).data;
  let n = 0;
  for (let i = 0; i < a.length; i += 4) if (a[i] !== b[i]) n++;
  return n;
}"""


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The bundled model only, every result flagged for lung focus (threshold 100 %): the tallest case page."""
    with running_server(tmp_path_factory.mktemp("viewer"), extra_models=False, CXR_LUNG_FOCUS_THRESHOLD="1.0") as s:
        yield s


@pytest.fixture(scope="module")
def case_id(live_server: LiveServer, chromium: Any, films: dict[str, Film]) -> int:
    return upload_case(chromium, live_server, films["hannover"].path)


@pytest.fixture(scope="module")
def dicom_case(live_server: LiveServer, chromium: Any, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A 12-bit DICOM ramp (stored value = 8 × column, 0..4088) with the window 2048/4096: 16 stored
    values per grey level of its 8-bit rendering."""
    path = tmp_path_factory.mktemp("dicom") / "ramp.dcm"
    path.write_bytes(windowed_dicom(np.tile(np.arange(512) * 8, (384, 1)), 2048, 4096))
    return upload_case(chromium, live_server, path)


def open_case(page: Any, server: LiveServer, case_id: int) -> None:
    log_in(page, server, f"/cases/{case_id}")
    page.wait_for_selector("#viewer.vw-ready .vw-port.has-heat")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")


def stats(page: Any, selector: str) -> dict[str, Any]:
    return page.evaluate(STATS, selector)


def data(page: Any, name: str) -> str:
    return page.get_attribute("#viewer", f"data-{name}")


def test_window_level_and_invert_change_the_rendered_film(page: Any, live_server: LiveServer, case_id: int) -> None:
    open_case(page, live_server, case_id)
    film = stats(page, FILM)
    natural = page.evaluate(
        "() => { const i = document.querySelector('.view-film img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert [film["w"], film["h"]] == natural  # the full-resolution film, pixel for pixel
    assert (data(page, "window"), data(page, "level")) == ("255", "128")  # as stored
    assert data(page, "values") == "8-bit"  # a PNG film: windowed in its own 8 bits, no values fetched
    assert not any("/values." in u for u in page.evaluate(RESOURCES))

    page.keyboard.press("i")  # invert: every grey value g becomes 255 - g
    inverted = stats(page, FILM)
    assert data(page, "invert") == "true"
    for a, b in zip(film["probe"], inverted["probe"], strict=True):
        assert a[0] + b[0] == 255, (a, b)
    page.keyboard.press("i")
    assert stats(page, FILM)["probe"] == film["probe"]

    page.keyboard.press("w")  # the lung preset: a window on the darker part of the film
    assert page.input_value("#vw-preset") == "lung"
    lung = stats(page, FILM)
    assert int(data(page, "window")) < 255 and lung["mean"] > film["mean"] + 5, (lung["mean"], film["mean"])

    page.select_option("#vw-preset", "default")
    box = page.locator("#viewer .view-overlay .vw-port").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 100, y + 40, steps=5)  # left: a narrower window; down: a higher level (darker)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#vw-wl').textContent !== 'W 255 · L 128'")
    assert int(data(page, "window")) == 155 and int(data(page, "level")) == 168, page.inner_text("#vw-wl")
    assert page.input_value("#vw-preset") == "custom"
    page.wait_for_timeout(100)  # the redraw waits for the next animation frame
    assert stats(page, FILM)["mean"] < film["mean"] - 5
    page.keyboard.press("Shift+ArrowUp")  # brighter by 5
    assert int(data(page, "level")) == 163
    page.keyboard.press("f")  # the plain-film view shows the same windowed film
    page.wait_for_timeout(100)
    assert stats(page, "#viewer .view-film canvas.vw-film")["probe"] == stats(page, FILM)["probe"]
    assert page.errors == []


def stage_rect(page: Any) -> dict[str, float]:
    return page.locator("#viewer .view-overlay .vw-stage").bounding_box()


def test_zoom_and_pan_by_keys_and_wheel(page: Any, live_server: LiveServer, case_id: int) -> None:
    open_case(page, live_server, case_id)
    port = page.locator("#viewer .view-overlay .vw-port")
    fit, before = stage_rect(page), port.screenshot()
    page.keyboard.press("+")
    assert data(page, "zoom") == "1.250"
    zoomed = stage_rect(page)
    assert zoomed["width"] == pytest.approx(fit["width"] * 1.25, rel=1e-3)
    # zoomed about the centre of the port: the film's centre stays where it was
    assert zoomed["x"] + zoomed["width"] / 2 == pytest.approx(fit["x"] + fit["width"] / 2, abs=1)
    assert port.screenshot() != before
    page.keyboard.press("ArrowDown")  # pan: the film moves up (a tenth of the port), no further than its edge
    assert stage_rect(page)["y"] < zoomed["y"] - 5
    page.keyboard.press("0")
    assert data(page, "zoom") == "1.000" and stage_rect(page) == pytest.approx(fit, abs=0.5)

    # the wheel zooms about the cursor: the film point under it stays under it
    px, py = fit["x"] + fit["width"] * 0.3, fit["y"] + fit["height"] * 0.4
    page.mouse.move(px, py)
    page.mouse.wheel(0, -300)
    page.wait_for_function("() => Number(document.querySelector('#viewer').dataset.zoom) > 1.2")
    after = stage_rect(page)
    assert (px - after["x"]) / after["width"] == pytest.approx(0.3, abs=0.01)
    assert (py - after["y"]) / after["height"] == pytest.approx(0.4, abs=0.01)

    page.keyboard.press("z")  # 1:1: one film pixel per screen pixel
    assert page.inner_text("#vw-zoom") == "100 %"
    natural = page.evaluate("() => document.querySelector('.view-film img').naturalWidth")
    assert stage_rect(page)["width"] == pytest.approx(natural, abs=1)
    page.keyboard.press("z")
    assert data(page, "zoom") == "1.000"
    # side by side: the plain film follows the same zoom
    page.keyboard.press("s")
    page.keyboard.press("+")
    films = page.locator("#viewer .vw-stage").evaluate_all("els => els.map(e => e.style.transform)")
    assert len(films) == 2 and all("scale(1.25)" in t for t in films), films
    assert page.errors == []


def test_opacity_contours_colour_map_and_flash_change_the_heat_map(
    page: Any, live_server: LiveServer, case_id: int
) -> None:
    open_case(page, live_server, case_id)
    heat = stats(page, HEAT)
    assert heat["maxAlpha"] == 128 and data(page, "cmap") == "inferno"  # 50 %: the server overlay's blend
    for _ in range(5):
        page.keyboard.press("]")
    assert page.input_value("#vw-opacity") == "100" and stats(page, HEAT)["maxAlpha"] == 255
    page.fill("#vw-opacity", "20")
    faint = stats(page, HEAT)
    assert faint["maxAlpha"] == 51 and faint["meanAlpha"] < heat["meanAlpha"]

    page.select_option("#vw-cmap", "viridis")
    page.wait_for_function("() => document.querySelector('#viewer').dataset.cmap === 'viridis'")
    page.wait_for_timeout(500)  # the legend strip of the new map is fetched, then the heat map redrawn
    assert stats(page, HEAT)["probe"] != faint["probe"]
    assert all(
        "cmap=viridis" in s for s in page.eval_on_selector_all(".class-thumb img.heatmap", "els => els.map(e => e.src)")
    )
    assert "cmap=viridis" in page.get_attribute("#colorbar", "src")

    assert page.locator("svg.vw-contours path").count() == 0
    page.keyboard.press("c")  # the select has the focus: its letters are not the viewer's
    assert data(page, "heat-mode") == "fill"
    page.keyboard.press("Escape")  # leaves the select
    page.keyboard.press("c")  # contours: iso-lines instead of the colour fill
    assert data(page, "heat-mode") == "contours"
    lines = page.locator("svg.vw-contours path.vw-line")
    assert lines.count() >= 2 and all(len(d) > 20 for d in lines.evaluate_all("ps => ps.map(p => p.getAttribute('d'))"))
    assert page.eval_on_selector(HEAT, "c => getComputedStyle(c).display") == "none"
    page.keyboard.press("c")
    assert page.locator("svg.vw-contours path").count() == 0
    assert page.eval_on_selector(HEAT, "c => getComputedStyle(c).display") != "none"

    page.keyboard.down("x")  # hold: the plain film
    assert page.eval_on_selector(HEAT, "c => getComputedStyle(c).visibility") == "hidden"
    assert page.eval_on_selector(FILM, "c => getComputedStyle(c).visibility") == "visible"
    page.keyboard.up("x")
    assert page.eval_on_selector(HEAT, "c => getComputedStyle(c).visibility") == "visible"
    page.keyboard.press("f")  # from the plain film, holding X shows the heat map
    page.keyboard.down("x")
    assert page.is_visible(HEAT) and not page.is_visible(".view-film .vw-port")
    page.keyboard.up("x")
    assert not page.is_visible(HEAT) and page.is_visible(".view-film .vw-port")

    page.reload()  # display preferences are kept; window/level and zoom start afresh
    page.wait_for_selector("#viewer.vw-ready .vw-port.has-heat", state="attached")  # (in the plain-film view)
    assert data(page, "cmap") == "viridis" and page.input_value("#vw-opacity") == "20"
    page.select_option("#vw-cmap", "inferno")
    page.fill("#vw-opacity", "50")
    assert page.errors == []


def test_class_keys_stay_fixed_and_switch_the_viewers_map(page: Any, live_server: LiveServer, case_id: int) -> None:
    open_case(page, live_server, case_id)
    seen = {}
    for key, cls in (("1", "normal"), ("2", "bacterial"), ("3", "viral"), ("4", "covid19")):
        page.keyboard.press(key)
        assert page.get_attribute("#overlay-main", "data-cls") == cls
        fetched = f"e => e.name.endsWith('/heat-maps/1/{cls}.png')"
        page.wait_for_function(f"() => performance.getEntriesByType('resource').some({fetched})")
        page.wait_for_timeout(150)
        seen[cls] = str(stats(page, HEAT)["probe"])
    assert len(set(seen.values())) == 4, seen  # each class its own map
    page.keyboard.press("?")
    assert page.is_visible("#vw-help") and "hold" in page.inner_text("#vw-help")
    page.keyboard.press("1")  # keys do nothing behind the help
    assert page.get_attribute("#overlay-main", "data-cls") == "covid19"
    page.keyboard.press("Escape")
    assert not page.is_visible("#vw-help")
    assert page.errors == []


def test_reviewer_boxes_stay_on_the_film_when_zoomed(page: Any, live_server: LiveServer, case_id: int) -> None:
    open_case(page, live_server, case_id)
    page.keyboard.press("r")
    fit = stage_rect(page)
    x0, y0 = fit["x"] + fit["width"] * 0.4, fit["y"] + fit["height"] * 0.4
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + fit["width"] * 0.2, y0 + fit["height"] * 0.2, steps=4)
    page.mouse.up()
    region = page.locator(".region-box").first
    before = region.bounding_box()
    page.keyboard.press("+")
    page.keyboard.press("+")
    after, stage = region.bounding_box(), stage_rect(page)
    assert after["width"] == pytest.approx(before["width"] * 1.5625, rel=0.02)
    assert (after["x"] - stage["x"]) / stage["width"] == pytest.approx(0.4, abs=0.01)


def test_viewer_controls_and_verdict_fit_the_screen_on_a_flagged_case(
    chromium: Any, live_server: LiveServer, case_id: int, shots: Shots
) -> None:
    for width, height in ((1280, 720), (1440, 900)):
        context = chromium.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        page = context.new_page()
        open_case(page, live_server, case_id)
        assert page.is_visible("#lung-focus-warning, #risk-warnings")  # the tallest side pane: a warning box
        shots.take(page, f"viewer-{width}x{height}")
        for selector in ("#viewer .view-overlay .vw-port", "#vw-tools", "table.probs", "#approve-btn", "#reject-btn"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and _inside(box, width, height), (width, height, selector, box)
        page.keyboard.press("w")
        page.keyboard.press("c")
        page.keyboard.press("+")
        page.keyboard.press("+")
        shots.take(page, f"viewer-{width}x{height}-lung-contours-zoom")
        page.keyboard.press("s")
        page.keyboard.press("i")
        shots.take(page, f"viewer-{width}x{height}-side-inverted")
        page.keyboard.press("?")
        shots.take(page, f"viewer-{width}x{height}-help")
        page.keyboard.press("Escape")
        page.keyboard.press("c")
        page.keyboard.press("h")
        page.keyboard.press("r")  # rejecting: the reasons, the box tools and the viewer's controls, all on screen
        for selector in ("#vw-tools", "#region-tools", "#reject-submit"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and _inside(box, width, height), (width, height, selector, box)
        shots.take(page, f"viewer-{width}x{height}-reject")
        context.close()


def test_worklist_thumbnails_are_small_cached_jpegs(page: Any, live_server: LiveServer, case_id: int) -> None:
    log_in(page, live_server, "/worklist")
    src = page.get_attribute(".worklist .thumb img", "src")
    assert src.endswith("/thumbnail.jpg"), src
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    reply = page.request.get(f"{live_server.url}{src}")
    assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg"
    assert reply.headers["cache-control"] == "no-store" and len(reply.body()) <= 20_000
    assert list((live_server.data_dir / "cache" / "thumbnails").rglob("*.jpg"))
    assert not any(
        "/api/v1/images/" in u and u.endswith(".png")
        for u in page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    )


def test_a_dicom_film_is_windowed_on_its_modality_values(page: Any, live_server: LiveServer, dicom_case: int) -> None:
    open_case(page, live_server, dicom_case)
    page.wait_for_function("() => document.querySelector('#viewer').dataset.values === 'modality'")
    assert page.inner_text("#vw-wl") == "W 4096 · L 2048"  # the file's own window, in its units
    assert (data(page, "window"), data(page, "level")) == ("4096", "2048")
    assert page.evaluate(SAME_AS_PNG) == 0  # the first picture is the stored 8-bit rendering
    # stored 2048 and 2056 (columns 256 and 257): one grey level in the 8-bit rendering
    assert page.evaluate(PIXEL, [FILM, 256, 10]) == page.evaluate(PIXEL, [FILM, 257, 10])

    box = page.locator("#viewer .view-overlay .vw-port").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 200, y, steps=5)  # left: a narrower window, a 256th of the range (16 units) per pixel
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#vw-wl').textContent !== 'W 4096 · L 2048'")
    assert int(data(page, "window")) == 902 and data(page, "level") == "2048", page.inner_text("#vw-wl")
    page.wait_for_timeout(100)  # the redraw waits for the next animation frame
    a, b = page.evaluate(PIXEL, [FILM, 256, 10]), page.evaluate(PIXEL, [FILM, 257, 10])
    assert b - a >= 2, (a, b)  # what the 8-bit film had merged is now two grey levels apart
    assert page.evaluate(SAME_AS_PNG) > 0

    page.keyboard.press("i")  # invert works on the values too
    assert page.evaluate(PIXEL, [FILM, 256, 10]) == 255 - a
    page.keyboard.press("i")
    page.keyboard.press("w")  # presets span the film's values: the lung preset is in modality units
    assert page.input_value("#vw-preset") == "lung" and int(data(page, "window")) > 255
    page.select_option("#vw-preset", "default")
    assert page.inner_text("#vw-wl") == "W 4096 · L 2048" and page.evaluate(SAME_AS_PNG) == 0
    assert any(u.endswith("/values.u16") for u in page.evaluate(RESOURCES))
    assert page.errors == [] and page.failed == []


MEAN = """() => { const c = document.querySelector('#viewer .view-overlay canvas.vw-film');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); }"""


def test_a_monochrome1_dicom_is_windowed_in_its_rescaled_units(
    page: Any, live_server: LiveServer, chromium: Any, tmp_path: Any
) -> None:
    """Stored 0..4088, slope 2, intercept −1000 (modality −1000..7176), low values bright: the first picture
    is the stored rendering, the readout is in modality units and Shift+↑ still brightens."""
    path = tmp_path / "mono1.dcm"
    ramp = np.tile(np.arange(512) * 8, (384, 1))
    path.write_bytes(windowed_dicom(ramp, 3000, 6000, photometric="MONOCHROME1", slope=2, intercept=-1000))
    open_case(page, live_server, upload_case(chromium, live_server, path))
    page.wait_for_function("() => document.querySelector('#viewer').dataset.values === 'modality'")
    assert page.inner_text("#vw-wl") == "W 6000 · L 3000" and page.evaluate(SAME_AS_PNG) == 0
    assert page.evaluate(PIXEL, [FILM, 0, 10]) > page.evaluate(PIXEL, [FILM, 511, 10])  # low stored = bright
    before = page.evaluate(MEAN)
    page.keyboard.press("Shift+ArrowUp")  # brighter: the level moves up the modality values (32 units a step)
    page.wait_for_function("() => document.querySelector('#viewer').dataset.level !== '3000'")  # next frame
    assert int(data(page, "level")) == 3160, page.inner_text("#vw-wl")
    assert page.evaluate(MEAN) > before + 2
    assert page.errors == [] and page.failed == []
