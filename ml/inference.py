"""`Predictor`: a loaded checkpoint that turns grayscale films into probabilities and CAMs.

One forward pass per batch gives both: the logits become probabilities (softmax over the
checkpoint's active classes), and the registry's CAM method turns the same pass's feature map into
raw maps for all four classes. The model is shared read-only; no hooks, so one Predictor can serve
concurrent requests.
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
from ml.registry import ArchSpec, get_arch
from ml.train import class_mask
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
    extras: dict[str, Any] = field(default_factory=dict)

    def cam_map(self, cls: str, height: int, width: int) -> np.ndarray:
        """The map of one class at height×width, in [0, 1]."""
        return normalized_map(self.cam_raw[CLASSES.index(cls)], height, width)

    def classes_by_probability(self) -> list[str]:
        return sorted(CLASSES, key=lambda c: -self.probabilities[c])


class Predictor:
    def __init__(self, model: CXRNet, meta: dict[str, Any], *, checkpoint_path: str | None = None,
                 checkpoint_sha256: str | None = None) -> None:
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
        self.checkpoint_path = checkpoint_path
        self.checkpoint_sha256 = checkpoint_sha256

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str] | None = None) -> Predictor:
        path = Path(path or DEFAULT_CHECKPOINT)
        model, meta = load_model(path)
        return cls(model, meta, checkpoint_path=str(path), checkpoint_sha256=file_sha256(path))

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def cam_method(self) -> str:
        return self.spec.cam_method

    def predict(self, grays: Sequence[np.ndarray]) -> list[Prediction]:
        """H×W uint8 films (any size) → one Prediction each."""
        if not grays:
            return []
        x = to_model_input(grays, self.input_size, self.mean, self.std, self.intensity)
        out = self._cam(x)
        logits = out.logits + self._mask
        probs = torch.softmax(logits, dim=1)
        results = []
        for i in range(len(grays)):
            p = probs[i].tolist()
            results.append(Prediction(
                probabilities={c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                predicted_class=CLASSES[int(probs[i].argmax())],
                logits=[float(v) for v in out.logits[i].tolist()],
                cam_method=out.method,
                cam_raw=out.raw[i].float().numpy().astype(np.float32),
                cam_identity=out.identity,
            ))
        return results

    def predict_one(self, gray: np.ndarray) -> Prediction:
        return self.predict([gray])[0]
