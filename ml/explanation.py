"""Explanation-guided training: penalise the true class's evidence outside the film's allowed region.

The loss. For a training film with target y, a class map M_c (h×w, the network's own map definition,
see `class_maps`) and the film's allowed region R (S×S, see `allowed_masks`), area-averaged down to the
map's grid (cover[i, j] = the share of cell (i, j) that is allowed, as `ml.lung_focus` scores it):

    E = Σ_{c ∈ cand(y)} relu(M_c)            the positive evidence for the true class
    share_out = Σ E·(1 − cover) / (Σ E + ε)  its share outside the allowed region, in [0, 1)

with ε = 1 % of the maps' absolute mass Σ_{c ∈ cand(y)} Σ |M_c| (held constant): a map with almost no
positive evidence is neither penalised nor given a gradient blown up by a vanishing denominator.

cand(y) is {y} for a class label and the candidates for a partial label (`pneumonia`: bacterial and
viral, so evidence for either organism counts). The batch term is the mean share_out over the rows the
scenario trains; the training loss is classification + λ · that mean (`TrainConfig.explanation_weight`).
share_out is 1 − the lung-focus score of the true class's map against R, so the quantity trained is the
one `cxr-review evaluate` reports (there for the predicted class and the plain lung mask).

The allowed region is the film's lung mask from the bundled segmenter (computed once per film and
cached with the decoded images, `ml.data.load_images`), dilated by `margin` × the input side so hila
and lung borders count, plus reviewers' "finding" boxes, minus their "wrong evidence" boxes (forbidden
even inside the lungs: a device or a marker over a lung is still not a reason). It is made at the
input's resolution and goes through the same random affine as the image (`ml.data.XrayDataset`), then
is resized to the map's grid inside the loss.

The maps come from the same forward pass as the logits (the network returns its feature map A beside
them, `FeaturesAndLogits`), by each family's own definition, differentiably:
- CAM (GAP + linear head): M_c = Σ_u w_{c,u} A_u, one extra matrix product per batch (SqueezeNet: its
  class-score map relu(conv1×1(A)));
- CNN-X's exact linear decomposition: M_c = Σ_k W_{c,k,y,x} A_{k,y,x};
- Grad-CAM (AlexNet, VGG): M_c = relu(Σ_k α_{c,k} A_k) with α = mean ∂logit_c/∂A, differentiated
  through α as well (create_graph: a double backward through the head only, not the whole network).

Which published method this follows. Right for the Right Reasons (Ross et al. 2017) penalises the input
gradient of the log-probabilities in annotated irrelevant regions: it needs a double backward through
the whole network per batch, and input gradients on X-rays are pixel-level noise, not the maps
reviewers see. GAIN (Li et al. 2018) trains attention maps by "attention mining" (a second forward pass
on the image with the attended region erased, minimising the class score there) and, with pixel
labels, a direct loss between the map and the mask (GAIN_ext); it needs that second pass and pushes the
map to cover the whole mask. ISNet (Bassi et al. 2024) minimises the share of a heat map's relevance
that lies in the background of a segmentation mask, on chest X-rays, and showed it removes background
shortcuts; it uses LRP maps (one relevance pass per class). This loss follows ISNet: a background-
relevance share minimised against lung masks, but on the network's own CAM instead of LRP, because
the CAM is what the product shows reviewers and scores as lung focus, it is linear in the last feature
map (no extra pass), and it lets reviewers' boxes enter the same term. Unlike GAIN_ext it does not ask
the evidence to fill the lungs, only not to lie outside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml import CLASSES
from ml.architectures import CXRNet
from ml.data import LABELS, PARTIAL_LABELS, LoadedImages, Region, scenario_labels
from ml.lung_crop import Box
from ml.registry import ArchSpec

RELATIVE_EPS = 0.01
"""ε of the share's denominator, as a fraction of the candidate maps' absolute mass (module docstring)."""


# --------------------------------------------------------------------------- allowed regions
def dilate(masks: np.ndarray, radius: int, *, chunk: int = 256) -> np.ndarray:
    """N×S×S bool masks dilated by a disk of `radius` pixels (exact; FFT convolution, `chunk` films at a time)."""
    if radius <= 0 or len(masks) == 0:
        return masks.astype(bool, copy=True)
    n, h, w = masks.shape
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = torch.from_numpy(((yy**2 + xx**2) <= radius * radius).astype(np.float32))
    size = (h + 2 * radius, w + 2 * radius)
    kernel = torch.fft.rfft2(disk, s=size)
    out = np.empty((n, h, w), dtype=bool)
    for start in range(0, n, chunk):
        x = torch.from_numpy(masks[start : start + chunk].astype(np.float32))
        counts = torch.fft.irfft2(torch.fft.rfft2(x, s=size) * kernel, s=size)
        out[start : start + chunk] = (counts[:, radius : radius + h, radius : radius + w] > 0.5).numpy()
    return out


def film_to_frame(region: Region, frame: Box | None) -> Box | None:
    """A region's box (fractions of the film) in the frame of the image the network sees (the film, or its
    lung crop `frame`); None when it lies wholly outside that frame."""
    x0, y0, x1, y1 = region.box
    if frame is None:
        return Box(y0, x0, y1, x1)
    fh, fw = frame.bottom - frame.top, frame.right - frame.left
    top, bottom = max(0.0, (y0 - frame.top) / fh), min(1.0, (y1 - frame.top) / fh)
    left, right = max(0.0, (x0 - frame.left) / fw), min(1.0, (x1 - frame.left) / fw)
    return Box(top, left, bottom, right) if top < bottom and left < right else None


def allowed_masks(loaded: LoadedImages, margin: float) -> np.ndarray:
    """N×S×S bool: where each film's evidence may lie (see the module docstring), in the images' frame.

    Needs `loaded.lung_masks` (load the films with a segmenter). Regions are taken from each record's
    `regions` (reviewers' boxes, fractions of the film), mapped into the lung crop for lung-crop films.
    """
    if loaded.lung_masks is None:
        raise ValueError("the explanation loss needs lung masks: load the films with a lung segmenter")
    size = loaded.images.shape[-1]
    allowed = dilate(loaded.lung_masks, round(margin * size))
    frames = loaded.boxes or [None] * len(loaded.records)
    for i, (record, frame) in enumerate(zip(loaded.records, frames, strict=True)):
        # findings first, then wrong evidence: where the two overlap, forbidden wins
        for region in sorted(record.regions, key=lambda g: g.kind != "finding"):
            box = film_to_frame(region, frame)
            if box is not None:
                y0, x0, y1, x1 = box.pixels(size, size)
                allowed[i, y0:y1, x0:x1] = region.kind == "finding"
    return allowed


def region_counts(records: Sequence[object]) -> dict[str, int]:
    """How many films carry reviewer regions, and how many boxes of each kind."""
    regions = [tuple(getattr(r, "regions", ())) for r in records]
    flat = [g for rs in regions for g in rs]
    return {
        "films": sum(1 for rs in regions if rs),
        "wrong_evidence": sum(1 for g in flat if g.kind == "wrong_evidence"),
        "finding": sum(1 for g in flat if g.kind == "finding"),
    }


# --------------------------------------------------------------------------- maps and the loss
class FeaturesAndLogits(nn.Module):
    """A `CXRNet` whose forward returns (feature map A, logits): one pass, both outputs (wrap this, not the
    bare network, in DistributedDataParallel so gradients still synchronise)."""

    def __init__(self, net: CXRNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.net.forward_features(x)
        return a, self.net.forward_head(a)


def class_maps(net: CXRNet, spec: ArchSpec, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """B×K×h×w maps of every class, differentiable, by the family's own definition (module docstring).

    `logits` must come from `net.forward_head(features)` in the same graph (Grad-CAM differentiates them)."""
    if spec.cam_method == "gradcam":
        maps = []
        for c in range(logits.shape[1]):
            (grad,) = torch.autograd.grad(logits[:, c].sum(), features, create_graph=True, retain_graph=True)
            maps.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1)))
        return torch.stack(maps, dim=1)
    head = net.get_submodule(spec.classifier)
    if spec.cam_method == "linear-decomposition" and isinstance(head, nn.Linear):
        c, h, w = features.shape[1:]
        return torch.einsum("kchw,bchw->bkhw", head.weight.view(head.out_features, c, h, w), features)
    if spec.cam_method == "cam" and isinstance(head, nn.Linear):
        return torch.einsum("kc,bchw->bkhw", head.weight, features)
    if spec.cam_method == "cam" and isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1):
        return torch.relu(head(features))
    raise ValueError(f"{spec.name}: no explanation maps for a {spec.cam_method} net with a {type(head).__name__} head")


class ExplanationLoss(nn.Module):
    """`forward(maps, allowed, targets)`: the mean share of the true class's positive evidence outside the
    allowed region (module docstring). maps B×K×h×w (K = len(CLASSES)), allowed B×1×S×S (0/1, any dtype),
    targets B target indices (`Record.label_index`). A scalar in [0, 1]; 0 when no row is trained."""

    candidates: torch.Tensor

    def __init__(self, active: tuple[str, ...]) -> None:
        super().__init__()
        trained = scenario_labels(active)
        cand = torch.zeros((len(LABELS), len(CLASSES)))
        for t, label in enumerate(LABELS):
            if label in trained:
                for c in PARTIAL_LABELS.get(label, (label,)):
                    cand[t, CLASSES.index(c)] = 1.0
        self.register_buffer("candidates", cand)

    def shares(self, maps: torch.Tensor, allowed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """B shares outside the allowed region (NaN for rows the scenario does not train)."""
        cover = F.adaptive_avg_pool2d(allowed.float(), (maps.shape[-2], maps.shape[-1]))[:, 0]
        sel = self.candidates[targets]
        maps = maps.float() * sel[:, :, None, None]
        evidence = torch.relu(maps).sum(1)
        eps = RELATIVE_EPS * maps.detach().abs().sum((1, 2, 3)) + 1e-12
        share = (evidence * (1.0 - cover)).sum((1, 2)) / (evidence.sum((1, 2)) + eps)
        return torch.where(sel.any(1), share, torch.full_like(share, math.nan))

    def forward(self, maps: torch.Tensor, allowed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        share = self.shares(maps, allowed, targets)
        trained = ~share.isnan()
        return share[trained].mean() if bool(trained.any()) else (maps * 0.0).sum()


@dataclass
class ExplainedObjective:
    """classification + λ · explanation, from one forward pass of a `FeaturesAndLogits` network."""

    net: CXRNet
    spec: ArchSpec
    criterion: nn.Module
    explanation: ExplanationLoss
    weight: float
    shares: list[float] = field(default_factory=list)
    """Each step's mean share outside, since the last `take_mean_share`."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The total loss of a batch, for `model` = FeaturesAndLogits(net) (maybe DDP-wrapped)."""
        features, logits = model(x)
        share = self.explanation(class_maps(self.net, self.spec, features, logits), allowed, y)
        self.shares.append(float(share.detach()))
        return self.criterion(logits, y) + self.weight * share

    def take_mean_share(self) -> float | None:
        """The mean share outside over the steps since the last call (None if none), and start anew."""
        mean = float(np.mean(self.shares)) if self.shares else None
        self.shares.clear()
        return mean
