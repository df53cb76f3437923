"""The training loss: class-weighted cross-entropy with partial labels.

Targets are `Record.label_index` values: 0..3 for the four CLASSES, `len(CLASSES) + k` for the k-th
partial label of `ml.data.PARTIAL_LABELS` (`pneumonia` = "bacterial or viral").

Per row i, with log p the log-softmax over the scenario's active classes only (the other logits are
dropped, so an inactive class never gets probability mass, weight or smoothing):

- a full-label row of class y: the cross-entropy −log p_y, label-smoothed with ε as torch does it,
  (1 − ε)·(−log p_y) + ε·mean_k(−log p_k) over the K active classes;
- a partial-label row: −log Σ_{c ∈ candidates} p_c (for `pneumonia`, −log(p_bacterial + p_viral)),
  computed as −logsumexp of the candidates' log p. It is never smoothed: smoothing would put mass on
  classes the label rules out (normal, COVID-19).

Class weighting ("inverse-frequency"): the groups are each active class present in the training rows
plus each partial label present (its own group, e.g. all `pneumonia` rows). With N training rows in
G groups, a group with n_g rows weighs N / (G · n_g), so every group contributes equally on average;
"none" weighs every present group 1. The batch loss is the weighted mean Σ w_i·loss_i / Σ w_i, as in
torch's weighted cross-entropy (identical to it when there are no partial labels and ε = 0). Rows
whose target the scenario does not train (e.g. a bacterial film under s1) weigh 0 and are ignored.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ml import CLASSES
from ml.data import LABELS, PARTIAL_LABELS, scenario_labels


def class_weights(labels: np.ndarray, active: tuple[str, ...], how: str) -> torch.Tensor:
    """One weight per target index (`len(LABELS)` values) from the training targets (see module doc).

    A group absent from `labels`, or not trained by the scenario, weighs 0.
    """
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64)
    trained = scenario_labels(active)
    present = [LABELS.index(g) for g in trained if counts[LABELS.index(g)] > 0]
    total = counts[present].sum()
    weights = np.zeros(len(LABELS))
    for i in present:
        weights[i] = 1.0 if how == "none" else total / (len(present) * counts[i])
    return torch.tensor(weights, dtype=torch.float32)


class PartialLabelLoss(nn.Module):
    """Weighted, optionally label-smoothed cross-entropy over a scenario's classes, with partial labels.

    `forward(logits, targets)`: logits B×len(CLASSES) (masked or not: inactive columns are dropped),
    targets B target indices; returns the weighted mean loss (a scalar; 0 when every row weighs 0).
    """

    index: torch.Tensor
    allowed: torch.Tensor
    full: torch.Tensor
    weight: torch.Tensor

    def __init__(self, active: tuple[str, ...], weight: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        index = [CLASSES.index(c) for c in CLASSES if c in active]
        columns = [CLASSES[i] for i in index]
        # allowed[t, k]: active column k is a class target t may be (one-hot for a class, several for a
        # partial label, none for a target the scenario does not train)
        allowed = torch.zeros((len(LABELS), len(index)), dtype=torch.bool)
        for t, label in enumerate(LABELS):
            candidates = PARTIAL_LABELS.get(label, (label,))
            if set(candidates) <= set(columns):
                for c in candidates:
                    allowed[t, columns.index(c)] = True
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        self.register_buffer("allowed", allowed)
        self.register_buffer("full", torch.tensor([label in CLASSES for label in LABELS]))
        self.register_buffer("weight", weight.float() * allowed.any(1))
        self.label_smoothing = label_smoothing

    def row_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of every row (0 for rows the scenario does not train)."""
        logp = torch.log_softmax(logits.index_select(1, self.index).float(), dim=1)
        allowed = self.allowed[targets]
        trained = allowed.any(1)
        # an untrained row's logsumexp over nothing would be -inf, and its gradient NaN even when masked
        allowed = allowed | ~trained.unsqueeze(1)
        nll = -torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), dim=1)
        if self.label_smoothing:
            smooth = -logp.mean(1)
            eps = self.label_smoothing * self.full[targets].float()
            nll = (1.0 - eps) * nll + eps * smooth
        return torch.where(trained, nll, torch.zeros_like(nll))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = self.weight[targets]
        total = w.sum()
        losses = self.row_losses(logits, targets)
        if total <= 0:
            return (losses * 0.0).sum()
        return (w * losses).sum() / total
