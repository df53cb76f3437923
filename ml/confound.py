"""Figures that show whether a model learned the data's shortcut instead of the lungs.

In `../shared/data/cxr` nearly every non-COVID film is a child's and every COVID-19 film an adult's, so a
model can learn "adult ⇒ COVID-19"; with `cxr-adult` the non-COVID adults are mostly NIH films, so it can
learn "NIH look ⇒ not COVID-19" instead. These figures are taken over **every** evaluated row, the
partial-label `pneumonia` rows included (those rows have no 4-class truth, but they do have a group):

- the *three-group view*: normal / non-COVID pneumonia (bacterial, viral or `pneumonia`) / COVID-19, its
  3×3 confusion matrix (rows = truth, columns = prediction; a predicted bacterial or viral film counts as
  non-COVID pneumonia) and the usual per-group rates; `covid19_sensitivity` and `covid19_specificity`
  repeat the COVID-19 group's two rates;
- the *confound table*: per age group and per source, the share of non-COVID films (every row whose
  label is not `covid19`) that were called COVID-19, and the COVID-19 sensitivity.

A rate with an empty denominator is `None`. A blank `age_group` is reported as `unknown`.
Pure functions of label strings: no model, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ml import CLASSES
from ml.metrics import classification_report, confusion_matrix, report_from_confusion

GROUPS: tuple[str, ...] = ("normal", "non_covid_pneumonia", "covid19")
GROUP_NAMES = {"normal": "normal", "non_covid_pneumonia": "non-COVID pneumonia", "covid19": "COVID-19"}
LABEL_GROUP: dict[str, str] = {
    "normal": "normal",
    "bacterial": "non_covid_pneumonia",
    "viral": "non_covid_pneumonia",
    "pneumonia": "non_covid_pneumonia",  # partial label: bacterial or viral, organism unknown
    "covid19": "covid19",
}
"""Every manifest label (and every predicted class) → its group."""
UNKNOWN_AGE_GROUP = "unknown"


def label_group(label: str) -> str:
    try:
        return LABEL_GROUP[label]
    except KeyError:
        raise ValueError(f"label {label!r} has no group; known: {', '.join(LABEL_GROUP)}") from None


def three_group_report(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """`ml.metrics.report_from_confusion` over the three groups, plus `groups` (the matrix order) and the
    COVID-19 group's `covid19_sensitivity` / `covid19_specificity`.

    `labels` are manifest labels (partial ones included), `predicted` the predicted CLASSES.
    """
    truth = [GROUPS.index(label_group(label)) for label in labels]
    guess = [GROUPS.index(label_group(p)) for p in predicted]
    report = report_from_confusion(confusion_matrix(truth, guess, len(GROUPS)), GROUPS)
    covid = report["per_class"]["covid19"]
    return {
        "groups": list(GROUPS),
        **report,
        "covid19_sensitivity": covid["sensitivity"],
        "covid19_specificity": covid["specificity"],
    }


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def confound_row(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """`n`; `non_covid` films and how many were `non_covid_called_covid19` (count and `_share`);
    `covid19` films, how many were `covid19_called_covid19` and the `covid19_sensitivity`."""
    pairs = list(zip(labels, predicted, strict=True))
    non_covid = [p for label, p in pairs if label != "covid19"]
    covid = [p for label, p in pairs if label == "covid19"]
    false_covid = sum(p == "covid19" for p in non_covid)
    true_covid = sum(p == "covid19" for p in covid)
    return {
        "n": len(pairs),
        "non_covid": len(non_covid),
        "non_covid_called_covid19": false_covid,
        "non_covid_called_covid19_share": _share(false_covid, len(non_covid)),
        "covid19": len(covid),
        "covid19_called_covid19": true_covid,
        "covid19_sensitivity": _share(true_covid, len(covid)),
    }


def _by(keys: Sequence[str], labels: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {
        key: confound_row(
            [label for label, k in zip(labels, keys, strict=True) if k == key],
            [p for p, k in zip(predicted, keys, strict=True) if k == key],
        )
        for key in sorted(set(keys))
    }


def age_group_key(age_group: str) -> str:
    return age_group or UNKNOWN_AGE_GROUP


def confound_table(
    labels: Sequence[str], predicted: Sequence[str], *, sources: Sequence[str], age_groups: Sequence[str]
) -> dict[str, Any]:
    """`all`, `by_age_group` and `by_source`: a `confound_row` each (see the module doc)."""
    return {
        "all": confound_row(labels, predicted),
        "by_age_group": _by([age_group_key(a) for a in age_groups], labels, predicted),
        "by_source": _by(list(sources), labels, predicted),
    }


def reports_by(keys: Sequence[str], labels: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The 4-class `classification_report` per key, over the rows whose label is one of the CLASSES (rows
    with a partial label have no 4-class truth). A key whose rows are all partial gets an empty report."""
    out = {}
    for key in sorted(set(keys)):
        rows = [(label, p) for label, p, k in zip(labels, predicted, keys, strict=True) if k == key]
        full = [(CLASSES.index(label), CLASSES.index(p)) for label, p in rows if label in CLASSES]
        out[key] = classification_report([t for t, _ in full], [p for _, p in full])
    return out


def confound_figures(
    labels: Sequence[str], predicted: Sequence[str], *, sources: Sequence[str], age_groups: Sequence[str]
) -> dict[str, Any]:
    """The report keys `by_age_group` (4-class, as `by_source`), `three_group` and `confound`."""
    return {
        "by_age_group": reports_by([age_group_key(a) for a in age_groups], labels, predicted),
        "three_group": three_group_report(labels, predicted),
        "confound": confound_table(labels, predicted, sources=sources, age_groups=age_groups),
    }


# --------------------------------------------------------------------------- text and Markdown


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def confound_lines(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row label, confound row): all, each age group, each source."""
    conf = report["confound"]
    rows = [("all", conf["all"])]
    rows += [(f"age {k}", v) for k, v in conf["by_age_group"].items()]
    rows += [(f"source {k}", v) for k, v in conf["by_source"].items()]
    return rows


def format_confound_text(report: dict[str, Any]) -> str:
    """The three-group matrix and the confound table as plain text ('' for a report without them)."""
    if "three_group" not in report or "confound" not in report:
        return ""
    tg = report["three_group"]
    names = [GROUP_NAMES[g] for g in tg["groups"]]
    width = max(len(n) for n in names) + 2
    lines = [
        f"Three groups over all {tg['n']} films, partial labels included (rows = truth, columns = prediction):",
        f"{'':<{width}}" + "".join(f"{n:>{len(n) + 2}}" for n in names),
    ]
    for name, counts in zip(names, tg["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{len(n) + 2}}" for n, v in zip(names, counts, strict=True)))
    lines.append(
        f"COVID-19 sensitivity {_pct(tg['covid19_sensitivity'])}%, specificity {_pct(tg['covid19_specificity'])}%, "
        f"accuracy {_pct(tg['accuracy'])}%"
    )
    head = f"{'rows':<22}| {'non-COVID':>9} | {'called COVID-19':>15} | {'COVID-19':>8} | {'COVID-19 Sn':>11}"
    lines += ["", "Confound table (non-COVID = every film not labelled COVID-19; in %):", head, "-" * len(head)]
    for label, row in confound_lines(report):
        called = f"{row['non_covid_called_covid19']} ({_pct(row['non_covid_called_covid19_share'])})"
        sens = f"{row['covid19_called_covid19']} ({_pct(row['covid19_sensitivity'])})"
        lines.append(f"{label[:22]:<22}| {row['non_covid']:>9} | {called:>15} | {row['covid19']:>8} | {sens:>11}")
    return "\n".join(lines)


def format_confound_markdown(report: dict[str, Any]) -> str:
    """The same as `format_confound_text`, as Markdown ('' for a report without them)."""
    if "three_group" not in report or "confound" not in report:
        return ""
    tg = report["three_group"]
    names = [GROUP_NAMES[g] for g in tg["groups"]]
    lines = [
        f"Three groups over all {tg['n']} films, partial labels included (rows = truth, columns = prediction; "
        "predicted bacterial or viral = non-COVID pneumonia):",
        "",
        "| truth \\ predicted | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, counts in zip(names, tg["confusion_matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in counts) + " |")
    lines += [
        "",
        f"COVID-19 sensitivity {_pct(tg['covid19_sensitivity'])} %, specificity {_pct(tg['covid19_specificity'])} %.",
        "",
        "Confound table: non-COVID = every film not labelled COVID-19 (partial labels included).",
        "",
        "| Rows | Non-COVID films | Called COVID-19 | Share | COVID-19 films | COVID-19 Sn |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in confound_lines(report):
        lines.append(
            f"| {label} | {row['non_covid']} | {row['non_covid_called_covid19']} | "
            f"{_pct(row['non_covid_called_covid19_share'])} | {row['covid19']} | {_pct(row['covid19_sensitivity'])} |"
        )
    return "\n".join(lines) + "\n"
