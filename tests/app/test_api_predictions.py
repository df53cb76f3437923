"""Uploading real X-rays through the real app and bundled model: probabilities, overlays, films."""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from app.models import Image as ImageRow
from app.models import Prediction, PredictionResult
from ml import CLASSES
from ml.checkpoints import DEFAULT_CHECKPOINT, file_sha256
from tests.app.conftest import Env, Film, png_size


@pytest.mark.parametrize("source", ["kermany", "cohen", "hannover"])
def test_upload_returns_probabilities_of_the_four_classes(uploaded: dict, films: dict[str, Film], source: str) -> None:
    body = uploaded[source]
    assert len(body["image_sha256"]) == 64
    (result,) = body["results"]
    probs = result["probabilities"]
    assert list(probs) == list(CLASSES)
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-5)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert result["predicted_class"] == max(probs, key=probs.get)
    assert result["cam_method"] == "cam"  # resnet18: the registry's CAM method
    assert result["checkpoint_sha256"] == file_sha256(DEFAULT_CHECKPOINT)
    assert (body["width"], body["height"]) == films[source].size


def test_overlays_are_pngs_of_the_films_aspect_predicted_class_first(
    env: Env, uploaded: dict, films: dict[str, Film]
) -> None:
    for source, body in uploaded.items():
        (result,) = body["results"]
        overlays = result["overlays"]
        assert next(iter(overlays)) == result["predicted_class"]
        assert sorted(overlays) == sorted(CLASSES)
        w, h = films[source].size
        for url in overlays.values():
            r = env.client.get(url, headers=env.auth("reviewer"))
            assert r.status_code == 200
            assert r.headers["content-type"] == "image/png"
            ow, oh = png_size(r.content)
            assert abs(ow / oh - w / h) < 0.01, (source, (ow, oh), (w, h))


def test_overlays_differ_between_classes_and_are_cached(env: Env, uploaded: dict) -> None:
    (result,) = uploaded["cohen"]["results"]
    urls = list(result["overlays"].values())
    first = env.client.get(urls[0], headers=env.auth("reviewer")).content
    second = env.client.get(urls[1], headers=env.auth("reviewer")).content
    assert first != second  # each class has its own map
    assert env.files("cache")  # rendered once, then served from disk
    assert env.client.get(urls[0], headers=env.auth("reviewer")).content == first


def test_film_is_served_as_the_decoded_grayscale_png(env: Env, uploaded: dict, films: dict[str, Film]) -> None:
    body = uploaded["hannover"]
    r = env.client.get(body["image_url"], headers=env.auth("reviewer"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(r.content)))
    original = np.asarray(Image.open(films["hannover"].path).convert("L"))
    assert served.shape == original.shape and np.array_equal(served, original)


def test_prediction_detail_has_results_and_empty_verdicts(env: Env, uploaded: dict) -> None:
    body = uploaded["kermany"]
    r = env.client.get(f"/api/v1/predictions/{body['id']}", headers=env.auth("reviewer"))
    assert r.status_code == 200
    detail = r.json()
    for result in detail["results"]:
        assert set(result.pop("lung_focus_by_class")) == set(CLASSES)  # the detail adds every class's lung focus
    assert detail["results"] == body["results"] and detail["verdicts"] == []
    assert env.client.get("/api/v1/predictions/999999", headers=env.auth("reviewer")).status_code == 404


def test_same_image_twice_is_one_stored_image_and_two_predictions(env: Env, films: dict[str, Film]) -> None:
    images_before, predictions_before = env.count(ImageRow), env.count(Prediction)
    a = env.upload(films["kermany"].data).json()
    b = env.upload(films["kermany"].data).json()
    assert a["image_sha256"] == b["image_sha256"] and a["id"] != b["id"]
    assert env.count(ImageRow) == images_before and env.count(Prediction) == predictions_before + 2


def test_models_all_compares_every_registered_model(env: Env, films: dict[str, Film]) -> None:
    models = env.client.get("/api/v1/models", headers=env.auth("reviewer")).json()
    r = env.upload(films["cohen"].data, models="all")
    assert r.status_code == 201
    assert [res["model_id"] for res in r.json()["results"]] == [m["id"] for m in models]
    r = env.upload(films["cohen"].data, models=str(models[0]["id"]))
    assert r.status_code == 201 and len(r.json()["results"]) == 1


@pytest.mark.parametrize("spec", ["999", "1,999", "abc"])
def test_unknown_model_id_is_422_and_nothing_is_stored(env: Env, films: dict[str, Film], spec: str) -> None:
    before = env.count(Prediction), env.count(PredictionResult)
    r = env.upload(films["cohen"].data, models=spec)
    assert r.status_code == 422 and "model" in r.json()["detail"]
    assert (env.count(Prediction), env.count(PredictionResult)) == before


def test_models_endpoint_lists_the_bundled_model_as_active(env: Env) -> None:
    (model,) = env.client.get("/api/v1/models", headers=env.auth("reviewer")).json()
    assert {"id", "name", "architecture", "version", "active", "classes", "metrics"} <= set(model)
    assert model["active"] is True and model["architecture"] == "resnet18"
    assert model["classes"] == list(CLASSES)
    assert model["checkpoint_sha256"] == file_sha256(DEFAULT_CHECKPOINT)


def monochrome1_dicom(gray: np.ndarray) -> bytes:
    """A 16-bit MONOCHROME1 DICOM of `gray`: stored values inverted, 12 bits, rescale slope 2 / intercept -1000."""
    hu = (255 - gray.astype(np.float64)) / 255.0 * 4000.0 - 1000.0  # dense tissue → low values (MONOCHROME1)
    stored = np.round((hu + 1000.0) / 2.0).astype(np.uint16)  # inverse of slope 2, intercept -1000
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("film.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Test^Patient"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 1000, 4000  # in rescaled units: covers -1000..3000
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_monochrome1_16bit_dicom_with_rescale_predicts(env: Env, films: dict[str, Film]) -> None:
    gray = np.asarray(Image.open(films["kermany"].path).convert("L"))
    data = monochrome1_dicom(gray)
    assert pydicom.dcmread(io.BytesIO(data)).PhotometricInterpretation == "MONOCHROME1"
    r = env.upload(data, name="film.dcm")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "dicom" and (body["width"], body["height"]) == (gray.shape[1], gray.shape[0])
    film = np.asarray(Image.open(io.BytesIO(env.client.get(body["image_url"], headers=env.auth("reviewer")).content)))
    # Inverted back and windowed over the whole range: the film matches the original within rounding.
    assert np.abs(film.astype(int) - gray.astype(int)).max() <= 2
    with env.session() as s:
        stored = s.query(ImageRow).filter_by(sha256=body["image_sha256"]).one()
        assert stored.meta["inverted"] is True and stored.meta["rescale"] == {"slope": 2.0, "intercept": -1000.0}
        assert "Test^Patient" not in str(stored.meta)  # no patient data copied into the database
