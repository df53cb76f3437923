"""Contact sheets: the predicted class's CAM on a fixed sample of films, for looking at maps by eye.

`contact_sheet(checkpoints, data_dirs, split=..., per_class=20)` picks `per_class` films of each true
class of `split` (the first ones in a seeded shuffle, so the same films for every checkpoint and every
run), runs each checkpoint through the service's per-film pipeline (`ml.inference.analyze_films`) and
draws, per film, one tile per checkpoint side by side: the film with the predicted class's overlay
and the lung outline, captioned with the predicted class and its lung focus (share of the map's
evidence inside the lungs). A film whose prediction is wrong gets a red caption, one whose lung focus
is flagged an orange one. Each class is one block of rows, labelled with the class.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ml import CLASSES
from ml.cam.overlay import render_outline, render_overlay
from ml.data import Record, get_scenario, read_manifests, select
from ml.inference import FilmResult, Prediction, Predictor, analyze_films
from ml.lung_focus import is_flagged
from ml.lungseg import LungSegmenter
from ml.transforms import load_grayscale

TILE = 112
CAPTION = 14
GAP = 6
HEADER = 18
BACKGROUND = (24, 24, 24)
TEXT = (230, 230, 230)
WRONG = (255, 90, 90)
FLAGGED = (255, 170, 60)

SHORT = {"normal": "norm", "bacterial": "bact", "viral": "vir", "covid19": "covid"}


def sample_films(
    data_dirs: Sequence[str | os.PathLike[str]], split: str, per_class: int, *, seed: int = 0
) -> list[Record]:
    """`per_class` records of each class of `split` (scenario s2), the same ones on every call."""
    records = select(read_manifests(list(data_dirs)), get_scenario("s2"), split)
    rng = random.Random(seed)
    chosen: list[Record] = []
    for name in CLASSES:
        of_class = sorted((r for r in records if r.label == name), key=lambda r: str(r.path))
        rng.shuffle(of_class)
        chosen += of_class[:per_class]
    return chosen


def _tile(
    gray: np.ndarray, prediction: Prediction, mask: np.ndarray | None, threshold: float
) -> tuple[Image.Image, str, tuple[int, int, int]]:
    index = CLASSES.index(prediction.predicted_class)
    img = render_overlay(gray, prediction.cam_raw[index], alpha=0.55, max_side=TILE, box=prediction.input_box)
    img = img.convert("RGBA")
    if mask is not None:
        img.alpha_composite(render_outline(mask, gray.shape[0], gray.shape[1], max_side=TILE, thickness=1))
    canvas = Image.new("RGB", (TILE, TILE), BACKGROUND)
    canvas.paste(img.convert("RGB"), ((TILE - img.width) // 2, (TILE - img.height) // 2))
    focus = prediction.predicted_lung_focus
    score = None if focus is None else focus.score
    text = SHORT[prediction.predicted_class] + ("" if score is None else f" {100 * score:.0f}%")
    return canvas, text, (FLAGGED if is_flagged(score, threshold) else TEXT)


def contact_sheet(
    checkpoints: Sequence[str | os.PathLike[str]],
    data_dirs: Sequence[str | os.PathLike[str]],
    *,
    split: str = "test",
    per_class: int = 20,
    columns: int = 10,
    lung_threshold: float,
    lungseg_checkpoint: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """The sheet as an RGB image (see the module docstring)."""
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    if per_class <= 0 or columns <= 0:
        raise ValueError("per_class and columns must be > 0")
    segmenter = LungSegmenter.from_checkpoint(lungseg_checkpoint)
    predictors = [Predictor.from_checkpoint(c, segmenter=segmenter) for c in checkpoints]
    records = sample_films(data_dirs, split, per_class)
    films = [load_grayscale(str(r.path)) for r in records]
    results: list[FilmResult] = []
    for start in range(0, len(films), 16):
        results += analyze_films(films[start : start + 16], predictors, segmenter)

    cell_w = len(predictors) * TILE + GAP
    cell_h = TILE + CAPTION + GAP
    blocks = [[i for i, r in enumerate(records) if r.label == name] for name in CLASSES]
    rows_per_block = [max(1, -(-len(b) // columns)) for b in blocks]
    width = columns * cell_w + GAP
    height = sum(HEADER + n * cell_h for n in rows_per_block) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    names = " | ".join(Path(c).parent.name + "/" + Path(c).name for c in checkpoints)
    y = 0
    for name, block, n_rows in zip(CLASSES, blocks, rows_per_block, strict=True):
        draw.text((GAP, y + 3), f"true {name}  (tiles: {names})", fill=TEXT)
        y += HEADER
        for k, i in enumerate(block):
            x0 = GAP + (k % columns) * cell_w
            y0 = y + (k // columns) * cell_h
            for m, prediction in enumerate(results[i].predictions):
                tile, text, colour = _tile(films[i], prediction, results[i].lung_mask, lung_threshold)
                if prediction.predicted_class != name:
                    colour = WRONG
                sheet.paste(tile, (x0 + m * TILE, y0))
                draw.text((x0 + m * TILE + 2, y0 + TILE + 1), text, fill=colour)
        y += n_rows * cell_h
    return sheet
