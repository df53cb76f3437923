"""Error risk and warnings (ml/risk.py, ml/calibrate.py): the statistics on known data, the fit on a real
tiny model, its round trip through the checkpoint, old checkpoints, and non-chest images warned."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ml import CLASSES
from ml.calibrate import FOCUS_SHARE, OOD_SHARE, TARGET_RIGHT_SHARE, calibrate_checkpoint
from ml.checkpoints import DEFAULT_CHECKPOINT, CheckpointMeta, read_checkpoint, read_meta
from ml.cli_risk import FOCUS_SHARE as CLI_FOCUS
from ml.cli_risk import OOD_SHARE as CLI_OOD
from ml.cli_risk import TARGET_RIGHT_SHARE as CLI_TARGET
from ml.data import read_manifest
from ml.inference import Predictor, analyze_films
from ml.lung_shape import lung_parts, lung_shape
from ml.lungseg import LungSegmenter
from ml.metrics import auroc, expected_calibration_error
from ml.risk import (
    MESSAGES,
    NO_RISK_MODEL,
    FeatureStats,
    fit_logistic,
    fit_temperature,
    scaled_probabilities,
)
from ml.transforms import load_grayscale
from tests.support.checkpoints import write_untrained_cnnx
from tests.support.non_chest import skimage_samples, synthetic


# --------------------------------------------------------------------------- the statistics
def test_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 4))
    labels = np.array([rng.choice(4, p=p) for p in scaled_probabilities(true_logits, 1.0)])
    t = fit_temperature(true_logits * 3.0, labels)  # a model 3x too confident
    assert t == pytest.approx(3.0, rel=0.1)
    before = scaled_probabilities(true_logits * 3.0, 1.0)
    after = scaled_probabilities(true_logits * 3.0, t)
    right = before.argmax(1) == labels
    assert expected_calibration_error(after.max(1), right) < expected_calibration_error(before.max(1), right) / 2


def test_mahalanobis_distance_grows_away_from_the_training_films() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (4, 32))
    labels = np.repeat(np.arange(4), 100)
    feats = centres[labels] + rng.normal(0, 1, (400, 32))
    stats = FeatureStats.fit(feats, labels)
    inside, _ = stats.distances(centres[labels[:50]] + rng.normal(0, 1, (50, 32)))
    outside, _ = stats.distances(centres[labels[:50]] + rng.normal(0, 1, (50, 32)) + 8.0)
    assert np.median(inside.min(1)) < 1.5 < np.median(outside.min(1))
    near, _ = stats.distances(centres[2:3])
    assert int(np.argmin(near[0])) == 2


def test_relative_distance_ignores_a_shift_every_film_shares_but_not_a_film_off_its_class() -> None:
    """A new hospital moves all its films the same way: the plain distance grows, the relative one (class
    distance² − background distance²) stays near the training films'; a film between two classes' clouds,
    called one of them, stands out in the relative distance."""
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 3, (4, 32))
    labels = np.repeat(np.arange(4), 150)
    stats = FeatureStats.fit(centres[labels] + rng.normal(0, 1, (600, 32)), labels)
    assert stats.background_precision is not None

    def both(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, _ = stats.distances(x)
        background = stats.background_distances(x)
        assert background is not None
        return dist[:, k], dist[:, k] ** 2 - background**2

    home = centres[0] + rng.normal(0, 1, (100, 32))
    shifted = home + 0.5 * np.abs(rng.normal(0, 3, 32))  # every feature of the new hospital's films moves
    between = (centres[0] + centres[1]) / 2 + rng.normal(0, 1, (100, 32))
    plain_home, rel_home = both(home, 0)
    plain_shift, rel_shift = both(shifted, 0)
    _, rel_between = both(between, 0)
    assert np.median(plain_shift) > 1.5 * np.median(plain_home)
    assert abs(np.median(rel_shift) - np.median(rel_home)) < 0.5 * (np.median(rel_between) - np.median(rel_home))


def test_out_of_distribution_uses_the_relative_distance_when_it_was_fitted() -> None:
    from ml.risk import Signals, Thresholds, out_of_distribution

    cuts = {"risk": 0.5, "distance": 1.0, "focus_ratio": 0.5, "lung_area_min": 0.1, "lung_area_max": 0.8,
            "lung_balance_min": 0.2, "lung_fill_min": 0.2, "lung_two_share_min": 0.9, "lung_layout_min": 0.0,
            "chest_distance": 9.0, "chest_residual": 0.9}  # fmt: skip
    far_but_typical = Signals(0.9, 0.2, -3.0, class_distance=2.0, ood_distance=2.0, feature_residual=0.1,
                              relative_distance=0.05)  # fmt: skip
    near_but_off_class = replace(far_but_typical, class_distance=0.5, relative_distance=0.9)
    old = Thresholds.from_dict(cuts)  # a section fitted before the relative distance: no cut-off for it
    assert old.relative_distance is None and "relative_distance" not in old.to_dict()
    assert out_of_distribution(far_but_typical, old) and not out_of_distribution(near_but_off_class, old)
    new = Thresholds.from_dict({**cuts, "relative_distance": 0.3})
    assert Thresholds.from_dict(new.to_dict()) == new
    assert not out_of_distribution(far_but_typical, new) and out_of_distribution(near_but_off_class, new)
    assert out_of_distribution(replace(far_but_typical, relative_distance=None), new)  # no signal: the old rule


def test_a_class_without_training_films_has_no_mean() -> None:
    rng = np.random.default_rng(2)
    stats = FeatureStats.fit(rng.normal(0, 1, (60, 8)), np.repeat([0, 3, -1], 20))
    dist, residual = stats.distances(rng.normal(0, 1, (5, 8)))
    assert np.isinf(dist[:, 1]).all() and np.isinf(dist[:, 2]).all() and np.isfinite(dist[:, [0, 3]]).all()
    assert ((residual >= 0) & (residual <= 1)).all()


def test_logistic_regression_learns_which_input_predicts_errors() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (600, 3))
    y = (rng.random(600) < 1 / (1 + np.exp(-(2.0 * x[:, 1] - 1.0)))).astype(float)
    coef, intercept = fit_logistic(x, y, penalty=0.01)
    assert coef[1] == pytest.approx(2.0, abs=0.4) and abs(coef[0]) < 0.4 and abs(coef[2]) < 0.4
    assert intercept == pytest.approx(-1.0, abs=0.3)


def test_auroc_counts_ties_as_half() -> None:
    assert auroc([0.1, 0.9], [False, True]) == 1.0
    assert auroc([0.5, 0.5, 0.5], [False, True, True]) == 0.5
    assert auroc([1, 2], [True, True]) is None


def test_lung_shape_tells_two_lungs_from_one_blob() -> None:
    two = np.zeros((256, 256), bool)
    two[40:210, 30:115] = two[40:210, 140:225] = True
    one = np.zeros((256, 256), bool)
    one[60:120, 10:70] = True
    area, balance, fill = lung_shape(two)
    assert 0.4 < area < 0.5 and balance == pytest.approx(1.0) and 0.8 < fill < 1.0
    assert lung_shape(one)[1] == 0.0
    assert lung_shape(np.zeros((256, 256), bool)) == (0.0, 0.0, 0.0)


def test_lung_parts_count_the_lungs_and_see_a_turned_film() -> None:
    two = np.zeros((256, 256), bool)
    two[40:210, 30:115] = two[40:210, 140:225] = True
    parts, share, layout = lung_parts(two)
    assert parts == 2 and share == 1.0 and 0.35 < layout < 0.5
    turned = np.ascontiguousarray(np.rot90(two))
    assert lung_parts(turned)[0] == 2 and lung_parts(turned)[2] < 0
    specks = two.copy()
    specks[228:236, 8:16] = True  # below 0.5 % of the film: not a part, but not one of the two lungs either
    assert lung_parts(specks)[0] == 2 and lung_parts(specks)[1] < 1.0
    assert lung_parts(np.zeros((256, 256), bool)) == (0, 0.0, -1.0)


def test_a_coefficient_against_its_sign_is_dropped() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (800, 2))
    y = (rng.random(800) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 1.0 * x[:, 1])))).astype(float)
    free, _ = fit_logistic(x, y)
    assert free[0] > 1 and free[1] < -0.5
    constrained, _ = fit_logistic(x, y, signs=(1, 1))  # input 1 may only raise the risk: dropped
    assert constrained[0] > 1 and constrained[1] == 0.0


def test_the_command_lines_defaults_are_the_calibrations() -> None:
    assert (CLI_TARGET, CLI_OOD, CLI_FOCUS) == (TARGET_RIGHT_SHARE, OOD_SHARE, FOCUS_SHARE)


# --------------------------------------------------------------------------- a real tiny model
@pytest.fixture(scope="module")
def calibrated(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained CNN-X (a real network, another CAM method than the bundled ResNet) calibrated on the
    36-film dataset."""
    folder = tmp_path_factory.mktemp("risk")
    raw = write_untrained_cnnx(folder / "raw.pt")
    calibrate_checkpoint(raw, [small_dataset], out=folder / "calibrated.pt")
    return folder / "calibrated.pt"


def test_calibration_is_stored_in_the_checkpoint_and_round_trips(calibrated: Path) -> None:
    meta, state = read_checkpoint(calibrated)
    raw_meta, raw_state = read_checkpoint(calibrated.parent / "raw.pt")
    assert raw_meta.risk is None and meta.risk is not None
    assert state.keys() == raw_state.keys() and all((state[k] == raw_state[k]).all() for k in state)
    risk = meta.risk
    assert risk.temperature > 0 and set(risk.class_means) == set(CLASSES)
    assert risk.fit["train_films"] == 16 and risk.fit["val_films"] == 8
    assert set(risk.thresholds) >= {"risk", "distance", "relative_distance", "focus_ratio", "lung_area_min"}
    assert len(risk.background_precision) == len(risk.feature_components)
    again = CheckpointMeta.from_dict(meta.to_dict())
    assert again.risk == risk


def test_a_calibrated_model_gives_error_risk_and_warnings(calibrated: Path, small_dataset: Path) -> None:
    segmenter = LungSegmenter.from_checkpoint()
    predictor = Predictor.from_checkpoint(calibrated, segmenter=segmenter)
    films = [load_grayscale(str(r.path)) for r in read_manifest(small_dataset)[:4]]
    for film in analyze_films(films, [predictor], segmenter):
        p = film.predictions[0]
        assert p.error_risk is not None and 0.0 <= p.error_risk <= 1.0 and p.error_risk_reason is None
        assert p.signals is not None and 0.0 < p.signals.max_prob <= 1.0 and p.signals.lung_area is not None
        assert all(w.message == MESSAGES[w.code] for w in p.warnings)
    without_lungs = predictor.predict(films[:1])[0]  # no mask: lung signals missing, risk still given
    assert without_lungs.error_risk is not None and without_lungs.signals.lung_focus is None  # type: ignore[union-attr]


def test_an_old_checkpoint_keeps_loading_with_no_error_risk_and_a_reason(tmp_path: Path) -> None:
    old = write_untrained_cnnx(tmp_path / "old.pt")
    assert read_meta(old).risk is None
    p = Predictor.from_checkpoint(old).predict([np.full((200, 200), 90, np.uint8)])[0]
    assert p.error_risk is None and p.error_risk_reason == NO_RISK_MODEL and p.warnings == []
    assert p.signals is None and p.pooled is not None


def test_a_calibration_of_an_earlier_version_keeps_its_own_inputs(calibrated: Path, small_dataset: Path) -> None:
    """A risk section fitted before the class-called inputs existed names the eight it used: the model
    reads those, by name, and gives the risk its coefficients give."""

    from ml.risk import RISK_INPUTS, RiskModel, input_matrix, standardise

    risk = read_meta(calibrated).risk
    assert risk is not None and list(risk.inputs) == list(RISK_INPUTS)
    old_names = [n for n in RISK_INPUTS if not n.startswith("predicted_")]
    keep = [RISK_INPUTS.index(n) for n in old_names]
    rng = np.random.default_rng(1)
    old = replace(
        risk,
        inputs=old_names,
        input_mean=[risk.input_mean[i] for i in keep],
        input_std=[risk.input_std[i] for i in keep],
        coef=list(rng.normal(size=len(keep))),
    )
    segmenter = LungSegmenter.from_checkpoint()
    predictor = Predictor.from_checkpoint(calibrated, segmenter=segmenter)
    films = [load_grayscale(str(r.path)) for r in read_manifest(small_dataset)[:3]]
    signals = [f.predictions[0].signals for f in analyze_films(films, [predictor], segmenter)]
    assert all(s is not None and s.predicted_class in CLASSES for s in signals)
    x = input_matrix(signals, old_names)  # type: ignore[arg-type]
    z = standardise(x, np.array(old.input_mean), np.array(old.input_std))
    want = 1 / (1 + np.exp(-(z @ np.array(old.coef) + old.intercept)))
    assert np.allclose(RiskModel(old).error_risk(signals), want)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not among"):
        RiskModel(replace(risk, inputs=[*old_names[:-1], "an_input_from_the_future"]))


def test_bad_shares_are_refused(small_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target right share"):
        calibrate_checkpoint(write_untrained_cnnx(tmp_path / "m.pt"), [small_dataset], target_right_share=1.5)


# --------------------------------------------------------------------------- the bundled model
@pytest.fixture(scope="module")
def bundled() -> tuple[Predictor, LungSegmenter]:
    segmenter = LungSegmenter.from_checkpoint()
    predictor = Predictor.from_checkpoint(DEFAULT_CHECKPOINT, segmenter=segmenter)
    if predictor.risk is None:
        pytest.fail(f"the bundled model is not calibrated: {predictor.risk_reason}")
    return predictor, segmenter


def test_every_non_chest_image_is_warned(
    bundled: tuple[Predictor, LungSegmenter], real_films: list[np.ndarray]
) -> None:
    predictor, segmenter = bundled
    images = {**skimage_samples(), **synthetic(real_films[1])}
    names = list(images)
    results = analyze_films([images[n] for n in names], [predictor], segmenter)
    unwarned = [n for n, f in zip(names, results, strict=True) if not f.predictions[0].warnings]
    assert unwarned == []
    not_chest = [n for n, f in zip(names, results, strict=True)
                 if any(w.code == "not_frontal_chest_xray" for w in f.predictions[0].warnings)]  # fmt: skip
    photos = [n for n in names if n.startswith("skimage:")]
    assert len(set(photos) & set(not_chest)) >= math.ceil(0.8 * len(photos))  # measured: 20 of 24


def test_real_chest_films_are_mostly_not_called_non_chest(
    bundled: tuple[Predictor, LungSegmenter], real_records: list, adult_records: list
) -> None:
    predictor, segmenter = bundled
    records = [r for r in [*real_records, *adult_records] if r.split == "test"][::25]
    results = analyze_films([load_grayscale(str(r.path)) for r in records], [predictor], segmenter)
    called = sum(any(w.code == "not_frontal_chest_xray" for w in f.predictions[0].warnings) for f in results)
    assert called <= max(1, len(records) // 20)


def test_input_selection_keeps_extra_inputs_only_when_they_help_out_of_fold() -> None:
    from ml.calibrate import select_inputs
    from ml.risk import RISK_INPUTS

    rng = np.random.default_rng(0)
    n = 400
    z = rng.normal(size=(n, len(RISK_INPUTS)))
    distance = RISK_INPUTS.index("log_class_distance")
    # errors follow confidence alone: the other inputs are noise, the smaller model is kept
    wrong = rng.random(n) < 1 / (1 + np.exp(2.0 * z[:, 0] + 1.0))
    keep, figures = select_inputs(z, wrong)
    assert figures["chosen"] == "confidence" and keep.sum() == 2
    # errors follow the distance to the class mean: confidence alone cannot see them
    wrong = rng.random(n) < 1 / (1 + np.exp(-2.5 * z[:, distance] + 1.0))
    keep, figures = select_inputs(z, wrong)
    assert figures["chosen"] == "all" and keep.all()
    assert figures["cv_auroc"]["all"] > figures["cv_auroc"]["confidence"] + 0.1
    # errors follow the class called (a viral call is wrong more often): confidence and the class
    viral = RISK_INPUTS.index("predicted_viral")
    z[:, viral] = rng.random(n) < 0.3
    wrong = rng.random(n) < np.where(z[:, viral] > 0, 0.6, 0.1)
    keep, figures = select_inputs(z, wrong)
    assert figures["chosen"] == "confidence+class", figures
    assert [RISK_INPUTS[i] for i in np.flatnonzero(keep)] == [
        "max_prob", "entropy", "predicted_bacterial", "predicted_viral", "predicted_covid19"
    ]  # fmt: skip
    assert figures["cv_auroc"]["confidence+class"] > figures["cv_auroc"]["confidence"] + 0.1


def test_lung_parts_counts_8_connected_parts_with_their_centres() -> None:
    from ml.lung_shape import PART_GRID, lung_parts

    two = np.zeros((256, 256), bool)
    two[64:192, 32:96] = True  # left lung
    two[64:192, 160:224] = True  # right lung
    parts, share, layout = lung_parts(two)
    assert (parts, share) == (2, 1.0)
    assert layout == pytest.approx(32 / PART_GRID)  # centres 32 cells apart side by side, same height
    diagonal = np.eye(PART_GRID, dtype=bool).repeat(4, 0).repeat(4, 1)  # touching only at corners
    assert lung_parts(diagonal)[:2] == (1, 1.0)  # 8-connected: one part
    assert lung_parts(np.zeros((100, 100), bool)) == (0, 0.0, -1.0)
