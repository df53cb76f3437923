"""The per-film pipeline (`analyze_films`) and `Predictor`, a loaded checkpoint that turns grayscale
films into probabilities, CAMs and lung focus.

`analyze_films(grays, predictors, segmenter)` is the one way a decoded film becomes a result, used by
the web service (`app.services.predictions`), `evaluate` and batch runs alike: the lung segmenter runs
once per film, then every model runs once per batch with that mask, and each Prediction holds
everything a result needs (probabilities, the raw CAMs of all four classes, the threshold-free lung
focus of each class, the input box of lung-crop models). Whether a lung focus is *flagged* is decided
by whoever applies a threshold (`ml.lung_focus.is_flagged`).

One forward pass per batch gives both: the logits become probabilities (softmax over the
checkpoint's active classes), and the registry's CAM method turns the same pass's feature map into
raw maps for all four classes. The model is shared read-only; no hooks, so one Predictor can serve
concurrent requests.

A checkpoint trained in `lung-crop` input mode (`meta.input_mode`, see `ml.lung_crop`) sees only
the lungs' bounding box: `predict` then needs each film's lung mask (pass `lung_masks`, or give the
Predictor a `LungSegmenter`), and each Prediction records the `input_box` its maps span.

A calibrated checkpoint (`meta.risk`, `cxr-review calibrate`) also gives each Prediction its signals,
`error_risk` (the estimated probability that the predicted class is wrong) and `warnings`, from the same
pass's logits and pooled features plus the lung mask (`ml.risk`); an uncalibrated one gives
`error_risk` None with `error_risk_reason`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ml import CLASSES
from ml.architectures import CXRNet
from ml.cam import cam_for
from ml.checkpoints import DEFAULT_CHECKPOINT, CheckpointMeta, file_sha256, load_model
from ml.lung_crop import Box, check_input_mode, crop, lung_box
from ml.lung_focus import LungFocusScore, lung_focus_by_class
from ml.lungseg import LungSegmenter
from ml.model_io import class_mask
from ml.registry import ArchSpec, get_arch
from ml.risk import NO_RISK_MODEL, RiskModel, RiskWarning, Signals, signals_for
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
    lung_focus: dict[str, LungFocusScore] | None = None
    """Each class's lung focus (CLASSES order), threshold-free; None: no lung mask was available."""
    pooled: np.ndarray | None = None
    """D float32: the pass's pooled feature (spatial mean of the CAM's feature map), what `ml.risk` measures."""
    signals: Signals | None = None
    """The error-risk signals (`ml.risk.Signals`); None: the checkpoint is not calibrated."""
    error_risk: float | None = None
    """Estimated probability that `predicted_class` is wrong, in [0, 1]; None: see `error_risk_reason`."""
    error_risk_reason: str | None = None
    warnings: list[RiskWarning] = field(default_factory=list)
    """`{code, message}` warnings, most serious first (`ml.risk.warnings_for`)."""

    @property
    def predicted_lung_focus(self) -> LungFocusScore | None:
        """The predicted class's lung focus (what flags a result); None: no lung mask was available."""
        return self.lung_focus[self.predicted_class] if self.lung_focus is not None else None


class Predictor:
    def __init__(
        self,
        model: CXRNet,
        meta: CheckpointMeta,
        *,
        checkpoint_path: str | None = None,
        checkpoint_sha256: str | None = None,
        segmenter: LungSegmenter | None = None,
    ) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.meta = meta
        self.spec: ArchSpec = get_arch(meta.arch)
        self.input_size = meta.input_size
        self.mean = meta.mean
        self.std = meta.std
        self.intensity = meta.intensity
        self.active_classes = meta.active_classes
        self._mask = class_mask(self.active_classes)
        self._cam = cam_for(self.model, self.spec)
        self.input_mode = check_input_mode(meta.input_mode)
        self.crop_margin = meta.crop_margin
        self.segmenter = segmenter
        self.checkpoint_path = checkpoint_path
        self.checkpoint_sha256 = checkpoint_sha256
        self.risk: RiskModel | None = None
        self.risk_reason: str | None = NO_RISK_MODEL
        if meta.risk is not None:
            try:
                self.risk, self.risk_reason = RiskModel(meta.risk), None
            except (ValueError, KeyError) as exc:  # a calibration this version cannot read: keep predicting
                self.risk_reason = f"this model's error-risk calibration cannot be used: {exc}"

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str] | None = None, *, segmenter: LungSegmenter | None = None
    ) -> Predictor:
        """Load `path` (default: the bundled model). A lung-crop checkpoint without `segmenter` gets the
        bundled lung segmenter."""
        path = Path(path or DEFAULT_CHECKPOINT)
        model, meta = load_model(path)
        if segmenter is None and meta.input_mode == "lung-crop":
            segmenter = LungSegmenter.from_checkpoint()
        return cls(model, meta, checkpoint_path=str(path), checkpoint_sha256=file_sha256(path), segmenter=segmenter)

    @property
    def needs_lung_mask(self) -> bool:
        return self.input_mode == "lung-crop"

    def lung_masks(
        self, grays: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None
    ) -> list[np.ndarray] | None:
        """The films' lung masks: as given, else made by the Predictor's segmenter when this model needs
        them (lung-crop), else None."""
        if lung_masks is None:
            if not self.needs_lung_mask:
                return None
            if self.segmenter is None:
                raise ValueError("this model was trained on lung-cropped films: pass lung masks or a LungSegmenter")
            lung_masks = [self.segmenter.predict_small(g) for g in grays]
        if len(lung_masks) != len(grays):
            raise ValueError(f"got {len(lung_masks)} lung masks for {len(grays)} films")
        return list(lung_masks)

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def cam_method(self) -> str:
        return self.spec.cam_method

    def predict(self, grays: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None) -> list[Prediction]:
        """H×W uint8 films (any size) → one Prediction each, from one forward pass.

        `lung_masks` (bool, any resolution, one per film, in the film's frame): each film's lung focus
        is scored against its mask, and lung-crop models crop with it; a lung-crop model given none
        makes them with the Predictor's segmenter. Without masks a full-film model gives no lung focus.
        """
        if not grays:
            return []
        masks = self.lung_masks(grays, lung_masks)
        boxes = [lung_box(m, self.crop_margin) for m in masks] if masks is not None and self.needs_lung_mask else None
        inputs = [crop(g, b) for g, b in zip(grays, boxes, strict=True)] if boxes is not None else list(grays)
        x = to_model_input(inputs, self.input_size, self.mean, self.std, self.intensity)
        out = self._cam(x)
        logits = out.logits + self._mask
        probs = torch.softmax(logits, dim=1)
        raw = out.raw.float().numpy().astype(np.float32)
        pooled = out.pooled.numpy().astype(np.float32) if out.pooled is not None else None
        results = []
        for i in range(len(grays)):
            box = boxes[i] if boxes is not None else None
            results.append(
                Prediction(
                    probabilities={c: float(v) for c, v in zip(CLASSES, probs[i].tolist(), strict=True)},
                    predicted_class=CLASSES[int(probs[i].argmax())],
                    logits=[float(v) for v in out.logits[i].tolist()],
                    cam_method=out.method,
                    cam_raw=raw[i],
                    cam_identity=out.identity,
                    input_box=box,
                    lung_focus=lung_focus_by_class(raw[i], masks[i], box=box) if masks is not None else None,
                    pooled=pooled[i] if pooled is not None else None,
                    error_risk_reason=self.risk_reason,
                )
            )
        if self.risk is not None and pooled is not None:
            self._add_risk(results, logits.numpy(), pooled, masks)
        return results

    def _add_risk(
        self, results: list[Prediction], logits: np.ndarray, pooled: np.ndarray, masks: list[np.ndarray] | None
    ) -> None:
        """Each Prediction's signals, error risk and warnings (the checkpoint's risk model)."""
        assert self.risk is not None
        lung = None
        if masks is not None:
            lung = []
            for p, mask in zip(results, masks, strict=True):
                focus = p.predicted_lung_focus
                lung.append((focus.meaningful, focus.lung_area, mask) if focus is not None else None)
        signals = signals_for(logits, pooled, self.risk.stats, self.risk.temperature, lung=lung)
        risks = self.risk.error_risk(signals)
        for p, s, r in zip(results, signals, risks, strict=True):
            p.signals, p.error_risk, p.error_risk_reason = s, float(r), None
            p.warnings = self.risk.warnings(s, float(r))

    def predict_one(self, gray: np.ndarray, lung_mask: np.ndarray | None = None) -> Prediction:
        return self.predict([gray], None if lung_mask is None else [lung_mask])[0]


@dataclass
class FilmResult:
    """Everything the results of one film need, for the models it was run with."""

    lung_mask: np.ndarray | None
    """256×256 bool, in the film's frame squashed to a square; None: run without a segmenter."""
    lungseg_sha256: str | None
    """Checkpoint sha256 of the segmenter that made `lung_mask`."""
    predictions: list[Prediction]
    """One per predictor, in the order given."""


def analyze_films(
    grays: Sequence[np.ndarray], predictors: Sequence[Predictor], segmenter: LungSegmenter | None
) -> list[FilmResult]:
    """The per-film pipeline: H×W uint8 films → one FilmResult each.

    Each film is segmented once (when a segmenter is given) and its mask is shared by every model: it
    scores each class's lung focus and is what lung-crop models crop with. Each model runs one forward
    pass over the whole batch, which gives its probabilities and the CAMs of all four classes.
    Without a segmenter there is no lung mask and no lung focus, and a lung-crop model segments with
    its own segmenter.
    """
    masks = [segmenter.predict_small(g) for g in grays] if segmenter is not None else None
    per_model = [p.predict(grays, masks) for p in predictors]
    sha = segmenter.checkpoint_sha256 if segmenter is not None else None
    return [
        FilmResult(
            lung_mask=masks[i] if masks is not None else None,
            lungseg_sha256=sha,
            predictions=[predictions[i] for predictions in per_model],
        )
        for i in range(len(grays))
    ]


def analyze_film(gray: np.ndarray, predictors: Sequence[Predictor], segmenter: LungSegmenter | None) -> FilmResult:
    """`analyze_films` for one film."""
    return analyze_films([gray], predictors, segmenter)[0]
