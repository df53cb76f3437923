"""Pydantic request/response models of the REST API (the contract documented at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.db import MAX_ROW_ID

ClassName = Literal["normal", "bacterial", "viral", "covid19"]
ReasonTag = Literal["outside_lungs", "text_or_marker", "device_or_line", "image_border", "other"]
VerdictValue = Literal["approve", "reject"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorOut(BaseModel):
    detail: Any


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


class ResultDetailOut(ResultOut):
    lung_focus_by_class: dict[str, LungFocusOut] | None = Field(
        description="every class's lung focus (class → lung focus, in class order); null: not computed"
    )


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: int = Field(ge=1, le=MAX_ROW_ID)
    verdict: VerdictValue
    reasons: list[ReasonTag] = Field(default_factory=list)
    comment: str = Field("", max_length=4000)
    diagnosis: ClassName | None = None


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
    created_at: datetime
    is_latest: bool = Field(description="the latest verdict of this reviewer on this (prediction, model)")


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
    verdicts: list[VerdictOut]


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
    detail_url: str


class WorklistOut(BaseModel):
    items: list[WorklistItemOut]
    total: int
    limit: int
    offset: int
    sort: str
    priority: str = Field(description="how 'priority' sorting orders the worklist")
    lung_focus_threshold: float = Field(description="the threshold below which a result is flagged")
