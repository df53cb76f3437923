"""Bad input from the PACS gets what bad uploads get: recorded with a clear reason, nothing
half-written, the sync goes on; failures are retried a bounded number of times, then reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.models import DicomExport, Image, PacsInstance, Prediction
from app.pacs.intake import check_header
from app.pacs.sync import status_lines
from tests.pacs.conftest import run_sync, store
from tests.support.dicom_films import BASIC_TEXT_SR, MPEG2_MAIN, dicom_film
from tests.support.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.pacs  # a real Orthanc (tests/support/orthanc.py)


def test_lateral_wrong_sop_class_unreadable_syntax_and_no_pixels_are_rejected_and_the_good_film_runs(
    pacs_env, orthanc: OrthancServer, film_path: Path
) -> None:
    env = pacs_env(pacs_output="none")
    good, lateral, text_sr, mpeg, no_pixels = store(
        orthanc,
        dicom_film(film_path),
        dicom_film(film_path, view="LL"),
        dicom_film(film_path, sop_class_uid=BASIC_TEXT_SR, pixels=False),
        dicom_film(film_path, transfer_syntax=MPEG2_MAIN),
        dicom_film(film_path, pixels=False),
    )
    report = run_sync(env)
    assert report.listed == 5 and report.done == [good.SOPInstanceUID]
    assert "lateral view (ViewPosition LL)" in report.rejected[lateral.SOPInstanceUID]
    assert "not a radiograph: SOP class Basic Text SR" in report.rejected[text_sr.SOPInstanceUID]
    assert "unsupported transfer syntax MPEG2 Main Profile" in report.rejected[mpeg.SOPInstanceUID]
    assert "Image Pixel module is missing" in report.rejected[no_pixels.SOPInstanceUID]
    assert any("rejected" in line and lateral.SOPInstanceUID in line for line in report.lines())
    with env.session() as s:  # only the good film left anything behind
        assert s.query(Prediction).count() == 1 and s.query(Image).count() == 1
        rows = {r.sop_instance_uid: r for r in s.query(PacsInstance)}
        assert rows[good.SOPInstanceUID].status == "done"
        assert {rows[d.SOPInstanceUID].status for d in (lateral, text_sr, mpeg, no_pixels)} == {"rejected"}
        assert s.query(DicomExport).count() == 0  # CXR_PACS_OUTPUT=none
    again = run_sync(env)  # a restart or the next pass: nothing is done twice
    assert again.skipped == 5 and not again.done and not again.rejected
    assert len([line for line in status_lines(env.app.state.ctx) if line.startswith("rejected")]) == 4


def test_check_header_accepts_frontal_or_unknown_views_only(film_path: Path) -> None:
    import io

    import pydicom

    def header(**kwargs: object) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(dicom_film(film_path, **kwargs)), stop_before_pixels=True)  # type: ignore[arg-type]

    assert check_header(header(view="PA")) is None and check_header(header(view="AP")) is None
    assert check_header(header(view=None)) is None  # the header does not say: read it
    assert "not a frontal view (ViewPosition RLO)" in str(check_header(header(view="RLO")))
    assert check_header(header(modality="DX")) is None


def test_a_failing_instance_is_retried_then_reported_and_a_failing_push_likewise(
    pacs_env, orthanc: OrthancServer, film_path: Path
) -> None:
    # An unknown model id makes every prediction fail (a configuration error, not bad input): retried.
    env = pacs_env(pacs_models="9999", pacs_max_attempts=2)
    (film,) = store(orthanc, dicom_film(film_path))
    uid = film.SOPInstanceUID
    first = run_sync(env)
    assert uid in first.retrying and "9999" in first.retrying[uid]
    second = run_sync(env)
    assert uid in second.failed and "FAILED" in "\n".join(second.lines())
    third = run_sync(env)
    assert third.skipped == 1 and not third.failed  # given up: reported, not retried forever
    assert any(uid in line and line.startswith("failed") for line in status_lines(env.app.state.ctx))
    with env.session() as s:
        (row,) = s.query(PacsInstance).all()
        assert (row.status, row.attempts, row.prediction_id) == ("failed", 2, None)
        assert s.query(Prediction).count() == 0


def test_results_that_cannot_be_sent_are_retried_then_reported(
    pacs_env, orthanc: OrthancServer, film_path: Path
) -> None:
    env = pacs_env(pacs_output="c-store", pacs_store_host="127.0.0.1", pacs_store_port=free_port(), pacs_max_attempts=2)
    store(orthanc, dicom_film(film_path))
    first = run_sync(env)
    assert len(first.done) == 1 and len(first.delivery.retrying) == 3 and not first.delivery.sent
    second = run_sync(env)
    assert len(second.delivery.failed) == 3 and "association" in next(iter(second.delivery.failed.values()))
    with env.session() as s:
        assert sorted((e.kind, e.status, e.attempts) for e in s.query(DicomExport)) == [
            ("sc", "failed", 2), ("seg", "failed", 2), ("sr", "failed", 2),
        ]  # fmt: skip
    assert len([line for line in status_lines(env.app.state.ctx) if line.startswith("unsent")]) == 3
