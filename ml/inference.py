"""`Predictor`: a loaded checkpoint that turns grayscale films into probabilities and CAMs.

One forward pass per batch gives both: the logits become probabilities (softmax over the
checkpoint's active classes), and the registry's CAM method turns the same pass's feature map into
raw maps for all four classes. The model is shared read-only; no hooks, so one Predictor can serve
concurrent requests.

A checkpoint trained in `lung-crop` input mode (`meta["input_mode"]`, see `ml.lung_crop`) sees only
the lungs' bounding box: `predict` then needs each film's lung mask (pass `lung_masks`, or give the
Predictor a `LungSegmenter`), and each Prediction records the `input_box` its maps span.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml import CLASSES
from ml.architectures import CXRNet
from ml.cam import cam_for
from ml.cam.overlay import normalized_map
from ml.checkpoints import DEFAULT_CHECKPOINT, file_sha256, load_model
from ml.lung_crop import DEFAULT_INPUT_MODE, DEFAULT_MARGIN, Box, check_input_mode, crop, lung_box
from ml.lungseg import LungSegmenter
from ml.model_io import class_mask
from ml.registry import ArchSpec, get_arch
from ml.transforms import to_model_input


@dataclass
class Prediction:
    probabilities: dict[str, float]
    predicted_class: str
    logits: list[float]
    cam_method: str
    cam_raw: np.ndarray
    """K×h×w float32, in CLASSES order: the un-upsampled maps (store these, re-render at will)."""
    cam_identity: str | None = None
    input_box: Box | None = None
    """The film region the network saw and the maps span (lung-crop mode); None: the whole film."""
    extras: dict[str, Any] = field(default_factory=dict)

    def cam_map(self, cls: str, height: int, width: int) -> np.ndarray:
        """The map of one class at height×width (the frame of `input_box`, or the film), in [0, 1]."""
        return normalized_map(self.cam_raw[CLASSES.index(cls)], height, width)

    def classes_by_probability(self) -> list[str]:
        return sorted(CLASSES, key=lambda c: -self.probabilities[c])


class Predictor:
    def __init__(
        self,
        model: CXRNet,
        meta: dict[str, Any],
        *,
        checkpoint_path: str | None = None,
        checkpoint_sha256: str | None = None,
        segmenter: LungSegmenter | None = None,
    ) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.meta = meta
        self.spec: ArchSpec = get_arch(meta["arch"])
        self.input_size = int(meta["input_size"])
        self.mean = tuple(meta["mean"])
        self.std = tuple(meta["std"])
        self.intensity = str(meta.get("intensity", "raw"))
        self.active_classes = tuple(meta.get("active_classes", CLASSES))
        self._mask = class_mask(self.active_classes)
        self._cam = cam_for(self.model, self.spec)
        self.input_mode = check_input_mode(str(meta.get("input_mode", DEFAULT_INPUT_MODE)))
        self.crop_margin = float(meta.get("crop_margin", DEFAULT_MARGIN))
        self.segmenter = segmenter
        self.checkpoint_path = checkpoint_path
        self.checkpoint_sha256 = checkpoint_sha256

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str] | None = None, *, segmenter: LungSegmenter | None = None
    ) -> Predictor:
        """Load `path` (default: the bundled model). A lung-crop checkpoint without `segmenter` gets the
        bundled lung segmenter."""
        path = Path(path or DEFAULT_CHECKPOINT)
        model, meta = load_model(path)
        if segmenter is None and meta.get("input_mode") == "lung-crop":
            segmenter = LungSegmenter.from_checkpoint()
        return cls(model, meta, checkpoint_path=str(path), checkpoint_sha256=file_sha256(path), segmenter=segmenter)

    @property
    def needs_lung_mask(self) -> bool:
        return self.input_mode == "lung-crop"

    def input_boxes(self, grays: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None) -> list[Box | None]:
        """The film region each film is cropped to (None: the whole film)."""
        if not self.needs_lung_mask:
            return [None] * len(grays)
        if lung_masks is None:
            if self.segmenter is None:
                raise ValueError("this model was trained on lung-cropped films: pass lung masks or a LungSegmenter")
            lung_masks = [self.segmenter.predict_small(g) for g in grays]
        if len(lung_masks) != len(grays):
            raise ValueError(f"got {len(lung_masks)} lung masks for {len(grays)} films")
        return [lung_box(m, self.crop_margin) for m in lung_masks]

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def cam_method(self) -> str:
        return self.spec.cam_method

    def predict(self, grays: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None) -> list[Prediction]:
        """H×W uint8 films (any size) → one Prediction each. `lung_masks` (bool, any resolution, one per
        film) are used only by lung-crop models; without them the Predictor's segmenter makes them."""
        if not grays:
            return []
        boxes = self.input_boxes(grays, lung_masks)
        inputs = [crop(g, b) for g, b in zip(grays, boxes, strict=True)]
        x = to_model_input(inputs, self.input_size, self.mean, self.std, self.intensity)
        out = self._cam(x)
        logits = out.logits + self._mask
        probs = torch.softmax(logits, dim=1)
        results = []
        for i in range(len(grays)):
            p = probs[i].tolist()
            results.append(
                Prediction(
                    probabilities={c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                    predicted_class=CLASSES[int(probs[i].argmax())],
                    logits=[float(v) for v in out.logits[i].tolist()],
                    cam_method=out.method,
                    cam_raw=out.raw[i].float().numpy().astype(np.float32),
                    cam_identity=out.identity,
                    input_box=boxes[i],
                )
            )
        return results

    def predict_one(self, gray: np.ndarray, lung_mask: np.ndarray | None = None) -> Prediction:
        return self.predict([gray], None if lung_mask is None else [lung_mask])[0]
