"""Shape measures of a lung mask, for the not-a-frontal-chest-X-ray check (`ml.risk`): a frontal film shows
two lungs side by side, each about as large as the other, filling most of their bounding box."""

from __future__ import annotations

import numpy as np


def lung_shape(mask: np.ndarray) -> tuple[float, float, float]:
    """(area share, left/right balance, bounding-box fill) of a bool lung mask (module docstring)."""
    m = np.asarray(mask).astype(bool)
    area = float(m.mean())
    if not m.any():
        return area, 0.0, 0.0
    half = m.shape[1] // 2
    left, right = float(m[:, :half].sum()), float(m[:, m.shape[1] - half :].sum())
    balance = min(left, right) / max(left, right)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return area, balance, float(m.sum() / box)


PART_GRID = 64
MIN_PART_SHARE = 0.005


def _components(cells: np.ndarray) -> list[tuple[int, float, float]]:
    """8-connected components of a bool grid as (size, mean row, mean column): every cell starts with its
    own label and takes the largest label among its lung neighbours until nothing changes (a few dozen
    whole-grid steps on a lung mask, instead of a Python flood fill cell by cell)."""
    n_rows, n_cols = cells.shape
    labels = np.where(cells, np.arange(1, cells.size + 1).reshape(cells.shape), 0)
    while True:
        padded = np.pad(labels, 1)
        spread = np.max(
            [padded[1 + a : 1 + a + n_rows, 1 + b : 1 + b + n_cols] for a in (-1, 0, 1) for b in (-1, 0, 1)], axis=0
        )
        spread = np.where(cells, spread, 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    found, index, sizes = np.unique(labels[cells], return_inverse=True, return_counts=True)
    rows, cols = np.nonzero(cells)
    mean_rows = np.bincount(index, weights=rows, minlength=len(found)) / sizes
    mean_cols = np.bincount(index, weights=cols, minlength=len(found)) / sizes
    return [(int(n), float(r), float(c)) for n, r, c in zip(sizes, mean_rows, mean_cols, strict=True)]


def lung_parts(mask: np.ndarray) -> tuple[int, float, float]:
    """(parts of at least MIN_PART_SHARE of the film, share of lung in the two largest parts, their
    layout: horizontal minus vertical distance of their centres in film widths) of a bool lung mask,
    8-connected on a PART_GRID×PART_GRID grid (a cell is lung when at least half of it is)."""
    m = np.asarray(mask).astype(np.float32)
    h, w = m.shape
    rows = (np.arange(h) * PART_GRID // h)[:, None]
    cols = (np.arange(w) * PART_GRID // w)[None, :]
    cell = (rows * PART_GRID + cols).ravel()  # each pixel's grid cell; bincount sums exactly (0/1 values)
    grid = np.bincount(cell, weights=m.ravel(), minlength=PART_GRID * PART_GRID).reshape(PART_GRID, PART_GRID)
    counts = np.bincount(cell, minlength=PART_GRID * PART_GRID).reshape(PART_GRID, PART_GRID).astype(np.float64)
    cells = grid / np.maximum(counts, 1.0) >= 0.5
    parts = _components(cells)
    parts.sort(reverse=True)
    total = sum(p[0] for p in parts)
    big = sum(p[0] >= MIN_PART_SHARE * PART_GRID * PART_GRID for p in parts)
    if len(parts) < 2:
        return big, 1.0 if parts else 0.0, -1.0
    (_, r1, c1), (_, r2, c2) = parts[0], parts[1]
    return big, (parts[0][0] + parts[1][0]) / total, (abs(c1 - c2) - abs(r1 - r2)) / PART_GRID
