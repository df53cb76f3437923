"""Fixtures shared by the whole suite.

Tests that need real X-rays read the shared dataset (`$CXR_DATASET_DIR`, default
`../shared/data/cxr` beside the project root); CI provides it, so its absence is a failure with a
clear message, not a silent skip. Unit tests make synthetic images instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support.postgres import postgres_cluster, postgres_url  # noqa: F401  (fixtures for the suite)

ROOT = Path(__file__).resolve().parent.parent


def _shared_dir(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env) or default)
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"shared dataset not found at {path} (set {env}); CI provides ../shared/data")
    return path


@pytest.fixture(scope="session")
def cxr_data_dir() -> Path:
    return _shared_dir("CXR_DATASET_DIR", ROOT.parent / "shared" / "data" / "cxr")


@pytest.fixture(scope="session")
def cxr_adult_data_dir() -> Path:
    return _shared_dir("CXR_ADULT_DATASET_DIR", ROOT.parent / "shared" / "data" / "cxr-adult")


@pytest.fixture(scope="session")
def lungseg_data_dir() -> Path:
    return _shared_dir("CXR_LUNGSEG_DIR", ROOT.parent / "shared" / "data" / "lungseg")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Decoded-image caches of the tests go to a session temp dir unless a cache dir is given.
    os.environ.setdefault("CXR_CACHE_DIR", str(tmp_path_factory.mktemp("cxr-cache")))


@pytest.fixture
def synthetic_xray() -> np.ndarray:
    """A 300×240 uint8 film-like image: dark background, two bright 'lung' ellipses, a text-like block."""
    h, w = 300, 240
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 30, dtype=np.float32)
    for cx in (0.32 * w, 0.68 * w):
        inside = ((xx - cx) / (0.16 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2 < 1
        img[inside] = 170
    img[10:25, 10:60] = 250
    rng = np.random.default_rng(0)
    img += rng.normal(0, 5, size=img.shape)
    return img.clip(0, 255).astype(np.uint8)
