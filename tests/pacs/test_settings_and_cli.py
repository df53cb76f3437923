"""PACS settings refuse what cannot work, and the commands say so as `error: ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.pacs import sync
from app.pacs.dicomweb import PacsError
from tests.support.orthanc import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pacs_output": "c-store"}, "CXR_PACS_STORE_HOST and CXR_PACS_STORE_PORT"),
        ({"dicomweb_username": "cxr"}, "both CXR_DICOMWEB_USERNAME and CXR_DICOMWEB_PASSWORD"),
        ({"dicomweb_username": "cxr", "dicomweb_password": ""}, "CXR_DICOMWEB_PASSWORD is empty"),
        ({"pacs_ae_title": "A" * 17}, "pacs_ae_title"),
    ],
)
def test_settings_refuse_an_unusable_pacs_configuration(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CXR_DATA_DIR": str(tmp_path / "data"), **env},
    )  # fmt: skip


def test_pacs_sync_without_a_url_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(PacsError, match="CXR_DICOMWEB_URL is not set"):
        sync.run(Settings(data_dir=tmp_path), once=True)
    assert not (tmp_path / "cxr-review.sqlite3").exists()


def test_pacs_sync_once_with_an_unreachable_pacs_fails_with_a_clear_error(tmp_path: Path) -> None:
    run = cli(tmp_path, "pacs-sync", "--once", CXR_DICOMWEB_URL=f"http://127.0.0.1:{free_port()}/dicom-web")
    assert run.returncode == 1 and "error: QIDO-RS search of" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
