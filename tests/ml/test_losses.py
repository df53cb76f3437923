"""The partial-label loss against values computed by hand, and its class weighting."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ml import CLASSES
from ml.losses import PartialLabelLoss, class_weights
from ml.model_io import class_mask

PNEUMONIA = len(CLASSES)  # the target index of the partial label 'pneumonia' (bacterial or viral)


def probs(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_class_weights_count_pneumonia_as_its_own_group() -> None:
    labels = np.array([0, 0, 1, 3, 3, 3, PNEUMONIA, PNEUMONIA, PNEUMONIA, PNEUMONIA])  # no viral film
    # N = 10 rows in G = 4 groups (normal, bacterial, covid19, pneumonia): N / (G · n_g)
    expected = [10 / (4 * 2), 10 / (4 * 1), 0.0, 10 / (4 * 3), 10 / (4 * 4)]
    torch.testing.assert_close(class_weights(labels, CLASSES, "inverse-frequency"), torch.tensor(expected))
    torch.testing.assert_close(class_weights(labels, CLASSES, "none"), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    # s1 trains neither bacterial nor pneumonia: N = 5 rows in 2 groups
    torch.testing.assert_close(
        class_weights(labels, ("normal", "covid19"), "inverse-frequency"),
        torch.tensor([5 / (2 * 2), 0.0, 0.0, 5 / (2 * 3), 0.0]),
    )


def test_partial_label_loss_equals_the_hand_computed_weighted_mean() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 1.2, 0.3, -0.5], [-0.3, 0.2, 0.9, 1.5]])
    targets = torch.tensor([0, PNEUMONIA, 3])
    weight = torch.tensor([0.5, 1.0, 1.0, 2.0, 3.0])
    p = [probs(r) for r in logits.tolist()]
    row = [-math.log(p[0][0]), -math.log(p[1][1] + p[1][2]), -math.log(p[2][3])]
    w = [0.5, 3.0, 2.0]
    expected = sum(wi * li for wi, li in zip(w, row, strict=True)) / sum(w)
    loss = PartialLabelLoss(CLASSES, weight)(logits, targets)
    assert abs(loss.item() - expected) < 1e-6

    # label smoothing eps touches the full-label rows only: (1 - eps)·nll + eps·mean_k(-log p_k)
    eps = 0.1
    smoothed = list(row)
    for i in (0, 2):
        smoothed[i] = (1 - eps) * row[i] + eps * sum(-math.log(v) for v in p[i]) / len(CLASSES)
    expected_smooth = sum(wi * li for wi, li in zip(w, smoothed, strict=True)) / sum(w)
    loss_smooth = PartialLabelLoss(CLASSES, weight, label_smoothing=eps)(logits, targets)
    assert abs(loss_smooth.item() - expected_smooth) < 1e-6


def test_without_partial_labels_it_is_torchs_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 4), torch.randint(0, 4, (16,))
    weight = torch.tensor([0.5, 2.0, 1.5, 1.0, 0.0])
    ours = PartialLabelLoss(CLASSES, weight)(logits, targets)
    torch.testing.assert_close(ours, nn.functional.cross_entropy(logits, targets, weight=weight[:4]))


def test_s1_ignores_rows_it_does_not_train_and_gradients_stay_finite() -> None:
    active = ("normal", "covid19")
    logits = torch.tensor([[1.0, 0.3, -0.2, 0.4], [0.0, 2.0, 1.0, -1.0], [0.2, 0.1, 0.0, 0.7]]) + class_mask(active)
    logits.requires_grad_(True)
    targets = torch.tensor([0, PNEUMONIA, 1])  # the pneumonia and bacterial rows are not s1's
    weights = class_weights(np.array([0, 3, 3]), active, "inverse-frequency")
    loss = PartialLabelLoss(active, weights)(logits, targets)
    p = probs([1.0, 0.4])  # softmax over the two active columns of row 0
    assert abs(loss.item() + math.log(p[0])) < 1e-6
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[1:].abs().sum() == 0
