"""`LungSegmenter`: a loaded lung checkpoint that turns a grayscale film into its lung mask.

Checkpoints use the self-describing format of `ml.checkpoints` (`meta` + `state_dict`), with the
lung-segmentation kind of meta; they are not classifiers and are loaded only by `load_lung_model`
here, never by the classifier registry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ml.checkpoints import BUNDLED_DIR, CheckpointError, LungSegMeta, file_sha256, read_lungseg_checkpoint
from ml.lungseg.model import (
    ARCH_NAME,
    LungUNet,
    build_lung_model,
    fuse_for_inference,
    standardize,
)
from ml.transforms import resize_square

BUNDLED_LUNGSEG = BUNDLED_DIR / "lungseg.pt"


def load_lung_model(path: str | os.PathLike[str]) -> tuple[LungUNet, LungSegMeta]:
    """Rebuild the segmentation network described in a lung checkpoint and load its weights (float32, eval)."""
    meta, state = read_lungseg_checkpoint(path)
    try:
        model = build_lung_model(meta.net)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit {ARCH_NAME}: {exc}") from exc
    return model.eval(), meta


class LungSegmenter:
    """A loaded lung checkpoint: grayscale film of any size → lung probability / mask at that size.

    `model` is the network with BatchNorm folded into its convolutions (`fuse_for_inference`).
    Read-only after construction (no hooks, no state), so one instance can serve concurrent requests.
    """

    def __init__(
        self,
        model: LungUNet,
        meta: LungSegMeta,
        *,
        checkpoint_path: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        self.model = fuse_for_inference(model).to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.meta = meta
        self.input_size = meta.input_size
        self.threshold = meta.threshold
        self.checkpoint_path = checkpoint_path
        self.checkpoint_sha256 = checkpoint_sha256

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str] | None = None) -> LungSegmenter:
        """Load `path`, or the bundled model (`ml/bundled/lungseg.pt`) when None."""
        path = Path(path or BUNDLED_LUNGSEG)
        model, meta = load_lung_model(path)
        return cls(model, meta, checkpoint_path=str(path), checkpoint_sha256=file_sha256(path))

    @staticmethod
    def _check(gray: np.ndarray) -> np.ndarray:
        gray = np.asarray(gray)
        if gray.ndim != 2 or gray.shape[0] < 1 or gray.shape[1] < 1:
            raise ValueError(f"expected a 2-D grayscale image (H×W), got shape {gray.shape}")
        if gray.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {gray.dtype}")
        return gray

    @torch.inference_mode()
    def predict_prob_small(self, gray: np.ndarray) -> np.ndarray:
        """H×W uint8 → the network's 256×256 lung probability (float32 in [0, 1]), before resizing back."""
        small = resize_square(self._check(gray), self.input_size)
        x = standardize(torch.tensor(small)[None, None]).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.model(x))[0, 0].numpy()

    @torch.inference_mode()
    def predict_prob(self, gray: np.ndarray) -> np.ndarray:
        """H×W uint8 → H×W float32 lung probability in [0, 1] (bilinear resize of the 256×256 output)."""
        gray = self._check(gray)
        prob = torch.from_numpy(self.predict_prob_small(gray))
        if prob.shape != gray.shape:
            prob = F.interpolate(prob[None, None], size=gray.shape, mode="bilinear", align_corners=False)[0, 0]
        return prob.clamp(0, 1).numpy()

    def predict(self, gray: np.ndarray) -> np.ndarray:
        """H×W uint8 → H×W bool lung mask (probability ≥ the checkpoint's threshold, 0.5)."""
        return self.predict_prob(gray) >= self.threshold

    def predict_small(self, gray: np.ndarray) -> np.ndarray:
        """H×W uint8 → the 256×256 bool lung mask in the film's frame, squashed to a square (what the
        lung-focus score and lung crops need; ~4× less work than resizing back to the film)."""
        return self.predict_prob_small(gray) >= self.threshold
