"""Pydantic request/response models of the REST API (the contract documented at /docs).

Every route module takes its schemas from here (the browser pages' forms and queries are in `app.forms`);
`ERRORS`/`error_responses` document the error replies.
The training-job request body is `app.services.training.TrainingParams` (it validates the page form too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from app.db import MAX_ROW_ID
from app.services.accounts import MIN_PASSWORD_LENGTH, USERNAME_RE

ClassName = Literal["normal", "bacterial", "viral", "covid19"]
ReasonTag = Literal["outside_lungs", "text_or_marker", "device_or_line", "image_border", "other"]
VerdictValue = Literal["approve", "reject"]
ReadingMode = Literal["film_first", "ai_first"]
RegionKind = Literal["wrong_evidence", "finding"]
Colormap = Literal["inferno", "viridis", "jet"]
"""The heat maps' colour maps (`app.services.predictions.OVERLAY_COLORMAPS`, the default first)."""
MAX_REGIONS = 20
PROMOTION_REASON = "why (kept in the audit log); required when the model's test macro sensitivity is more than \
CXR_PROMOTION_MAX_DROP (5 points) below the active model's"


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorOut(BaseModel):
    detail: Any


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, each a JSON `{"detail": ...}`."""
    return {code: {"model": ErrorOut} for code in codes}


ERRORS = error_responses(401, 403, 404, 413, 415, 422)
"""The error replies of the review API (see app.routes.__init__ for what each status means)."""
PREDICTION_ERRORS = {**ERRORS, **error_responses(503)}
"""An upload's: also 503 with Retry-After when the inference queue is full (nothing is stored)."""


# ------------------------------------------------------------------------------- accounts
class MeOut(BaseModel):
    username: str
    role: str
    must_change_password: bool


class UserOut(BaseModel):
    id: int
    username: str
    role: str
    active: bool


class UserCreateIn(BaseModel):
    model_config = {"extra": "forbid"}

    username: str = Field(min_length=1, max_length=64, pattern=USERNAME_RE.pattern)
    role: Literal["reviewer", "admin"] = "reviewer"
    password: str | None = Field(
        None, min_length=MIN_PASSWORD_LENGTH, description="omit to have one generated (returned once)"
    )


class UserCreatedOut(UserOut):
    password: str | None = Field(None, description="the generated password, shown once")
    api_token: str = Field(description="an API token for this user, shown once")


# --------------------------------------------------------------------------------- models


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    name: str
    architecture: str
    version: int
    active: bool
    classes: list[str]
    metrics: dict[str, Any]
    checkpoint_sha256: str
    cam_method: str
    input_size: int
    created_at: datetime
    parent_id: int | None = Field(None, description="the version this one was trained to replace")
    data_manifest_sha256: str | None = Field(None, description="sha256 of the training data's manifest.csv")
    hparams: dict[str, Any] = Field(default_factory=dict, description="hyper-parameters it was trained with")


# ---------------------------------------------------------------------- predictions, verdicts
class Probabilities(BaseModel):
    normal: float
    bacterial: float
    viral: float
    covid19: float


class LungFocusOut(BaseModel):
    """How much of one class's heat-map evidence lies inside the lungs."""

    score: float | None = Field(
        description="share of the class's positive CAM evidence inside the lung mask, 0..1; "
        "null when the map has no positive evidence (see `reason`)",
        ge=0.0,
        le=1.0,
    )
    lung_area: float = Field(
        description="share of the film that is lung, 0..1 (of the crop, for lung-crop models): the chance level, "
        "the score of a map spread evenly over the film",
        ge=0.0,
        le=1.0,
    )
    flagged: bool = Field(
        description="score below `threshold`, or no meaningful score (`reason`): most of the evidence lies "
        "outside the lungs; check before approving"
    )
    threshold: float = Field(description="the threshold applied (CXR_LUNG_FOCUS_THRESHOLD), 0..1")
    reason: str | None = Field(
        description="why there is no meaningful score ('no positive activation', 'no lung found in the mask'); "
        "null otherwise"
    )


class InputBoxOut(BaseModel):
    """The film region a lung-crop model saw and its maps span, as fractions of the film's height and width."""

    top: float
    left: float
    bottom: float
    right: float


WarningCode = Literal["not_frontal_chest_xray", "out_of_distribution", "low_confidence", "outside_lungs"]


class WarningOut(BaseModel):
    """Why a result deserves a closer look, in plain words (ml.risk)."""

    code: WarningCode = Field(
        description="not_frontal_chest_xray: the film does not look like a frontal chest X-ray (lung mask area or "
        "shape, or features far from every training film); out_of_distribution: unlike the films this model was "
        "trained on for the class it predicts; low_confidence: high error risk; outside_lungs: the heat map's "
        "evidence lies mostly outside the lungs, well below chance"
    )
    message: str = Field(description="the warning in plain words, as the case page shows it")


_ERROR_RISK_DESCRIPTION = (
    "estimated probability that the predicted class is wrong (a logistic regression over calibrated confidence, "
    "energy, feature-space distance to the training films and lung focus, fitted on the model version's own "
    "validation films); null: not available, see error_risk_reason"
)


class ResultOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: int
    model_name: str
    model_version: int
    checkpoint_sha256: str
    architecture: str
    probabilities: Probabilities
    predicted_class: ClassName
    cam_method: str
    overlays: dict[str, str] = Field(description="class → overlay PNG URL, predicted class first")
    lung_focus: LungFocusOut | None = Field(
        description="lung focus of the predicted class's heat map; null: not computed (stored before lung focus "
        "existed)"
    )
    input_box: InputBoxOut | None = Field(
        description="lung-crop models: the region of the film the network saw (its heat maps cover only that); "
        "null: the whole film"
    )
    lung_outline_url: str | None = Field(
        description="transparent PNG of the overlays' exact size with the lung outline in cyan (and the crop box "
        "in white), to lay over any overlay; null: not computed"
    )
    lungseg_sha256: str | None = Field(None, description="checkpoint sha256 of the lung segmenter used")
    error_risk: float | None = Field(None, ge=0, le=1, description=_ERROR_RISK_DESCRIPTION)
    error_risk_reason: str | None = Field(
        None, description="why there is no error risk (an uncalibrated model, a result stored before it existed)"
    )
    warnings: list[WarningOut] = Field(
        default_factory=list, description="warnings, most serious first; [] when none (or stored before warnings)"
    )


class ResultDetailOut(ResultOut):
    lung_focus_by_class: dict[str, LungFocusOut] | None = Field(
        description="every class's lung focus (class → lung focus, in class order); null: not computed"
    )


# The rules across fields that app.services.reviews.add_verdict enforces, stated in the schema (JSON
# Schema if/then): a reject needs a reason; a reject for 'other' needs a comment that is not blank.
_VERDICT_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {"properties": {"verdict": {"const": "reject"}}, "required": ["verdict"]},
            "then": {"properties": {"reasons": {"minItems": 1}}, "required": ["reasons"]},
        },
        {
            "if": {
                "properties": {"verdict": {"const": "reject"}, "reasons": {"contains": {"const": "other"}}},
                "required": ["verdict", "reasons"],
            },
            "then": {"properties": {"comment": {"pattern": "\\S"}}, "required": ["comment"]},
        },
        {  # an approval marks no wrong evidence: its boxes, if any, are findings
            "if": {"properties": {"verdict": {"const": "approve"}}, "required": ["verdict"]},
            "then": {"properties": {"regions": {"items": {"properties": {"kind": {"const": "finding"}}}}}},
        },
    ]
}


class Region(BaseModel):
    """A box the reviewer drew on the film."""

    model_config = ConfigDict(extra="forbid")

    kind: RegionKind = Field(
        description="wrong_evidence: the model looked there and should not (text, a device, outside the lungs); "
        "finding: where the finding really is"
    )
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x0, y0, x1, y1] as fractions of the film's width (x) and height (y): 0 ≤ x0 < x1 ≤ 1, "
        "0 ≤ y0 < y1 ≤ 1",
    )

    @model_validator(mode="after")
    def _inside_the_film(self) -> Region:
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"box must have 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1, got {self.box}")
        return self


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra=_VERDICT_RULES)

    model_id: int = Field(ge=1, le=MAX_ROW_ID)
    verdict: VerdictValue
    reasons: list[ReasonTag] = Field(default_factory=list)
    comment: str = Field(
        "",
        max_length=4000,
        description="free text without NUL characters",
        json_schema_extra={"pattern": "^[^\\x00]*$"},  # stated here, refused with its own message by the service
    )
    diagnosis: ClassName | None = None
    regions: list[Region] = Field(
        default_factory=list,
        max_length=MAX_REGIONS,
        description="boxes drawn on the film; wrong_evidence boxes only with a rejection. Retraining with "
        "reviewed uploads uses them in the explanation loss (forbidden / allowed regions)",
    )
    reading_token: str | None = Field(
        None,
        max_length=200,
        description="the `reading_token` of GET /predictions/{id} (or of the case page): the server then "
        "records the reading mode and the seconds from opening the case to this verdict",
    )
    ai_revealed_after_ms: float | None = Field(
        None,
        ge=0,
        description="film-first reading: milliseconds from opening the case to showing the AI; omit when "
        "it was not shown (no effect without a reading_token; AI-first reading records 0)",
    )


class VerdictOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    prediction_id: int
    model_id: int
    reviewer: str
    verdict: VerdictValue
    reasons: list[str]
    comment: str
    diagnosis: ClassName | None
    regions: list[Region] = Field(description="boxes the reviewer drew on the film ([] for none)")
    created_at: datetime
    is_latest: bool = Field(description="the latest verdict of this reviewer on this (prediction, model)")
    reading_mode: ReadingMode | None = Field(None, description="how the case was read; null: not known")
    seconds_to_verdict: float | None = Field(None, description="from opening the case to this verdict")
    ai_revealed: bool | None = Field(None, description="whether the AI was shown before the verdict")
    ai_revealed_after_s: float | None = Field(None, description="seconds from opening to showing the AI")


class PredictionOut(BaseModel):
    id: int
    image_sha256: str
    image_url: str
    width: int
    height: int
    format: str
    filename: str | None
    created_at: datetime
    created_by: str | None
    results: list[ResultOut]


class PredictionDetailOut(PredictionOut):
    results: list[ResultDetailOut]  # type: ignore[assignment]  # the detail adds every class's lung focus
    verdicts: list[VerdictOut] = Field(
        description="blind reading: a reviewer gets other reviewers' verdicts on a model's result only once "
        "they have given their own on it; admins get all"
    )
    hidden_verdicts: int = Field(0, description="how many verdicts blind reading leaves out of `verdicts`")
    reading_mode: ReadingMode = Field(description="the caller's reading mode (account page, or the setting)")
    reading_token: str = Field(description="send it with a verdict to record the time from now to the verdict")


class WorklistItemOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    prediction_id: int
    model_id: int
    model_name: str
    model_version: int
    image_sha256: str
    filename: str | None
    predicted_class: ClassName
    top_probability: float
    probabilities: Probabilities
    created_at: datetime
    verdict_count: int
    latest_verdict: VerdictValue | None
    lung_focus: LungFocusOut | None = Field(description="the predicted class's lung focus; null: not computed")
    error_risk: float | None = Field(None, ge=0, le=1, description=_ERROR_RISK_DESCRIPTION)
    warnings: list[WarningOut] = Field(default_factory=list, description="warnings, most serious first")
    detail_url: str


class WorklistOut(BaseModel):
    items: list[WorklistItemOut]
    total: int
    limit: int
    offset: int
    sort: str
    priority: str = Field(description="how 'priority' sorting orders the worklist")
    lung_focus_threshold: float = Field(description="the threshold below which a result is flagged")


class ActivateIn(BaseModel):
    reason: str = Field("", max_length=2000, description=PROMOTION_REASON)


# ------------------------------------------------------------------------------- training
class TrainingJobOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    phase: str = Field(description="queued, preparing, training, evaluating, registering, or the final status")
    progress: float = Field(description="share of the training steps done, 0..1")
    epoch: int | None
    epochs: int
    step: int | None
    steps_per_epoch: int | None
    loss: float | None = Field(description="training loss of the latest step")
    eta_seconds: float | None = Field(description="estimated seconds of training left")
    metrics: dict[str, Any] = Field(description="history: per-epoch losses and validation figures; test: summary")
    model_id: int | None = Field(description="the model version this job registered (succeeded jobs)")
    parent_model_id: int | None = Field(description="the active model when the job was queued")
    error: str | None
    cancel_requested: bool
    params: dict[str, Any]
    dataset: dict[str, Any]
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    report_url: str | None
    charts: dict[str, str] = Field(description="chart name → PNG URL (succeeded jobs)")


class AuditEntryOut(BaseModel):
    id: int
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: int | None
    details: dict[str, Any]


# ------------------------------------------------------------------------------- viewer
class VoiWindowOut(BaseModel):
    center: float
    width: float
    explanation: str | None = Field(None, description="the file's WindowCenterWidthExplanation of this window")


class FilmValuesOut(BaseModel):
    """How to read a DICOM film's modality values (`data_url`: width×height little-endian uint16, row by
    row from the top left, no header): modality value = `offset` + `scale` × the uint16. The uint16 runs
    with brightness (dense tissue high), so where MONOCHROME1 was turned round `scale` is negative."""

    width: int
    height: int
    dtype: Literal["uint16"] = "uint16"
    byte_order: Literal["little"] = "little"
    data_url: str
    offset: float
    scale: float
    exact: bool = Field(description="every modality value is represented exactly (false: quantised to 65 536 levels)")
    minimum: float = Field(description="the film's smallest modality value")
    maximum: float = Field(description="the film's largest modality value")
    inverted: bool = Field(description="MONOCHROME1: the uint16 runs against the modality values, so dense is bright")
    rescale_slope: float = Field(description="stored value = (modality value − rescale_intercept) / rescale_slope")
    rescale_intercept: float
    windows: list[VoiWindowOut] = Field(
        description="the file's own VOI windows, in modality units; the first is the default"
    )
    voi: str | None = Field(
        description="how the 8-bit film was windowed: 'window' (the first of `windows`, linear), 'lut' (a VOI LUT), "
        "another VOI LUT function ('sigmoid', 'linear_exact'), or null (minimum..maximum stretched)"
    )
