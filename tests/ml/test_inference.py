"""`Predictor` on the bundled model: what the service stores for every prediction, safe sharing, and the per-film
pipeline (`analyze_films`) that the service, `evaluate` and batch runs share."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from ml import CLASSES
from ml.cam.overlay import normalized_map
from ml.checkpoints import DEFAULT_CHECKPOINT, base_meta, file_sha256, read_meta
from ml.inference import Predictor, analyze_film, analyze_films
from ml.lung_crop import lung_box
from ml.lung_focus import lung_focus_by_class
from ml.lungseg import LungSegmenter
from ml.registry import get_arch


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint()


def test_default_is_the_bundled_model_with_its_hash(predictor: Predictor) -> None:
    assert predictor.checkpoint_path == str(DEFAULT_CHECKPOINT)
    assert predictor.checkpoint_sha256 == file_sha256(DEFAULT_CHECKPOINT)
    assert predictor.meta == read_meta(DEFAULT_CHECKPOINT)
    assert predictor.arch == predictor.meta.arch and predictor.input_size == predictor.meta.input_size
    assert predictor.cam_method == "cam"
    assert not predictor.model.training
    assert not any(p.requires_grad for p in predictor.model.parameters())


def test_films_of_any_size_in_one_call(
    predictor: Predictor, real_films: list[np.ndarray], synthetic_xray: np.ndarray
) -> None:
    films = [*real_films, synthetic_xray]
    assert len({f.shape for f in films}) == 3
    batch = predictor.predict(films)
    assert predictor.predict([]) == []
    for film, pred in zip(films, batch, strict=True):
        alone = predictor.predict_one(film)
        np.testing.assert_allclose(
            list(pred.probabilities.values()), list(alone.probabilities.values()), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(pred.cam_raw, alone.cam_raw, rtol=1e-4, atol=1e-5)
        assert pred.cam_identity == "mean"
        assert pred.predicted_class == max(CLASSES, key=lambda c: pred.probabilities[c])
        h, w = film.shape
        m = normalized_map(pred.cam_raw[CLASSES.index("covid19")], h, w)
        assert m.shape == (h, w) and m.min() >= 0.0 and m.max() <= 1.0
        assert pred.cam_raw.shape[0] == len(CLASSES)


def test_one_predictor_serves_concurrent_requests(predictor: Predictor, real_films: list[np.ndarray]) -> None:
    expected = [predictor.predict_one(f) for f in real_films]
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(worker: int) -> None:
        for i, film in enumerate(real_films):
            results[worker, i] = predictor.predict_one(film).cam_raw

    threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (_, i), cam_raw in results.items():
        np.testing.assert_allclose(cam_raw, expected[i].cam_raw, rtol=1e-5, atol=1e-6)
    assert len(results) == 3 * len(real_films)


# --------------------------------------------------------------------------- the per-film pipeline


@pytest.fixture(scope="module")
def segmenter() -> LungSegmenter:
    return LungSegmenter.from_checkpoint()


@pytest.fixture(scope="module")
def lung_crop_cnnx() -> Predictor:
    """An untrained CNN-X that sees only each film's lungs (the mode needs no training to be exercised)."""
    spec = get_arch("cnnx")
    torch.manual_seed(0)
    meta = replace(base_meta(spec, input_size=spec.input_size, scenario_classes=CLASSES), input_mode="lung-crop")
    return Predictor(spec.build(pretrained=False), meta)


class CountingSegmenter(LungSegmenter):
    def __init__(self, inner: LungSegmenter) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls = 0

    def predict_small(self, gray: np.ndarray) -> np.ndarray:
        self.calls += 1
        return super().predict_small(gray)


def test_the_pipeline_segments_each_film_once_and_scores_every_model_against_that_mask(
    predictor: Predictor, lung_crop_cnnx: Predictor, segmenter: LungSegmenter, real_films: list[np.ndarray]
) -> None:
    counting = CountingSegmenter(segmenter)
    films = analyze_films(real_films, [predictor, lung_crop_cnnx], counting)
    assert counting.calls == len(real_films), "segmentation runs once per film, not once per model"
    assert len(films) == len(real_films)
    for gray, film in zip(real_films, films, strict=True):
        assert film.lungseg_sha256 == segmenter.checkpoint_sha256
        assert film.lung_mask is not None and film.lung_mask.shape == (256, 256)
        np.testing.assert_array_equal(film.lung_mask, segmenter.predict_small(gray))
        full, cropped = film.predictions
        assert full.input_box is None and cropped.input_box == lung_box(film.lung_mask, lung_crop_cnnx.crop_margin)
        for pred in (full, cropped):
            # every class's threshold-free lung focus, from the same maps and the film's one mask
            assert pred.lung_focus == lung_focus_by_class(pred.cam_raw, film.lung_mask, box=pred.input_box)
            assert pred.predicted_lung_focus == pred.lung_focus[pred.predicted_class]
        # what the pipeline returns is what the model gives on its own with that mask
        alone = predictor.predict_one(gray, film.lung_mask)
        assert full.probabilities == pytest.approx(alone.probabilities, abs=1e-6)
        np.testing.assert_allclose(full.cam_raw, alone.cam_raw, rtol=1e-4, atol=1e-5)
    assert (
        analyze_film(real_films[0], [predictor], segmenter).predictions[0].lung_focus
        == films[0].predictions[0].lung_focus
    )
    assert analyze_films([], [predictor], segmenter) == []


def test_without_a_segmenter_there_is_no_lung_focus_and_lung_crop_models_say_why(
    predictor: Predictor, lung_crop_cnnx: Predictor, real_films: list[np.ndarray]
) -> None:
    (film,) = analyze_films(real_films[:1], [predictor], None)
    assert film.lung_mask is None and film.lungseg_sha256 is None
    assert film.predictions[0].lung_focus is None and film.predictions[0].predicted_lung_focus is None
    with pytest.raises(ValueError, match="lung-cropped films"):
        analyze_films(real_films[:1], [lung_crop_cnnx], None)
