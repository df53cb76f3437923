"""A tiny real dataset for training tests: a manifest of a few dozen films of ../shared/data/cxr.

Rows keep their split and patient from the real manifest (so patients stay split-disjoint) and
point at the real files by absolute path; nothing is copied.
"""

from __future__ import annotations

import csv
from pathlib import Path

# (split, label, source) → how many films; enough for scenario s1 (normal vs COVID-19) and s2.
TINY_PLAN: dict[tuple[str, str, str], int] = {
    ("train", "normal", "kermany"): 6,
    ("train", "covid19", "cohen"): 6,
    ("train", "bacterial", "kermany"): 2,
    ("train", "viral", "kermany"): 2,
    ("val", "normal", "kermany"): 3,
    ("val", "covid19", "cohen"): 3,
    ("test", "normal", "kermany"): 3,
    ("test", "covid19", "hannover"): 3,
    ("test", "bacterial", "kermany"): 1,
}
COLUMNS = ("path", "label", "source", "patient_id", "view", "split", "age", "age_group")


def write_tiny_manifest(source_dir: Path, out_dir: Path, plan: dict[tuple[str, str, str], int] | None = None) -> Path:
    """Write `out_dir/manifest.csv` with the first films (manifest order) of each (split, label, source)."""
    plan = dict(plan or TINY_PLAN)
    rows: list[dict[str, str]] = []
    with (source_dir / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            key = (row["split"], row["label"], row["source"])
            if plan.get(key, 0) > 0:
                plan[key] -= 1
                rows.append({**{c: row.get(c, "") for c in COLUMNS}, "path": str((source_dir / row["path"]).resolve())})
    missing = {k: v for k, v in plan.items() if v > 0}
    assert not missing, f"the dataset lacks films for {missing}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out_dir
