"""`Predictor` on the bundled model: what the service stores for every prediction, and safe sharing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ml import CLASSES
from ml.checkpoints import DEFAULT_CHECKPOINT, file_sha256, read_meta
from ml.inference import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint()


def test_default_is_the_bundled_model_with_its_hash(predictor: Predictor) -> None:
    assert predictor.checkpoint_path == str(DEFAULT_CHECKPOINT)
    assert predictor.checkpoint_sha256 == file_sha256(DEFAULT_CHECKPOINT)
    assert predictor.meta == read_meta(DEFAULT_CHECKPOINT)
    assert predictor.arch == predictor.meta["arch"] and predictor.input_size == predictor.meta["input_size"]
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
        assert pred.classes_by_probability()[0] == pred.predicted_class
        order = [pred.probabilities[c] for c in pred.classes_by_probability()]
        assert order == sorted(order, reverse=True)
        h, w = film.shape
        m = pred.cam_map("covid19", h, w)
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
