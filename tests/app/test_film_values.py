"""A DICOM film's modality values for the viewer's window/level: what the 8-bit VOI rendering lost, exactly
as the file stores it (rescale applied, no VOI), with the file's own windows. Real uploads, real decoder."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from app.services import viewer
from ml.imageio import _linear_window
from tests.app.conftest import Env, Film
from tests.support.dicom_films import windowed_dicom

SHAPE = (256, 320)


def gradient() -> np.ndarray:
    """Every 12-bit value 0..4095, row by row from the top left (20 pixels each)."""
    return (np.arange(SHAPE[0] * SHAPE[1]) * 4096 // (SHAPE[0] * SHAPE[1])).reshape(SHAPE)


def get(env: Env, url: str) -> httpx.Response:
    return env.client.get(url, headers=env.auth("reviewer"))


def upload(env: Env, data: bytes) -> str:
    r = env.upload(data, name="film.dcm")
    assert r.status_code == 201, r.text
    return str(r.json()["image_sha256"])


def values_of(env: Env, sha: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """The description, the uint16 values and the 8-bit film of an uploaded image."""
    r = get(env, viewer.film_values_url(sha))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    desc = r.json()
    data = get(env, desc["data_url"])
    assert data.status_code == 200 and data.headers["content-type"] == "application/octet-stream"
    assert data.headers["cache-control"] == "no-store"
    assert len(data.content) == 2 * desc["width"] * desc["height"]
    u = np.frombuffer(data.content, dtype="<u2").reshape(desc["height"], desc["width"])
    film = np.asarray(Image.open(io.BytesIO(get(env, f"/api/v1/images/{sha}.png").content)).convert("L"))
    return desc, u, film


def test_a_12_bit_films_values_are_its_stored_values_with_the_files_window(env: Env) -> None:
    stored = gradient()
    sha = upload(env, windowed_dicom(stored, [2048, 1200], [4096, 800], explanations=["FULL", "LUNG"]))
    desc, u, film = values_of(env, sha)
    assert (desc["width"], desc["height"], desc["dtype"], desc["byte_order"]) == (320, 256, "uint16", "little")
    assert desc["data_url"] == viewer.film_values_data_url(sha)
    assert (desc["offset"], desc["scale"], desc["exact"], desc["inverted"]) == (0, 1, True, False)
    assert (desc["minimum"], desc["maximum"], desc["rescale_slope"], desc["rescale_intercept"]) == (0, 4095, 1, 0)
    assert desc["windows"] == [
        {"center": 2048, "width": 4096, "explanation": "FULL"},
        {"center": 1200, "width": 800, "explanation": "LUNG"},
    ]
    assert desc["voi"] == "window"
    assert np.array_equal(desc["offset"] + desc["scale"] * u.astype(float), stored)
    assert len(np.unique(u)) == 4096 and len(np.unique(film)) <= 256  # 16 stored levels per grey level
    # two stored values the 8-bit film cannot tell apart are distinct here
    a, b = np.argwhere(stored == 2040)[0], np.argwhere(stored == 2047)[0]
    assert film[tuple(a)] == film[tuple(b)] and u[tuple(a)] != u[tuple(b)]
    # the file's first window over the values is the 8-bit film: the viewer's first picture is today's
    assert np.array_equal(_linear_window(desc["offset"] + desc["scale"] * u, 2048, 4096), film)
    # derived once from the kept original, then read from the disk cache
    store = env.app.state.ctx.store
    assert all(store.values_path(sha, suffix).is_file() for suffix in viewer.VALUES_SUFFIXES)
    assert get(env, desc["data_url"]).content == u.tobytes()
    # gzip-encoded to a client that accepts it (httpx does, and decodes it, as browsers do); plain otherwise
    zipped = get(env, desc["data_url"])
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) < len(u.tobytes()) / 2 and zipped.content == u.tobytes()
    plain = env.client.get(desc["data_url"], headers={**env.auth("reviewer"), "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == u.tobytes()


def test_monochrome1_is_turned_round_so_dense_is_bright_and_the_rescale_is_applied(env: Env) -> None:
    stored = gradient()
    sha = upload(env, windowed_dicom(stored, 3000, 6000, photometric="MONOCHROME1", slope=2, intercept=-1000))
    desc, u, film = values_of(env, sha)
    modality = stored * 2.0 - 1000
    assert desc["inverted"] is True and desc["scale"] == -2 and desc["exact"] is True
    assert (desc["rescale_slope"], desc["rescale_intercept"]) == (2, -1000)
    assert (desc["minimum"], desc["maximum"]) == (modality.min(), modality.max()) == (-1000, 7190)
    assert np.array_equal(desc["offset"] + desc["scale"] * u.astype(float), modality)
    assert u[0, 0] == u.max() and u[-1, -1] == 0  # low stored values are bright in MONOCHROME1
    assert np.all(np.diff(film.ravel().astype(int)) <= 0)  # as in the 8-bit film: it falls where u falls
    # the window in modality units, then turned round: the 8-bit film exactly
    assert np.array_equal(255 - _linear_window(desc["offset"] + desc["scale"] * u, 3000, 6000), film)


def test_a_png_film_has_no_values_and_unknown_films_are_404(env: Env, films: dict[str, Film]) -> None:
    r = env.upload(films["hannover"].data, name=films["hannover"].path.name)
    assert r.status_code == 201, r.text
    sha = r.json()["image_sha256"]
    for url in (viewer.film_values_url(sha), viewer.film_values_data_url(sha)):
        reply = get(env, url)
        assert reply.status_code == 404 and "8-bit" in reply.json()["detail"], reply.text
    assert get(env, viewer.film_values_url("0" * 64)).status_code == 404
    assert get(env, "/api/v1/images/not-a-sha/values.json").status_code == 404
    assert get(env, "/api/v1/images/not-a-sha/values.u16").status_code == 404


def test_the_values_are_authenticated_like_the_film(env: Env) -> None:
    sha = upload(env, windowed_dicom(gradient(), 2048, 4096))
    png = f"/api/v1/images/{sha}.png"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        expected = env.client.get(png, headers=headers).status_code
        assert expected == 401
        for url in (viewer.film_values_url(sha), viewer.film_values_data_url(sha)):
            assert env.client.get(url, headers=headers).status_code == expected, url
