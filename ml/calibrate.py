"""Fit a checkpoint's error-risk calibration (`ml.risk`) on its own data: `cxr-review calibrate CHECKPOINT`.

Two passes through the per-film pipeline (`ml.inference`), nothing trained by gradient:
1. the **train** split, forward only (no lung segmentation for full-film models): the pooled features of
   the training films give the feature statistics (mean, principal directions, class means, shared
   shrunk covariance; `ml.risk.FeatureStats`);
2. the **validation** split, with lung masks, as a film is scored in the service: the temperature
   (NLL over the 4-class rows), the signals, the error-risk logistic regression (wrong = the predicted
   class is not the label, or not one of a partial label's candidates) and the warnings' cut-offs.

Cut-offs (`fit_thresholds`), all chosen on validation films only:
- `relative_distance` (out_of_distribution): the (1 − `ood_share`) quantile of the right predictions'
  relative Mahalanobis distance (default: 5 % of right validation calls warned by it); `distance`, the
  same quantile of their plain distance to the class mean, is kept beside it (the rule of sections
  fitted before the relative distance, and what `evaluate` can compare it with);
- `focus_ratio` (outside_lungs): the `focus_share` quantile of the right predictions' lung focus ratio
  (default 3 %);
- `risk` (low_confidence): the lowest error-risk cut-off at which all warnings together mark at most
  `target_right_share` of the right validation predictions (default 20 %);
- not_frontal_chest_xray: a lung mask of two parts (a frontal film shows two lungs), and margins around
  the range of every validation film (all are frontal chest films): two-largest-parts share ≥ its 0.5 %
  quantile − 0.01, layout ≥ ½ · its 0.5 % quantile, lung area within [½ · its 0.5 % quantile,
  min(0.9, 1.5 · its 99.5 % quantile)], balance ≥ ½ · its 0.5 % quantile, fill ≥ ½ · its 0.5 %
  quantile, and ood_distance / feature_residual below
  `CHEST_MARGIN` × their maxima over the validation films.

Which inputs the regression uses is chosen on validation too, by 5-fold cross-validation
(`select_inputs`) among three nested models: confidence alone (max probability and entropy), confidence and
the class called (`predicted_*`), and every input (signs enforced). The fit in-sample always looks at
least as good with more inputs; out of fold it need not. Each set is scored by its mean AUROC over the
folds, and the smallest set within one standard error of the best is kept (the one-standard-error rule,
Hastie, Tibshirani & Friedman, *Elements of Statistical Learning* §7.10): with ~100 wrong validation calls a
few inputs of pure noise can gain a point or two of AUROC by chance, and a fixed margin cannot tell that
from a real gain; the folds' own spread can.

The result is written into the checkpoint's meta (`risk`), atomically, weights untouched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ml import CLASSES
from ml.checkpoints import RiskMeta, code_version, now_iso, read_checkpoint, write_checkpoint
from ml.data import Record, get_scenario, is_full_label, manifest_sha256, read_manifests, select, target_matches
from ml.inference import Prediction, Predictor, analyze_films
from ml.lungseg import LungSegmenter
from ml.metrics import auroc, expected_calibration_error
from ml.model_io import class_mask
from ml.risk import (
    RISK_INPUTS,
    RISK_SIGNS,
    FeatureStats,
    Signals,
    Thresholds,
    error_risk,
    fit_logistic,
    fit_temperature,
    input_matrix,
    scaled_probabilities,
    signals_for,
    standardise,
    warnings_for,
)
from ml.transforms import load_grayscale

TARGET_RIGHT_SHARE = 0.20
OOD_SHARE = 0.05
FOCUS_SHARE = 0.03
CHEST_MARGIN = 1.5


def run_films(
    predictor: Predictor, records: Sequence[Record], segmenter: LungSegmenter | None, batch_size: int
) -> tuple[list[Record], list[Prediction], list[np.ndarray | None]]:
    """The readable films of `records` through the per-film pipeline: (records, predictions, lung masks)."""
    kept: list[Record] = []
    predictions: list[Prediction] = []
    masks: list[np.ndarray | None] = []
    for start in range(0, len(records), batch_size):
        films = []
        for r in records[start : start + batch_size]:
            try:
                films.append(load_grayscale(str(r.path)))
                kept.append(r)
            except (OSError, ValueError, SyntaxError):
                continue
        for film in analyze_films(films, [predictor], segmenter):
            predictions.append(film.predictions[0])
            masks.append(film.lung_mask)
    return kept, predictions, masks


def masked_logits(predictions: Sequence[Prediction], active: tuple[str, ...]) -> np.ndarray:
    mask = class_mask(active).numpy()
    return np.array([p.logits for p in predictions], dtype=np.float64) + mask


def lung_inputs(
    predictions: Sequence[Prediction], masks: Sequence[np.ndarray | None]
) -> list[tuple[float | None, float, np.ndarray] | None]:
    out: list[tuple[float | None, float, np.ndarray] | None] = []
    for p, m in zip(predictions, masks, strict=True):
        f = p.predicted_lung_focus
        out.append((f.meaningful, f.lung_area, m) if f is not None and m is not None else None)
    return out


def _quantile(values: Sequence[float | None], q: float, default: float) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.quantile(v, q)) if v else default


def fit_thresholds(
    signals: Sequence[Signals],
    risks: np.ndarray,
    wrong: np.ndarray,
    *,
    target_right_share: float = TARGET_RIGHT_SHARE,
    ood_share: float = OOD_SHARE,
    focus_share: float = FOCUS_SHARE,
) -> Thresholds:
    """The warnings' cut-offs from validation films (module docstring)."""
    right = [s for s, w in zip(signals, wrong, strict=True) if not w]
    areas = [s.lung_area for s in signals]
    partial = Thresholds(
        risk=1.0 + 1e-9,
        distance=_quantile([s.class_distance for s in right], 1 - ood_share, np.inf),
        relative_distance=(
            _quantile([s.relative_distance for s in right], 1 - ood_share, np.inf)
            if any(s.relative_distance is not None for s in signals)
            else None
        ),
        focus_ratio=_quantile([s.lung_focus_ratio for s in right], focus_share, 0.0),
        lung_area_min=0.5 * _quantile(areas, 0.005, 0.0),
        lung_area_max=min(0.9, CHEST_MARGIN * _quantile(areas, 0.995, 0.6)),
        lung_balance_min=0.5 * _quantile([s.lung_balance for s in signals], 0.005, 0.0),
        lung_fill_min=0.5 * _quantile([s.lung_fill for s in signals], 0.005, 0.0),
        lung_two_share_min=_quantile([s.lung_two_share for s in signals], 0.005, 0.0) - 0.01,
        lung_layout_min=0.5 * _quantile([s.lung_layout for s in signals], 0.005, 0.0),
        chest_distance=CHEST_MARGIN * max(s.ood_distance for s in signals),
        chest_residual=min(1.0, CHEST_MARGIN * max(s.feature_residual for s in signals)),
    )
    right_idx = np.flatnonzero(~wrong)
    if len(right_idx) == 0:
        return replace(partial, risk=0.5)
    other = np.array([bool(warnings_for(signals[int(i)], 0.0, partial)) for i in right_idx])
    right_risks = risks[right_idx]
    best = 1.0 + 1e-9
    for cut in np.unique(np.concatenate([right_risks, risks]))[::-1]:
        share = float(np.mean(other | (right_risks >= cut)))
        if share > target_right_share:
            break
        best = float(cut)
    return replace(partial, risk=best)


CONFIDENCE_INPUTS = ("max_prob", "entropy")
CLASS_INPUTS = tuple(name for name in RISK_INPUTS if name.startswith("predicted_"))
CV_FOLDS = 5


def _fit_subset(z: np.ndarray, y: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, float]:
    """fit_logistic on the `keep` columns of standardised inputs; the others' coefficients are 0."""
    coef = np.zeros(z.shape[1])
    sub, intercept = fit_logistic(z[:, keep], y, signs=[s for s, k in zip(RISK_SIGNS, keep, strict=True) if k])
    coef[keep] = sub
    return coef, intercept


def select_inputs(z: np.ndarray, wrong: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Which inputs the error-risk regression keeps (a bool mask over RISK_INPUTS): `CV_FOLDS`-fold
    cross-validation on the validation films `z` (standardised), each candidate scored by its folds' mean
    AUROC; the smallest candidate within one standard error of the best is kept (module docstring).
    Returns the mask and the figures."""
    candidates = {  # smallest first
        "confidence": np.array([name in CONFIDENCE_INPUTS for name in RISK_INPUTS]),
        "confidence+class": np.array([name in CONFIDENCE_INPUTS + CLASS_INPUTS for name in RISK_INPUTS]),
        "all": np.ones(len(RISK_INPUTS), bool),
    }
    folds = np.random.default_rng(seed).permutation(len(z)) % CV_FOLDS
    means: dict[str, float] = {}
    errors: dict[str, float] = {}
    for name, keep in candidates.items():
        scores = []
        for k in range(CV_FOLDS):
            train, test = folds != k, folds == k
            if wrong[train].all() or not wrong[train].any():
                score = None
            else:
                coef, intercept = _fit_subset(z[train], wrong[train].astype(np.float64), keep)
                score = auroc(z[test] @ coef + intercept, wrong[test])
            scores.append(0.5 if score is None else score)  # a fold with nothing to tell apart: chance
        means[name] = float(np.mean(scores))
        errors[name] = float(np.std(scores, ddof=1) / np.sqrt(CV_FOLDS))
    best = max(means, key=lambda name: means[name])
    chosen = next(name for name in candidates if means[name] >= means[best] - errors[best])
    figures = {"chosen": chosen, "cv_auroc": means, "cv_auroc_se": errors, "folds": CV_FOLDS, "rule": "one-se"}
    return candidates[chosen], figures


def warned_shares(warned: np.ndarray, wrong: np.ndarray) -> dict[str, float | None]:
    return {
        "wrong_warned": float(warned[wrong].mean()) if wrong.any() else None,
        "right_warned": float(warned[~wrong].mean()) if (~wrong).any() else None,
    }


def calibrate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data_dirs: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    lungseg_checkpoint: str | os.PathLike[str] | None = None,
    target_right_share: float = TARGET_RIGHT_SHARE,
    ood_share: float = OOD_SHARE,
    focus_share: float = FOCUS_SHARE,
    log: Any = None,
) -> RiskMeta:
    """Fit the risk section of `checkpoint` on the train and val splits of `data_dirs` and write the
    checkpoint (to `out`, default in place) with it. Returns the section (its `fit` holds the figures)."""
    for name, share in (
        ("target right share", target_right_share),
        ("ood share", ood_share),
        ("focus share", focus_share),
    ):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    say = log or (lambda text: None)
    started = time.monotonic()
    segmenter = LungSegmenter.from_checkpoint(lungseg_checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, segmenter=segmenter)
    predictor.risk = None  # the raw pass only: a previous calibration is replaced, not used
    meta = predictor.meta
    scenario = get_scenario(meta.scenario or "s2")
    dirs = [str(d) for d in data_dirs]
    records = read_manifests(dirs)
    seed = int(meta.train_config.get("seed", 0) or 0)
    train_records, val_records = select(records, scenario, "train", seed=seed), select(records, scenario, "val")
    if not train_records or not val_records:
        raise ValueError(f"calibration needs train and val films of {', '.join(meta.active_classes)} in {dirs}")
    say(f"calibrating on {len(train_records)} train and {len(val_records)} val films")
    train_kept, train_pred, _ = run_films(predictor, train_records, None, batch_size)
    features = np.stack([p.pooled for p in train_pred if p.pooled is not None])
    labels = [r.label_index if is_full_label(r.label_index) else -1 for r in train_kept]
    stats = FeatureStats.fit(features, labels)
    say(f"train pass done ({time.monotonic() - started:.0f} s)")

    val_kept, val_pred, val_masks = run_films(predictor, val_records, segmenter, batch_size)
    logits = masked_logits(val_pred, meta.active_classes)
    targets = np.array([r.label_index for r in val_kept])
    predicted = np.array([CLASSES.index(p.predicted_class) for p in val_pred])
    wrong = np.array([not target_matches(int(t), int(k)) for t, k in zip(targets, predicted, strict=True)])
    full = np.array([is_full_label(int(t)) for t in targets])
    temperature = fit_temperature(logits[full], targets[full])
    signals = signals_for(
        logits,
        np.stack([p.pooled for p in val_pred if p.pooled is not None]),
        stats,
        temperature,
        lung=lung_inputs(val_pred, val_masks),
    )
    x = input_matrix(signals)
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    mean, std = np.nan_to_num(mean, nan=0.0), np.nan_to_num(std, nan=1.0)
    selection: dict[str, Any] | None = None
    if wrong.any() and (~wrong).any():
        z = standardise(x, mean, std)
        keep, selection = select_inputs(z, wrong)
        coef, intercept = _fit_subset(z, wrong.astype(np.float64), keep)
    else:  # nothing to tell apart: the validation error rate for every film
        rate = float(np.clip(wrong.mean(), 1e-3, 1 - 1e-3))
        coef, intercept = np.zeros(len(RISK_INPUTS)), float(np.log(rate / (1 - rate)))
    risks = error_risk(x, mean, std, coef, intercept)
    thresholds = fit_thresholds(
        signals, risks, wrong, target_right_share=target_right_share, ood_share=ood_share, focus_share=focus_share
    )
    warned = np.array([bool(warnings_for(s, float(r), thresholds)) for s, r in zip(signals, risks, strict=True)])
    confidence_raw = scaled_probabilities(logits, 1.0).max(axis=1)
    fit: dict[str, Any] = {
        "train_films": len(train_kept),
        "val_films": len(val_kept),
        "val_wrong": int(wrong.sum()),
        "val_auroc_error_risk": auroc(risks, wrong),
        "val_auroc_max_prob": auroc(-confidence_raw, wrong),
        "val_ece_before": expected_calibration_error(confidence_raw[full], ~wrong[full]),
        "val_ece_after": expected_calibration_error(
            scaled_probabilities(logits, temperature).max(1)[full], ~wrong[full]
        ),
        "val_warned": warned_shares(warned, wrong),
        "input_selection": selection,
        "settings": {
            "target_right_share": target_right_share,
            "ood_share": ood_share,
            "focus_share": focus_share,
            "components": len(stats.components),
        },
        "manifests": [{"data_dir": str(Path(d).resolve()), "sha256": manifest_sha256(d)} for d in dirs],
        "lungseg_sha256": segmenter.checkpoint_sha256,
        "code_version": code_version(),
        "created_at": now_iso(),
        "seconds": round(time.monotonic() - started, 1),
    }
    risk = RiskMeta(
        temperature=temperature,
        feature_mean=stats.mean.tolist(),
        feature_components=stats.components.tolist(),
        class_means={c: stats.class_means[j].tolist() for j, c in enumerate(stats.class_names)},
        precision=stats.precision.tolist(),
        background_precision=stats.background_precision.tolist() if stats.background_precision is not None else [],
        inputs=list(RISK_INPUTS),
        input_mean=mean.tolist(),
        input_std=std.tolist(),
        coef=coef.tolist(),
        intercept=intercept,
        thresholds=thresholds.to_dict(),
        fit=fit,
    )
    stored_meta, state = read_checkpoint(checkpoint)
    write_checkpoint(out or checkpoint, replace(stored_meta, risk=risk), state)
    say(
        f"calibrated in {fit['seconds']:.0f} s: val error-risk AUROC {fit['val_auroc_error_risk']}, "
        f"warned {fit['val_warned']}"
    )
    return risk
