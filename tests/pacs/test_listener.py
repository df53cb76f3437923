"""The listener path: Orthanc, with cxr-review declared as a DICOM modality, forwards a study to
`dicom-listener` (C-STORE); the frontal film runs, the lateral is recorded as rejected, and the
results come back into Orthanc by C-STORE."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.models import DicomExport, PacsInstance
from app.pacs.listener import start_listener
from tests.pacs.conftest import series_of_study, store
from tests.support.dicom_films import dicom_film
from tests.support.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.pacs  # a real Orthanc (tests/support/orthanc.py)


def test_orthanc_forwards_a_study_to_the_listener_and_gets_the_results_back(
    pacs_env, orthanc: OrthancServer, film_path: Path
) -> None:
    env = pacs_env(
        pacs_output="c-store", pacs_store_host="127.0.0.1", pacs_store_port=orthanc.dicom_port,
        pacs_store_ae_title=orthanc.ae_title, pacs_poll_seconds=0.2,
    )  # fmt: skip
    port = free_port()
    listener = start_listener(ctx=env.app.state.ctx, ae_title="CXRREVIEW", host="127.0.0.1", port=port)
    try:
        frontal = store(orthanc, dicom_film(film_path))[0]
        study = str(frontal.StudyInstanceUID)
        lateral = store(orthanc, dicom_film(film_path, view="LL", study_uid=study))[0]
        orthanc.add_modality("cxr-review", ae_title="CXRREVIEW", host="127.0.0.1", port=port)
        job = orthanc.forward_study("cxr-review", study)
        assert job is not None  # Orthanc's synchronous store job answered: both instances were accepted

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with env.session() as s:
                statuses = [e.status for e in s.query(DicomExport)]
            if len(statuses) == 3 and set(statuses) == {"sent"}:
                break
            time.sleep(0.2)
        assert statuses == ["sent"] * 3
    finally:
        listener.stop()
    with env.session() as s:
        rows = {r.sop_instance_uid: r for r in s.query(PacsInstance)}
        assert (rows[frontal.SOPInstanceUID].status, rows[frontal.SOPInstanceUID].origin) == ("done", "c-store")
        assert rows[lateral.SOPInstanceUID].status == "rejected"
        assert "lateral view" in str(rows[lateral.SOPInstanceUID].reason)
    assert sorted(series_of_study(orthanc, study)) == ["CR", "OT", "SEG", "SR"]


def test_the_listener_accepts_only_the_configured_calling_ae_titles(pacs_env) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    env = pacs_env(pacs_output="none", pacs_calling_ae_titles="ORTHANC, PACS2")
    port = free_port()
    listener = start_listener(ctx=env.app.state.ctx, ae_title="CXRREVIEW", host="127.0.0.1", port=port)
    try:
        answers = {}
        for calling in ("ORTHANC", "INTRUDER"):
            scu = AE(ae_title=calling)
            scu.add_requested_context(Verification)
            assoc = scu.associate("127.0.0.1", port, ae_title="CXRREVIEW")
            answers[calling] = assoc.is_established
            if assoc.is_established:
                assert int(assoc.send_c_echo().Status) == 0
                assoc.release()
    finally:
        listener.stop()
    assert answers == {"ORTHANC": True, "INTRUDER": False}
