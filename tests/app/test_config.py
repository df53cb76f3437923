"""Settings: environment prefix, production refuses default secrets, development persists one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_environment_variables_use_the_cxr_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CXR_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("CXR_DATABASE_URL", "postgresql+psycopg://u@h/db")
    settings = Settings()
    assert settings.data_dir == tmp_path and settings.max_upload_bytes == 1234
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert Settings(data_dir=tmp_path).resolved_models_dir == tmp_path / "models"


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CXR_DATA_DIR", "CXR_MAX_UPLOAD_BYTES", "CXR_MAX_PIXELS", "CXR_ENV", "CXR_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.data_dir == Path("var") and settings.env == "development"
    assert settings.max_upload_bytes == 20 * 1024 * 1024 and settings.max_pixels == 40_000_000
    assert settings.resolved_database_url.startswith("sqlite:///") and settings.resolved_database_url.endswith(
        "var/cxr-review.sqlite3"
    )


@pytest.mark.parametrize("secret", [None, "", "changethis", "secret", "short-but-random-1234"])
def test_production_refuses_missing_or_weak_secret(secret: str | None, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="CXR_SECRET_KEY"):
        Settings(env="production", secret_key=secret, data_dir=tmp_path)


def test_production_accepts_a_real_secret_and_never_writes_one(tmp_path: Path) -> None:
    key = "k" * 20 + "9f8e7d6c5b4a3210fedcba"
    settings = Settings(env="production", secret_key=key, data_dir=tmp_path).prepared()
    assert settings.secret_key == key and not (tmp_path / "secret_key").exists()


def test_development_generates_and_keeps_a_secret(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).prepared().secret_key
    second = Settings(data_dir=tmp_path).prepared().secret_key
    assert first and first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0  # readable by the owner only


def test_dataset_dirs_default_to_both_shared_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_DATASET_DIRS", raising=False)
    monkeypatch.delenv("CXR_DATASET_DIR", raising=False)
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    assert Settings().resolved_dataset_dirs == {"cxr": shared / "cxr", "cxr-adult": shared / "cxr-adult"}


@pytest.mark.parametrize(
    "text",
    [
        "{a}:{b}",  # os.pathsep-separated
        " {a} : {b} :",  # blanks around and a trailing separator are ignored
        '["{a}", "{b}"]',  # a JSON list
    ],
)
def test_dataset_dirs_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    a, b = tmp_path / "cxr", tmp_path / "more" / "cxr-adult"
    monkeypatch.setenv("CXR_DATASET_DIRS", text.replace(":", os.pathsep).format(a=a, b=b))
    monkeypatch.setenv("CXR_DATASET_DIR", str(tmp_path / "ignored"))
    assert Settings().resolved_dataset_dirs == {"cxr": a, "cxr-adult": b}


def test_dataset_dir_is_a_one_folder_alias(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CXR_DATASET_DIRS", raising=False)
    monkeypatch.setenv("CXR_DATASET_DIR", str(tmp_path / "mine"))
    assert Settings().resolved_dataset_dirs == {"mine": tmp_path / "mine"}
    monkeypatch.setenv("CXR_DATASET_DIRS", "  ")  # blank: unset, the alias counts
    assert Settings().resolved_dataset_dirs == {"mine": tmp_path / "mine"}
    assert Settings(dataset_dirs=[tmp_path / "x"]).resolved_dataset_dirs == {"x": tmp_path / "x"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["a", 3]', "must be a list of folder paths"),
        ("[a, b]", "looks like a JSON list but is not one"),
        ("[]", "at least one folder"),
        ("one/cxr:two/cxr", "cxr names two folders"),
    ],
)
def test_bad_dataset_dirs_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    monkeypatch.setenv("CXR_DATASET_DIRS", text.replace(":", os.pathsep))
    with pytest.raises(ValidationError, match=message):
        Settings()
