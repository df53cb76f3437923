"""Fixtures of the hospital-integration tests: a real Orthanc (tests.support.orthanc), an app on
SQLite pointed at it, chest films as CR/DX DICOM, and DICOMweb helpers to put films in and read
results back the way an integrator would."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from app.pacs.dicomweb import InstanceRef, Pacs
from app.pacs.outbox import make_sender
from app.pacs.sync import SyncReport, sync_once
from tests.app.conftest import Env, start_env
from tests.support.orthanc import OrthancServer

COVID_FILM = "images/cohen/01E392EE-69F9-4E33-BFCE-E5C968654078.jpg"


@pytest.fixture
def film_path(cxr_data_dir: Path) -> Path:
    return cxr_data_dir / COVID_FILM


@pytest.fixture
def pacs_env(tmp_path: Path, orthanc: OrthancServer) -> Iterator[Callable[..., Env]]:
    """`pacs_env(**settings)`: an app on tmp_path/data, its PACS the test's Orthanc (STOW-RS output)."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> Env:
            overrides.setdefault("dicomweb_url", orthanc.dicomweb_url)
            overrides.setdefault("pacs_lookback_days", 0)
            return start_env(stack, tmp_path / "data", **overrides)

        yield make


def store(orthanc: OrthancServer, *films: bytes) -> list[Dataset]:
    """STOW-RS the films into Orthanc, as a modality or another system would."""
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in films]
    DICOMwebClient(url=orthanc.dicomweb_url).store_instances(datasets)
    return datasets


def run_sync(env: Env) -> SyncReport:
    ctx = env.app.state.ctx
    pacs = Pacs(ctx.settings)
    try:
        return sync_once(ctx=ctx, pacs=pacs, sender=make_sender(ctx.settings, pacs))
    finally:
        pacs.close()


def series_of_study(orthanc: OrthancServer, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """QIDO-RS: modality → the series of that modality in the study."""
    found: dict[str, list[dict[str, Any]]] = {}
    for series in DICOMwebClient(url=orthanc.dicomweb_url).search_for_series(study_instance_uid=study_uid):
        found.setdefault(series["00080060"]["Value"][0], []).append(series)
    return found


def retrieve_series(env: Env, study_uid: str, series_uid: str) -> list[Dataset]:
    """WADO-RS every instance of a series from the env's PACS, ordered by instance number."""
    pacs = Pacs(env.settings)
    try:
        refs = pacs.client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid)
        datasets = [
            pydicom.dcmread(io.BytesIO(pacs.retrieve(InstanceRef(study_uid, series_uid, r["00080018"]["Value"][0]))))
            for r in refs
        ]
    finally:
        pacs.close()
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
