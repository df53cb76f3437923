"""Warnings that predict errors: per-film signals, the error risk and the warnings, from the one forward pass.

Signals (`Signals`), computed for every film from the pass that gives its probabilities and CAMs plus
its lung mask:

- `max_prob`, `entropy`: the largest softmax probability and the entropy (in [0, 1]: divided by
  log of the number of active classes) after temperature scaling, softmax(logits / T), T fitted on
  the validation split by negative log-likelihood (Guo et al. 2017);
- `energy`: −T · logsumexp(logits / T) over the active classes (Liu et al. 2020): low for inputs like
  the training films, higher for unfamiliar ones;
- `class_distance`, `ood_distance`: Mahalanobis distance of the film's pooled feature (the spatial
  mean of the CAM's feature map A) to the training films' mean of the predicted class, and to the
  nearest class mean, with one shared (tied) within-class covariance (Lee et al. 2018). The features
  are first projected on their P leading principal directions over the training films (P ≤ 128) and
  the covariance is shrunk towards its mean eigenvalue (`SHRINKAGE`), so it inverts stably with a
  few hundred films. Distances are divided by √P: about 1 for a typical training film;
- `relative_distance`: the squared class distance minus the squared distance to all training films
  together (one Gaussian around their mean, classes pooled, shrunk the same way), the relative
  Mahalanobis distance of Ren et al. 2021. What a new hospital's films share — their whole cloud
  moved away from the training films — raises both distances and cancels; what sets a film apart
  from the films of the class it was called stays. None for sections fitted without the background;
- `feature_residual`: the share of the centred feature's length outside those P directions (what
  the projection cannot see; large for inputs whose features point somewhere new);
- `lung_focus`, `lung_focus_ratio`: the predicted class's lung focus (`ml.lung_focus`) and its ratio
  to the chance level (the lung area share): 1 = no better than a map spread evenly;
- `lung_area`, `lung_balance`, `lung_fill`: the lung mask's area share, min/max of its left and right
  halves' lung pixels (two lungs side by side: near 1; one blob or none on one side: near 0), and the
  share of its bounding box that is lung;
- `lung_parts`, `lung_two_share`, `lung_layout`: the mask's connected parts of at least 0.5 % of the
  film (on a 64×64 grid; a frontal film: 2), the share of lung pixels in its two largest parts, and how
  side by side those two lie: horizontal minus vertical distance of their centres, in film widths
  (frontal: about 0.4; two parts one above the other, as in a film turned by 90°: negative).
  Lung signals are None without a lung mask.

`error_risk` is the estimated probability that the predicted class is wrong: a logistic regression
over standardised `RISK_INPUTS` (log distances, and which class was called), fitted on the validation
split with wrong = 1 (`fit_logistic`: L2 penalty `L2_PENALTY`, Newton steps). A missing input (no lung
mask) counts as its validation mean.

Warnings (`warnings_for`), each a `{code, message}`; the cut-offs (`Thresholds`) are fitted per model
version on its own validation films (`ml.calibrate`):
- `low_confidence` ("low confidence"): error_risk ≥ `risk`;
- `out_of_distribution` ("unlike the films this model was trained on"): relative_distance ≥
  `relative_distance`; in sections fitted before the relative distance was recorded, class_distance ≥
  `distance`;
- `outside_lungs` ("evidence mostly outside the lungs"): lung focus < 0.5 and its ratio to chance
  ≤ `focus_ratio`;
- `not_frontal_chest_xray` ("this does not look like a frontal chest X-ray"): the lung mask is not two
  lungs side by side (`lung_parts` ≠ 2, `lung_two_share` < `lung_two_share_min`, `lung_layout` <
  `lung_layout_min`), its area is outside [`lung_area_min`, `lung_area_max`], its balance below
  `lung_balance_min` or its fill below `lung_fill_min`; or ood_distance ≥ `chest_distance` or
  feature_residual ≥ `chest_residual`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from ml import CLASSES
from ml.checkpoints import RiskMeta
from ml.lung_shape import lung_parts, lung_shape

MAX_COMPONENTS = 128
SHRINKAGE = 0.1
"""Σ_shrunk = (1 − α) Σ + α · mean eigenvalue · I."""
L2_PENALTY = 1.0
"""λ of the logistic regression's penalty λ/2 · |w|² (inputs standardised; the intercept is not penalised)."""
Z_CLIP = 8.0
"""Standardised inputs are clipped to ±Z_CLIP so one absurd value cannot dominate the risk."""

NO_RISK_MODEL = "this model has no error-risk calibration (run `cxr-review calibrate` on its checkpoint)"

RISK_INPUTS = (
    "max_prob",
    "entropy",
    "energy",
    "log_class_distance",
    "log_ood_distance",
    "relative_distance",
    "feature_residual",
    "lung_focus",
    "lung_focus_ratio",
    "predicted_bacterial",
    "predicted_viral",
    "predicted_covid19",
)
"""The logistic regression's inputs, computed from `Signals` by `risk_inputs`. `predicted_<class>`: 1 when
that is the predicted class, else 0 (normal is the baseline): how often a call is wrong depends on the
class called (the bundled model's validation films: 40 % of its viral calls, 11 % of its normal and
COVID-19 calls), which confidence alone does not carry."""
RISK_SIGNS = (-1, 1, 1, 1, 1, 1, 1, -1, -1, 0, 0, 0)
"""The direction each input may push the risk: more confidence, more lung focus never raise it; more
entropy, energy, distance from the training films never lower it. An input whose fitted coefficient
has the other sign is dropped (held at 0) and the rest refitted (`fit_logistic`), so a correlation of the
validation films cannot make an unfamiliar film look safer. 0: either way (the predicted class)."""

MESSAGES = {
    "out_of_distribution": "unlike the films this model was trained on",
    "low_confidence": "low confidence",
    "outside_lungs": "evidence mostly outside the lungs",
    "not_frontal_chest_xray": "this does not look like a frontal chest X-ray",
}
"""Warning code → the plain words a reader sees."""


@dataclass(frozen=True)
class RiskWarning:
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def warning(code: str) -> RiskWarning:
    return RiskWarning(code, MESSAGES[code])


@dataclass(frozen=True)
class Signals:
    """One film's candidate signals (see the module docstring); lung signals None without a lung mask."""

    max_prob: float
    entropy: float
    energy: float
    class_distance: float
    ood_distance: float
    feature_residual: float
    relative_distance: float | None = None
    lung_focus: float | None = None
    lung_focus_ratio: float | None = None
    lung_area: float | None = None
    lung_balance: float | None = None
    lung_fill: float | None = None
    lung_parts: float | None = None
    lung_two_share: float | None = None
    lung_layout: float | None = None
    predicted_class: str | None = None
    """The class called (CLASSES); None in signals stored before it was recorded."""

    def to_dict(self) -> dict[str, float | str | None]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """The warnings' cut-offs (module docstring); fitted per model version by `ml.calibrate`."""

    risk: float
    distance: float
    focus_ratio: float
    lung_area_min: float
    lung_area_max: float
    lung_balance_min: float
    lung_fill_min: float
    lung_two_share_min: float
    lung_layout_min: float
    chest_distance: float
    chest_residual: float
    relative_distance: float | None = None
    """out_of_distribution's cut-off on `Signals.relative_distance`; None (sections fitted before it): the
    class distance's cut-off `distance` is used instead."""

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Thresholds:
        optional = {f.name for f in fields(cls) if f.default is None}
        return cls(**{f.name: float(d[f.name]) for f in fields(cls) if f.name in d or f.name not in optional})

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """B×K masked logits (−inf: inactive class) → softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T > 0 minimising the mean NLL of `labels` (class indices) under softmax(logits / T): a log-spaced
    grid over [0.05, 20], refined by golden-section search. 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = scaled_probabilities(logits, math.exp(log_t))[np.arange(len(labels)), labels]
        return float(-np.log(np.clip(p, 1e-12, None)).mean())

    grid = np.linspace(math.log(0.05), math.log(20.0), 61)
    best = int(np.argmin([nll(g) for g in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def _shrink(cov: np.ndarray) -> np.ndarray:
    p = len(cov)
    return (1 - SHRINKAGE) * cov + SHRINKAGE * (np.trace(cov) / p + 1e-12) * np.eye(p)


class FeatureStats:
    """The training films' pooled features: mean, principal directions, class means, shared precision."""

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        class_means: Mapping[str, np.ndarray],
        precision: np.ndarray,
        background_precision: np.ndarray | None = None,
    ) -> None:
        self.background_precision = None if background_precision is None else np.asarray(background_precision, float)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.class_names = [c for c in CLASSES if c in class_means]
        self.class_means = np.stack([np.asarray(class_means[c], dtype=np.float64) for c in self.class_names])
        self.precision = np.asarray(precision, dtype=np.float64)

    @classmethod
    def fit(cls, features: np.ndarray, labels: Sequence[int]) -> FeatureStats:
        """N×D training features with their class indices (CLASSES order; others, e.g. partial labels, are
        left out of the class means and the covariance but not of the mean and directions)."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        mean = x.mean(axis=0)
        centred = x - mean
        p = max(1, min(MAX_COMPONENTS, x.shape[1], x.shape[0] - 1))
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:p]
        z = centred @ components.T
        present = [k for k in range(len(CLASSES)) if (y == k).sum() > 0]
        if not present:
            raise ValueError("no training film has a class label: the feature statistics need some")
        means = {CLASSES[k]: z[y == k].mean(axis=0) for k in present}
        rows = np.isin(y, present)
        within = z[rows] - np.stack([means[CLASSES[k]] for k in y[rows]])
        cov = within.T @ within / max(int(rows.sum()) - len(present), 1)
        background = z.T @ z / max(len(z) - 1, 1)  # z is centred: the principal coordinates' origin is the mean
        return cls(mean, components, means, np.linalg.inv(_shrink(cov)), np.linalg.inv(_shrink(background)))

    @classmethod
    def from_meta(cls, risk: RiskMeta) -> FeatureStats:
        return cls(
            np.array(risk.feature_mean),
            np.array(risk.feature_components),
            {k: np.array(v) for k, v in risk.class_means.items()},
            np.array(risk.precision),
            np.array(risk.background_precision) if risk.background_precision else None,
        )

    def background_distances(self, pooled: np.ndarray) -> np.ndarray | None:
        """B×D features → B Mahalanobis distances / √P to all training films together; None without the
        background statistics."""
        if self.background_precision is None:
            return None
        z = (np.asarray(pooled, dtype=np.float64) - self.mean) @ self.components.T
        squared = np.einsum("bp,pq,bq->b", z, self.background_precision, z)
        return np.sqrt(np.clip(squared, 0, None) / len(self.components))

    def distances(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """B×D features → (B×K distances / √P to each CLASSES mean, inf for classes without one; B residual
        shares in [0, 1])."""
        centred = np.asarray(pooled, dtype=np.float64) - self.mean
        z = centred @ self.components.T
        diff = z[:, None, :] - self.class_means[None, :, :]
        squared = np.einsum("bkp,pq,bkq->bk", diff, self.precision, diff)
        dist = np.full((len(z), len(CLASSES)), np.inf)
        for j, c in enumerate(self.class_names):
            dist[:, CLASSES.index(c)] = np.sqrt(np.clip(squared[:, j], 0, None) / len(self.components))
        outside = centred - z @ self.components
        norm = np.linalg.norm(centred, axis=1)
        residual = np.where(norm > 0, np.linalg.norm(outside, axis=1) / np.maximum(norm, 1e-12), 0.0)
        return dist, residual


def signals_for(
    logits: np.ndarray,
    pooled: np.ndarray,
    stats: FeatureStats,
    temperature: float,
    *,
    lung: Sequence[tuple[float | None, float, np.ndarray] | None] | None = None,
) -> list[Signals]:
    """Signals of B films: masked logits B×K, pooled features B×D; `lung[i]`: (predicted class's lung
    focus or None, its lung area share, the lung mask) or None."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = scaled_probabilities(logits, temperature)
    active = np.isfinite(logits[0]) if len(logits) else np.ones(len(CLASSES), bool)
    n_active = max(int(active.sum()), 2)
    dist, residual = stats.distances(pooled)
    background = stats.background_distances(pooled)
    out = []
    for i in range(len(logits)):
        p = probs[i][active]
        k = int(np.argmax(probs[i]))
        entropy = float(-(p * np.log(np.clip(p, 1e-12, None))).sum() / math.log(n_active))
        z = logits[i][active] / temperature
        energy = float(-temperature * (z.max() + math.log(np.exp(z - z.max()).sum())))
        lung_values: dict[str, float | None] = {}
        if lung is not None and lung[i] is not None:
            focus, area, mask = lung[i]  # type: ignore[misc]
            _, balance, fill = lung_shape(mask)
            parts, two_share, layout = lung_parts(mask)
            ratio = None if focus is None or area <= 0 else float(min(focus / area, 10.0))
            lung_values = dict(
                lung_focus=focus,
                lung_focus_ratio=ratio,
                lung_area=area,
                lung_balance=balance,
                lung_fill=fill,
                lung_parts=float(parts),
                lung_two_share=two_share,
                lung_layout=layout,
            )
        out.append(
            Signals(
                max_prob=float(probs[i].max()),
                entropy=entropy,
                energy=energy,
                class_distance=float(dist[i, k]),
                ood_distance=float(dist[i][np.isfinite(dist[i])].min()),
                feature_residual=float(residual[i]),
                relative_distance=None if background is None else float(dist[i, k] ** 2 - background[i] ** 2),
                predicted_class=CLASSES[k],
                **lung_values,
            )
        )
    return out


def risk_inputs(s: Signals) -> dict[str, float | None]:
    """The values of `RISK_INPUTS` for one film, by name (None: not available)."""
    called = {f"predicted_{c}": None if s.predicted_class is None else float(s.predicted_class == c) for c in CLASSES}
    return {
        "max_prob": s.max_prob,
        "entropy": s.entropy,
        "energy": s.energy,
        "log_class_distance": math.log(max(s.class_distance, 1e-6)),
        "log_ood_distance": math.log(max(s.ood_distance, 1e-6)),
        "relative_distance": s.relative_distance,
        "feature_residual": s.feature_residual,
        "lung_focus": s.lung_focus,
        "lung_focus_ratio": s.lung_focus_ratio,
        **{name: called[name] for name in RISK_INPUTS if name.startswith("predicted_")},
    }


def input_matrix(signals: Sequence[Signals], names: Sequence[str] = RISK_INPUTS) -> np.ndarray:
    """N×len(names) (a checkpoint's own inputs: an earlier version's are a subset of RISK_INPUTS), NaN
    where an input is missing."""
    rows = [risk_inputs(s) for s in signals]
    return np.array([[np.nan if (v := r[n]) is None else v for n in names] for r in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, penalty: float = L2_PENALTY, signs: Sequence[int] | None = None
) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method: standardised N×F inputs, y in {0, 1} →
    (coefficients F, intercept). `signs` (+1/−1 per input): an input whose coefficient comes out with
    the other sign is dropped (coefficient 0) and the others refitted, until every sign agrees."""
    free = np.ones(x.shape[1], bool)
    while True:
        coef = np.zeros(x.shape[1])
        sub, intercept = _newton_logistic(x[:, free], y, penalty)
        coef[free] = sub
        wrong = free & (np.sign(coef) * np.asarray(signs if signs is not None else np.sign(coef)) < 0)
        if not wrong.any():
            return coef, intercept
        free &= ~wrong


def _newton_logistic(x: np.ndarray, y: np.ndarray, penalty: float, steps: int = 50) -> tuple[np.ndarray, float]:
    n, f = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(f + 1)
    prior = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    w[-1] = math.log(prior / (1 - prior))
    reg = np.full(f + 1, penalty)
    reg[-1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + reg * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-9 * np.eye(f + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


class RiskModel:
    """A checkpoint's risk section in use: signals, error risk and warnings of a batch of films."""

    def __init__(self, risk: RiskMeta) -> None:
        self.meta = risk
        self.temperature = risk.temperature
        self.stats = FeatureStats.from_meta(risk)
        unknown = [name for name in risk.inputs if name not in RISK_INPUTS]
        if unknown:
            raise ValueError(f"risk model inputs {unknown} are not among this version's {list(RISK_INPUTS)}")
        self.inputs = tuple(risk.inputs)
        self.mean = np.array(risk.input_mean)
        self.std = np.array(risk.input_std)
        self.coef = np.array(risk.coef)
        self.intercept = risk.intercept
        self.thresholds = Thresholds.from_dict(risk.thresholds)

    def error_risk(self, signals: Sequence[Signals]) -> np.ndarray:
        return error_risk(input_matrix(signals, self.inputs), self.mean, self.std, self.coef, self.intercept)

    def warnings(self, s: Signals, risk: float) -> list[RiskWarning]:
        return warnings_for(s, risk, self.thresholds)


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (x - mean) / np.where(std > 0, std, 1.0)
    return np.clip(np.nan_to_num(z, nan=0.0), -Z_CLIP, Z_CLIP)


def error_risk(x: np.ndarray, mean: np.ndarray, std: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    """N raw input rows → N probabilities that the predicted class is wrong."""
    return 1 / (1 + np.exp(-(standardise(x, mean, std) @ coef + intercept)))


def not_chest_reasons(s: Signals, t: Thresholds) -> list[str]:
    """Which of the not-a-frontal-chest-X-ray rules a film meets (names; [] = none)."""
    reasons = []
    if s.lung_area is not None:
        if not t.lung_area_min <= s.lung_area <= t.lung_area_max:
            reasons.append("lung_area")
        if (s.lung_balance or 0.0) < t.lung_balance_min:
            reasons.append("lung_balance")
        if (s.lung_fill or 0.0) < t.lung_fill_min:
            reasons.append("lung_fill")
        if s.lung_parts != 2:
            reasons.append("lung_parts")
        if (s.lung_two_share or 0.0) < t.lung_two_share_min:
            reasons.append("lung_two_share")
        if (s.lung_layout if s.lung_layout is not None else -1.0) < t.lung_layout_min:
            reasons.append("lung_layout")
    if s.ood_distance >= t.chest_distance:
        reasons.append("ood_distance")
    if s.feature_residual >= t.chest_residual:
        reasons.append("feature_residual")
    return reasons


def out_of_distribution(s: Signals, t: Thresholds) -> bool:
    if t.relative_distance is not None and s.relative_distance is not None:
        return s.relative_distance >= t.relative_distance
    return s.class_distance >= t.distance


def warnings_for(s: Signals, risk: float, t: Thresholds) -> list[RiskWarning]:
    """The warnings of one film, most serious first (module docstring)."""
    out = []
    if not_chest_reasons(s, t):
        out.append(warning("not_frontal_chest_xray"))
    if out_of_distribution(s, t):
        out.append(warning("out_of_distribution"))
    if risk >= t.risk:
        out.append(warning("low_confidence"))
    if s.lung_focus is not None and s.lung_focus < 0.5 and (s.lung_focus_ratio or 0.0) <= t.focus_ratio:
        out.append(warning("outside_lungs"))
    return out
