"""Done means: a DICOM chest film STOW-RS'd into a real Orthanc → `cxr-review pacs-sync --once` → the
case is in the worklist → Orthanc lists the SR, SEG and SC series in the film's study, the SR read
back matches the API → a verdict → an amended SR arrives in the same SR series."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.dicom_out.sr import read_report
from app.models import DicomExport, PacsInstance, Prediction
from tests.pacs.conftest import retrieve_series, run_sync, series_of_study, store
from tests.support.dicom_films import dicom_film
from tests.support.orthanc import OrthancServer

pytestmark = pytest.mark.pacs  # a real Orthanc (tests/support/orthanc.py)

ROOT = Path(__file__).resolve().parents[2]


def pacs_sync_once(env_vars: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.cli", "pacs-sync", "--once"]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env_vars}
    )


def test_film_from_orthanc_to_worklist_and_results_back_with_an_amended_sr_after_the_verdict(
    pacs_env, orthanc: OrthancServer, film_path: Path
) -> None:
    env = pacs_env()
    (source,) = store(orthanc, dicom_film(film_path, modality="DX"))
    study = str(source.StudyInstanceUID)

    run = pacs_sync_once(
        {
            "CXR_DATA_DIR": str(env.settings.data_dir),
            "CXR_DICOMWEB_URL": orthanc.dicomweb_url,
            "CXR_PACS_LOOKBACK_DAYS": "1",  # the test film is from today
        }
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 instance(s) listed, 1 processed, 0 rejected" in run.stdout
    assert "3 result object(s) sent" in run.stdout

    items = env.client.get("/api/v1/predictions", headers=env.auth("reviewer")).json()["items"]
    (item,) = [i for i in items if i["filename"] == f"{source.SOPInstanceUID}.dcm"]
    detail = env.client.get(f"/api/v1/predictions/{item['prediction_id']}", headers=env.auth("reviewer")).json()
    (result,) = detail["results"]

    series = series_of_study(orthanc, study)
    assert sorted(series) == ["DX", "OT", "SEG", "SR"]  # the film, SC (modality OT), SEG, SR in one study
    assert all(len(v) == 1 for v in series.values())
    sr_series = series["SR"][0]["0020000E"]["Value"][0]
    (sr,) = retrieve_series(env, study, sr_series)
    report = read_report(sr)
    # SR numbers are DS: at most 16 characters, so ~13 significant digits survive
    assert report.probabilities == pytest.approx(result["probabilities"], abs=1e-12)
    assert report.predicted_class == result["predicted_class"]
    assert report.checkpoint_sha256 == result["checkpoint_sha256"]
    assert report.algorithm_version == str(result["model_version"])
    assert report.lung_focus_score == pytest.approx(result["lung_focus"]["score"], abs=1e-12)
    assert report.lung_focus_flagged == result["lung_focus"]["flagged"]
    assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == study
    assert not report.verified and report.verdict is None

    r = env.client.post(
        f"/api/v1/predictions/{item['prediction_id']}/verdicts",
        headers=env.auth("reviewer"),
        json={"model_id": result["model_id"], "verdict": "reject", "reasons": ["outside_lungs"], "comment": "tag"},
    )
    assert r.status_code == 201, r.text
    again = run_sync(env)
    assert again.skipped == 1 and again.done == [] and len(again.delivery.sent) == 1  # only the amended SR

    first, amended = retrieve_series(env, study, sr_series)  # same series, instance numbers 1 and 2
    assert first.SOPInstanceUID == sr.SOPInstanceUID
    amended_report = read_report(amended)
    assert amended_report.verdict == "reject" and amended_report.reasons == ["outside_lungs"]
    assert amended_report.comment == "tag" and amended_report.verified
    assert amended_report.verifying_observer == "reviewer"
    assert amended_report.predecessor_uids == [sr.SOPInstanceUID]
    assert amended_report.probabilities == report.probabilities

    with env.session() as s:  # remembered: one instance, one prediction, four objects sent
        assert [(p.status, p.attempts) for p in s.query(PacsInstance)] == [("done", 0)]
        assert s.query(Prediction).count() == 1
        assert sorted(e.status for e in s.query(DicomExport)) == ["sent"] * 4
