"""Contact sheets: a fixed sample per class, one tile per checkpoint side by side, real bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import CLASSES
from ml.checkpoints import DEFAULT_CHECKPOINT
from ml.cli import main
from ml.contact_sheet import CAPTION, GAP, HEADER, TILE, contact_sheet, sample_films


def test_the_sample_is_fixed_and_per_class(small_dataset: Path) -> None:
    first = sample_films([small_dataset], "test", 2)
    assert [r.path for r in first] == [r.path for r in sample_films([small_dataset], "test", 2)]
    assert [r.label for r in first] == [c for c in CLASSES for _ in range(2)]


def test_two_checkpoints_give_paired_tiles(small_dataset: Path) -> None:
    sheet = contact_sheet(
        [DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT],
        [small_dataset],
        split="test",
        per_class=2,
        columns=2,
        lung_threshold=0.5,
    )
    cell_w = 2 * TILE + GAP
    assert sheet.size == (2 * cell_w + GAP, 4 * (HEADER + TILE + CAPTION + GAP) + GAP)
    px = np.asarray(sheet)
    y0 = HEADER
    left = px[y0 : y0 + TILE, GAP : GAP + TILE]
    right = px[y0 : y0 + TILE, GAP + TILE : GAP + 2 * TILE]
    assert left.std() > 10  # a film with its overlay, not the background
    np.testing.assert_array_equal(left, right)  # the same model on the same film draws the same tile


def test_cli_writes_the_png_and_rejects_a_missing_checkpoint(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sheet.png"
    assert (
        main(
            [
                "contact-sheet",
                "--checkpoint",
                str(DEFAULT_CHECKPOINT),
                "--data",
                str(small_dataset),
                "--per-class",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["contact-sheet", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
