"""`cxr-review predict` on a folder of real films with a broken file among them, run as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pydicom
import pytest

from app.dicom_out.sr import read_report
from tests.app.conftest import Film, start_env
from tests.dicom_out.test_objects import dciodvfy
from tests.support.dicom_films import dicom_film

ROOT = Path(__file__).resolve().parents[2]


def test_predict_writes_one_row_per_film_lists_the_broken_ones_and_matches_the_api(
    tmp_path: Path, films: dict[str, Film]
) -> None:
    folder = tmp_path / "films"
    (folder / "sub").mkdir(parents=True)
    jpeg = films["cohen"]
    (folder / "cohen.jpg").write_bytes(jpeg.data)
    (folder / "sub" / "kermany.dcm").write_bytes(dicom_film(films["kermany"].path, modality="DX"))
    (folder / "truncated.jpg").write_bytes(jpeg.data[:400])
    (folder / "notes.txt").write_text("not a film\n")
    data_dir = tmp_path / "data"
    out_csv, overlays, srs = tmp_path / "out.csv", tmp_path / "overlays", tmp_path / "sr"

    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "predict", str(folder), "--csv", str(out_csv), "--overlays", str(overlays),
         "--dicom-sr", str(srs)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "CXR_DATA_DIR": str(data_dir)},
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr  # some files were unreadable
    assert "2 film(s) read, 2 unreadable; 4 row(s)" in run.stdout
    assert "unreadable: " + str(folder / "truncated.jpg") in run.stderr
    assert "unsupported file type" in run.stderr and "predict:" in run.stderr  # reasons and the progress bar

    with open(out_csv, newline="") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == {"cohen.jpg", "kermany.dcm", "truncated.jpg", "notes.txt"}
    assert rows["truncated.jpg"]["status"] == "error" and "JPEG" in rows["truncated.jpg"]["error"]
    assert rows["notes.txt"]["status"] == "error" and "unsupported file type" in rows["notes.txt"]["error"]
    ok = rows["cohen.jpg"]
    assert ok["status"] == "ok" and ok["format"] == "jpeg" and len(ok["checkpoint_sha256"]) == 64
    assert ok["cam_method"] and ok["lung_focus_flagged"] in ("true", "false") and ok["model_version"] == "1"
    assert rows["kermany.dcm"]["format"] == "dicom"
    assert Path(ok["overlay"]).is_file() and Path(ok["overlay"]).read_bytes()[:4] == b"\x89PNG"

    for name in ("cohen.jpg", "kermany.dcm"):
        sr = pydicom.dcmread(rows[name]["dicom_sr"])
        assert dciodvfy(sr, tmp_path) == []
        expected = {c: float(rows[name][f"p_{c}"]) for c in ("normal", "bacterial", "viral", "covid19")}
        assert read_report(sr).probabilities == pytest.approx(expected, abs=1e-12)
    assert len(list(srs.glob("*.film.dcm"))) == 1  # the JPEG's SR references a Secondary Capture of it

    with ExitStack() as stack:  # the same film through the API gives the same numbers: the same pipeline
        env = start_env(stack, data_dir)
        reply = env.upload(jpeg.data, name="cohen.jpg").json()
        (result,) = reply["results"]
        assert reply["image_sha256"] == ok["image_sha256"]
        assert result["checkpoint_sha256"] == ok["checkpoint_sha256"]
        for cls, p in result["probabilities"].items():
            assert float(ok[f"p_{cls}"]) == pytest.approx(p, abs=1e-6)
        assert float(ok["lung_focus_score"]) == pytest.approx(result["lung_focus"]["score"], abs=1e-6)


def test_predict_refuses_a_missing_path_with_a_clear_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "predict", str(tmp_path / "nope"), "--csv", str(tmp_path / "o.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "CXR_DATA_DIR": str(tmp_path / "d")},
    )  # fmt: skip
    assert run.returncode != 0 and "error: no such file or folder" in run.stderr
    assert not (tmp_path / "o.csv").exists()
