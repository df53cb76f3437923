"""The three-group view and the confound table against confusion matrices worked out by hand."""

from __future__ import annotations

import pytest

from ml.confound import (
    GROUPS,
    confound_figures,
    confound_table,
    format_confound_markdown,
    format_confound_text,
    label_group,
    three_group_report,
)

# (source, age_group, label, predicted, count): 25 films
ROWS = [
    ("kermany", "child", "normal", "normal", 3),
    ("kermany", "child", "normal", "covid19", 1),
    ("kermany", "child", "bacterial", "bacterial", 2),
    ("kermany", "child", "bacterial", "viral", 1),  # wrong class, right group
    ("kermany", "child", "bacterial", "normal", 1),
    ("nih", "adult", "pneumonia", "viral", 2),  # partial label: a candidate, right group
    ("nih", "adult", "pneumonia", "covid19", 2),
    ("nih", "adult", "pneumonia", "normal", 1),
    ("nih", "adult", "normal", "normal", 2),
    ("nih", "adult", "normal", "covid19", 1),
    ("cohen", "adult", "covid19", "covid19", 4),
    ("cohen", "adult", "covid19", "bacterial", 1),
    ("hannover", "adult", "covid19", "covid19", 2),
    ("hannover", "adult", "covid19", "normal", 1),
    ("cohen", "", "covid19", "covid19", 1),  # blank age group
]


def columns() -> tuple[list[str], list[str], list[str], list[str]]:
    sources, ages, labels, predicted = [], [], [], []
    for source, age, label, pred, count in ROWS:
        sources += [source] * count
        ages += [age] * count
        labels += [label] * count
        predicted += [pred] * count
    return sources, ages, labels, predicted


def test_labels_and_predictions_map_to_three_groups() -> None:
    assert GROUPS == ("normal", "non_covid_pneumonia", "covid19")
    assert [label_group(c) for c in ("normal", "bacterial", "viral", "pneumonia", "covid19")] == [
        "normal",
        "non_covid_pneumonia",
        "non_covid_pneumonia",
        "non_covid_pneumonia",
        "covid19",
    ]
    with pytest.raises(ValueError, match="'sars' has no group"):
        label_group("sars")


def test_three_group_matrix_and_rates_match_hand_computation() -> None:
    _, _, labels, predicted = columns()
    rep = three_group_report(labels, predicted)
    # normal:   kermany 3 normal + 1 covid, nih 2 normal + 1 covid               → [5, 0, 2]
    # non-COVID: kermany 3 pneumonia (2 bacterial + 1 viral) + 1 normal,
    #            nih 2 pneumonia (viral) + 2 covid + 1 normal                       → [2, 5, 2]
    # COVID-19: cohen 4 covid + 1 bacterial, hannover 2 covid + 1 normal, 1 covid → [1, 1, 7]
    assert rep["groups"] == list(GROUPS)
    assert rep["confusion_matrix"] == [[5, 0, 2], [2, 5, 2], [1, 1, 7]]
    assert rep["n"] == 25
    assert rep["accuracy"] == pytest.approx(17 / 25)
    assert rep["per_class"]["normal"]["sensitivity"] == pytest.approx(5 / 7)
    assert rep["per_class"]["non_covid_pneumonia"]["sensitivity"] == pytest.approx(5 / 9)
    # COVID-19: tp 7 of 9; of the 16 non-COVID films 4 were called COVID-19 → specificity 12 / 16
    assert rep["covid19_sensitivity"] == pytest.approx(7 / 9)
    assert rep["covid19_specificity"] == pytest.approx(0.75)
    assert rep["per_class"]["covid19"]["specificity"] == rep["covid19_specificity"]
    assert rep["macro_sensitivity"] == pytest.approx((5 / 7 + 5 / 9 + 7 / 9) / 3)


def test_confound_table_per_age_group_and_source_matches_hand_computation() -> None:
    sources, ages, labels, predicted = columns()
    table = confound_table(labels, predicted, sources=sources, age_groups=ages)
    assert table["all"] == {
        "n": 25,
        "non_covid": 16,
        "non_covid_called_covid19": 4,
        "non_covid_called_covid19_share": 0.25,
        "covid19": 9,
        "covid19_called_covid19": 7,
        "covid19_sensitivity": pytest.approx(7 / 9),
    }
    ages_ = table["by_age_group"]
    assert list(ages_) == ["adult", "child", "unknown"]
    # child: 8 Kermany films, 1 called COVID-19; no COVID-19 child → no sensitivity
    assert (ages_["child"]["non_covid"], ages_["child"]["non_covid_called_covid19"]) == (8, 1)
    assert ages_["child"]["non_covid_called_covid19_share"] == 0.125
    assert ages_["child"]["covid19"] == 0 and ages_["child"]["covid19_sensitivity"] is None
    # adult: NIH 5 pneumonia (2 called COVID-19) + 3 normal (1); COVID-19: cohen 5 (4) + hannover 3 (2)
    assert ages_["adult"]["non_covid_called_covid19_share"] == pytest.approx(3 / 8)
    assert ages_["adult"]["covid19_sensitivity"] == pytest.approx(6 / 8)
    # unknown: one COVID-19 film, called COVID-19; no non-COVID film → no share
    assert ages_["unknown"]["non_covid_called_covid19_share"] is None
    assert ages_["unknown"]["covid19_sensitivity"] == 1.0
    src = table["by_source"]
    assert list(src) == ["cohen", "hannover", "kermany", "nih"]
    assert src["nih"]["non_covid_called_covid19_share"] == pytest.approx(3 / 8)
    assert src["kermany"]["non_covid_called_covid19_share"] == pytest.approx(1 / 8)
    assert src["cohen"]["covid19_sensitivity"] == pytest.approx(5 / 6)  # the blank-age film is cohen too
    assert src["hannover"]["covid19_sensitivity"] == pytest.approx(2 / 3)
    assert src["hannover"]["non_covid_called_covid19_share"] is None


def test_by_age_group_is_the_four_class_report_of_the_four_class_rows() -> None:
    sources, ages, labels, predicted = columns()
    figures = confound_figures(labels, predicted, sources=sources, age_groups=ages)
    assert set(figures) == {"by_age_group", "three_group", "confound"}
    by_age = figures["by_age_group"]
    # CLASSES order normal, bacterial, viral, covid19; the 5 NIH pneumonia films have no 4-class truth
    assert by_age["child"]["confusion_matrix"] == [[3, 0, 0, 1], [1, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert by_age["adult"]["confusion_matrix"] == [[2, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 6]]
    assert by_age["adult"]["n"] == 11 and by_age["unknown"]["n"] == 1
    assert by_age["child"]["per_class"]["covid19"]["sensitivity"] is None


def test_only_partial_rows_give_an_empty_four_class_report_but_full_three_group_figures() -> None:
    labels, predicted = ["pneumonia", "pneumonia", "pneumonia"], ["viral", "covid19", "normal"]
    figures = confound_figures(labels, predicted, sources=["nih"] * 3, age_groups=["adult"] * 3)
    assert figures["by_age_group"]["adult"]["n"] == 0 and figures["by_age_group"]["adult"]["accuracy"] is None
    assert figures["three_group"]["confusion_matrix"] == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert figures["three_group"]["covid19_sensitivity"] is None
    assert figures["three_group"]["covid19_specificity"] == pytest.approx(2 / 3)
    assert figures["confound"]["by_source"]["nih"]["non_covid_called_covid19_share"] == pytest.approx(1 / 3)


def test_text_and_markdown_show_the_matrix_and_the_table() -> None:
    sources, ages, labels, predicted = columns()
    report = confound_figures(labels, predicted, sources=sources, age_groups=ages)
    text = format_confound_text(report)
    assert "non-COVID pneumonia" in text and "COVID-19 sensitivity 77.8%, specificity 75.0%" in text
    adult = next(line for line in text.splitlines() if line.startswith("age adult"))
    assert [c.strip() for c in adult.split("|")[1:]] == ["8", "3 (37.5)", "8", "6 (75.0)"]
    md = format_confound_markdown(report)
    assert "| non-COVID pneumonia | 2 | 5 | 2 |" in md
    assert "| source nih | 8 | 3 | 37.5 | 0 | – |" in md
    assert format_confound_text({}) == "" and format_confound_markdown({}) == ""
