"""What the case viewer fetches besides the film: a heat map's values, overlays and legends in a chosen
colour map, the worklist's small film thumbnails. Real films through the real app and bundled model."""

from __future__ import annotations

import io
from typing import get_args

import httpx
import numpy as np
import pytest
from PIL import Image

from app.schemas import Colormap
from app.services import predictions, viewer
from ml import CLASSES
from ml.cam.overlay import colormap_lut, display_map
from tests.app.conftest import Env
from tests.support.dicom_films import windowed_dicom


def get(env: Env, url: str, params: dict[str, str] | None = None) -> httpx.Response:
    return env.client.get(url, headers=env.auth("reviewer"), params=params)


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_heat_map_values_are_grey_pngs_of_the_films_aspect_matching_the_overlay(env: Env, uploaded: dict) -> None:
    body = uploaded["hannover"]
    (result,) = body["results"]
    cls = result["predicted_class"]
    url = viewer.heat_map_url(body["id"], result["model_id"], cls)
    r = get(env, url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"
    img = decode(r.content)
    assert img.mode == "L" and max(img.size) == viewer.HEAT_MAP_MAX_SIDE
    assert abs(img.width / img.height - body["width"] / body["height"]) < 0.01
    values = np.asarray(img)
    assert values.max() == 255 and values.min() < 64  # min-max scaled: the map's peak is 255
    # the same map, upsampled on its own, gives these values: what the server's overlay colours
    with env.session() as s:
        row = predictions.get_result(session=s, prediction_id=body["id"], model_id=result["model_id"])
        cam = env.app.state.ctx.store.read_cam(row.cam_sha256)
    expected = (display_map(cam[CLASSES.index(cls)], img.height, img.width) * 255).round()
    assert np.abs(values.astype(int) - expected.astype(int)).max() <= 1
    other = get(env, viewer.heat_map_url(body["id"], result["model_id"], "normal" if cls != "normal" else "viral"))
    assert other.content != r.content


def test_heat_map_errors_are_4xx(env: Env, uploaded: dict) -> None:
    body = uploaded["kermany"]
    mid = body["results"][0]["model_id"]
    assert get(env, f"/api/v1/predictions/{body['id']}/heat-maps/{mid}/pneumonia.png").status_code == 404
    assert get(env, f"/api/v1/predictions/999999/heat-maps/{mid}/normal.png").status_code == 404
    assert env.client.get(viewer.heat_map_url(body["id"], mid, "normal")).status_code == 401


@pytest.mark.parametrize("cmap", ["viridis", "jet"])
def test_overlays_and_the_legend_come_in_each_colour_map(env: Env, uploaded: dict, cmap: str) -> None:
    (result,) = uploaded["cohen"]["results"]
    url = result["overlays"][result["predicted_class"]]
    default = get(env, url).content
    chosen = get(env, url, params={"cmap": cmap})
    assert chosen.status_code == 200 and chosen.content != default
    assert get(env, url, params={"cmap": "inferno"}).content == default  # the default
    bar = env.client.get("/legend/colorbar.png", params={"cmap": cmap}, headers=env.auth("reviewer"))
    strip = np.asarray(decode(bar.content).convert("RGB"))
    assert np.array_equal(strip[0], colormap_lut(cmap))  # column i = the colour of value i: the page's table


def test_the_colour_maps_of_the_api_are_the_services_default_first() -> None:
    assert get_args(Colormap) == predictions.OVERLAY_COLORMAPS
    assert predictions.OVERLAY_COLORMAP == "inferno"  # colour-blind safe; the routes' default


def test_an_unknown_colour_map_is_a_422_with_its_choices(env: Env, uploaded: dict) -> None:
    (result,) = uploaded["cohen"]["results"]
    r = get(env, result["overlays"]["normal"], params={"cmap": "rainbow"})
    assert r.status_code == 422 and "inferno" in r.text


def test_worklist_thumbnails_are_small_jpegs_cached_on_disk(env: Env, uploaded: dict) -> None:
    for body in uploaded.values():
        url = viewer.thumbnail_url(body["image_sha256"])
        r = get(env, url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store"
        assert len(r.content) <= viewer.THUMBNAIL_MAX_BYTES
        img = decode(r.content)
        assert max(img.size) == viewer.THUMBNAIL_SIDE and img.mode == "L"
        assert abs(img.width / img.height - body["width"] / body["height"]) < 0.03
        cached = env.app.state.ctx.store.thumbnail_path(body["image_sha256"], viewer.THUMBNAIL_SIDE)
        assert cached.read_bytes() == r.content  # rendered once, kept on disk
        assert get(env, url).content == r.content
    assert get(env, viewer.thumbnail_url("0" * 64)).status_code == 404
    assert get(env, "/api/v1/images/not-a-sha/thumbnail.jpg").status_code == 404
    assert env.client.get(viewer.thumbnail_url(uploaded["kermany"]["image_sha256"])).status_code == 401


def test_a_noisy_large_film_still_gets_a_thumbnail_under_20_kb(env: Env) -> None:
    noise = np.random.default_rng(7).integers(0, 256, size=(1400, 1100), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    r = env.upload(buf.getvalue(), name="noise.png")
    assert r.status_code == 201, r.text
    thumb = get(env, viewer.thumbnail_url(r.json()["image_sha256"]))
    assert thumb.status_code == 200 and len(thumb.content) <= viewer.THUMBNAIL_MAX_BYTES


def test_the_worklist_shows_thumbnails_not_films(env: Env, uploaded: dict) -> None:
    page = env.client.get("/worklist", headers=env.auth("reviewer"))
    assert page.status_code == 200
    assert "/thumbnail.jpg" in page.text
    assert f"/api/v1/images/{uploaded['kermany']['image_sha256']}.png" not in page.text


def test_a_dicom_films_viewer_source_is_its_voi_rendering(env: Env) -> None:
    """The viewer windows the film the server serves: for a DICOM, the film after its own VOI window
    (values below the window black, above it white, a linear ramp inside), at full size."""
    ramp = np.tile(np.linspace(0, 4095, 320).round(), (256, 1))  # 12-bit values, left to right
    r = env.upload(windowed_dicom(ramp, center=2048, width=1024), name="ramp.dcm")
    assert r.status_code == 201, r.text
    body = r.json()
    film = np.asarray(decode(get(env, body["image_url"]).content))
    assert film.shape == ramp.shape
    row = film[0].astype(int)
    assert (row[ramp[0] < 1536 - 1] == 0).all() and (row[ramp[0] > 2560] == 255).all()
    inside = row[(ramp[0] > 1600) & (ramp[0] < 2500)]
    assert (np.diff(inside) >= 0).all() and 0 < inside.min() < inside.max() < 255
    assert len(get(env, viewer.thumbnail_url(body["image_sha256"])).content) <= viewer.THUMBNAIL_MAX_BYTES
