"""Metrics against confusion matrices worked out by hand (the numbers in comments are the hand work)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml import CLASSES
from ml.metrics import (
    classification_report,
    confusion_matrix,
    error_ci95,
    report_from_confusion,
    wilson_ci95,
    with_class_ci,
)

N, B, V, C = range(4)  # class indices in CLASSES order

# rows = truth, columns = prediction; no COVID-19 image at all
HAND_CM = np.array(
    [
        [5, 1, 0, 0],  # normal:    5 right, 1 called bacterial
        [2, 6, 2, 0],  # bacterial: 6 right, 2 called normal, 2 viral
        [0, 1, 3, 0],  # viral:     3 right, 1 called bacterial
        [0, 0, 0, 0],  # covid19:   absent
    ]
)


def test_class_order_is_the_contract() -> None:
    assert CLASSES == ("normal", "bacterial", "viral", "covid19")


def test_confusion_matrix_rows_are_truth_columns_prediction() -> None:
    cm = confusion_matrix([N, N, B, C, C, C], [N, B, B, V, C, C])
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[N, N] = 1
    expected[N, B] = 1
    expected[B, B] = 1
    expected[C, V] = 1
    expected[C, C] = 2
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError):
        confusion_matrix([N, B], [N])


def test_per_class_rates_match_hand_computation() -> None:
    rep = report_from_confusion(HAND_CM)
    pc = rep["per_class"]
    # normal: tp 5, fn 1, fp 2 (two bacterial called normal), tn = 20 - 5 - 1 - 2 = 12
    assert pc["normal"]["sensitivity"] == pytest.approx(5 / 6)
    assert pc["normal"]["specificity"] == pytest.approx(12 / 14)
    assert pc["normal"]["f1"] == pytest.approx(10 / 13)  # 2tp / (2tp + fp + fn)
    assert pc["normal"]["support"] == 6
    # bacterial: tp 6, fn 4, fp 2 (one normal, one viral), tn 8
    assert pc["bacterial"]["sensitivity"] == pytest.approx(0.6)
    assert pc["bacterial"]["specificity"] == pytest.approx(0.8)
    assert pc["bacterial"]["f1"] == pytest.approx(12 / 18)
    assert pc["bacterial"]["precision"] == pytest.approx(6 / 8)
    assert pc["bacterial"]["support"] == 10
    # viral: tp 3, fn 1, fp 2, tn 14
    assert pc["viral"]["sensitivity"] == pytest.approx(0.75)
    assert pc["viral"]["specificity"] == pytest.approx(14 / 16)
    assert pc["viral"]["f1"] == pytest.approx(6 / 9)
    assert pc["viral"]["support"] == 4


def test_absent_class_has_none_for_zero_denominators() -> None:
    covid = report_from_confusion(HAND_CM)["per_class"]["covid19"]
    assert covid["support"] == 0
    assert covid["sensitivity"] is None  # tp + fn = 0
    assert covid["precision"] is None  # tp + fp = 0
    assert covid["f1"] is None  # 2tp + fp + fn = 0
    assert covid["specificity"] == 1.0  # tn 20, fp 0: a real rate, not a placeholder


def test_accuracy_macro_sensitivity_and_error_ci() -> None:
    rep = report_from_confusion(HAND_CM)
    assert rep["n"] == 20
    assert rep["accuracy"] == pytest.approx(14 / 20)
    # averaged over the classes present (covid19 has no images, so it is left out, not counted as 0)
    assert rep["macro_sensitivity"] == pytest.approx((5 / 6 + 0.6 + 0.75) / 3)
    # e = 6/20 = 0.3; 1.96·sqrt(0.3·0.7/20) = 0.2008402...
    low, high = rep["error_ci95"]
    assert low == pytest.approx(0.3 - 0.2008402, abs=1e-6)
    assert high == pytest.approx(0.3 + 0.2008402, abs=1e-6)
    assert rep["confusion_matrix"] == HAND_CM.tolist()


def test_error_ci_formula_and_clipping() -> None:
    e, n = 13 / 50, 50
    half = 1.96 * math.sqrt(e * (1 - e) / n)
    assert error_ci95(13, 50) == pytest.approx((e - half, e + half))
    assert error_ci95(0, 10) == (0.0, 0.0)
    assert error_ci95(10, 10) == (1.0, 1.0)
    low, high = error_ci95(1, 20)  # e = 0.05, half = 0.0955: the lower bound is clipped at 0
    assert low == 0.0 and high == pytest.approx(0.05 + 1.96 * math.sqrt(0.05 * 0.95 / 20))
    assert error_ci95(0, 0) is None


def test_empty_evaluation_reports_none_not_zero() -> None:
    rep = report_from_confusion(np.zeros((4, 4), dtype=np.int64))
    assert rep["n"] == 0
    assert rep["accuracy"] is None and rep["macro_sensitivity"] is None and rep["error_ci95"] is None
    for c in CLASSES:
        assert rep["per_class"][c]["sensitivity"] is None and rep["per_class"][c]["specificity"] is None


def test_classification_report_from_labels_equals_report_from_confusion() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, size=200).tolist()
    y_pred = [t if rng.random() < 0.7 else int(rng.integers(0, 4)) for t in y_true]
    rep = classification_report(y_true, y_pred)
    assert rep == report_from_confusion(confusion_matrix(y_true, y_pred))
    assert rep["accuracy"] == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))
    assert sum(rep["per_class"][c]["support"] for c in CLASSES) == 200


def test_class_sensitivity_interval_is_wilson_and_never_a_single_point() -> None:
    low, high = wilson_ci95(3, 3)  # 3 of 3 films found: not "100 % – 100 %"
    assert round(low, 3) == 0.439 and high == 1.0
    low, high = wilson_ci95(0, 10)
    assert low == 0.0 and round(high, 3) == 0.278
    low, high = wilson_ci95(50, 100)
    assert round(low, 3) == 0.404 and round(high, 3) == 0.596
    assert wilson_ci95(0, 0) is None


def test_with_class_ci_adds_each_class_interval_overall_and_per_source() -> None:
    report = classification_report([0, 0, 0, 3, 3], [0, 0, 1, 3, 3])
    report["by_source"] = {"kermany": classification_report([0, 0, 0], [0, 0, 1])}
    out = with_class_ci(report)
    assert out["per_class"]["normal"]["sensitivity_ci95"] == pytest.approx(list(wilson_ci95(2, 3)))
    assert out["per_class"]["covid19"]["sensitivity_ci95"] == pytest.approx(list(wilson_ci95(2, 2)))
    assert out["per_class"]["viral"]["sensitivity_ci95"] is None  # no viral films: no interval
    assert out["by_source"]["kermany"]["per_class"]["normal"]["sensitivity_ci95"] == pytest.approx(
        list(wilson_ci95(2, 3))
    )
    assert "sensitivity_ci95" not in report["per_class"]["normal"]  # the input is left as it was


def test_cohen_kappa_by_hand() -> None:
    from ml.metrics import cohen_kappa

    # 4 both yes, 3 both no, 2 yes/no, 1 no/yes: p_o = 0.7; p1 = 0.6, p2 = 0.5 → p_e = 0.5; κ = 0.4;
    # SE = √(0.7·0.3 / (10·0.25)) = 0.28983; CI 0.4 ± 1.959964·0.28983.
    pairs = [(True, True)] * 4 + [(False, False)] * 3 + [(True, False)] * 2 + [(False, True)]
    k = cohen_kappa(pairs)
    assert k["observed_agreement"] == pytest.approx(0.7) and k["chance_agreement"] == pytest.approx(0.5)
    assert k["kappa"] == pytest.approx(0.4)
    assert k["ci95"] == pytest.approx((0.4 - 1.959964 * 0.2898275, 0.4 + 1.959964 * 0.2898275), abs=1e-6)
    assert cohen_kappa([])["kappa"] is None
    assert cohen_kappa([(True, True)] * 3)["kappa"] is None  # chance agreement is certain: κ undefined


def test_auroc_counts_ties_as_half() -> None:
    from ml.metrics import auroc

    # positives 1, 1, 0 against negatives 0, 1: (1 + ½) + (1 + ½) + (½ + 0) = 3.5 of 6.
    assert auroc([1, 1, 0, 0, 1], [True, True, False, True, False]) == pytest.approx(3.5 / 6)
    assert auroc([0.9, 0.1], [True, False]) == 1.0 and auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, True]) is None
