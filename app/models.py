"""ORM tables (SQLAlchemy 2.0 typed mappings). The schema changes only through `migrations/`.

Audit trail by construction: a prediction result records the model id, version and checkpoint
sha256 it came from and the image is content-addressed by sha256, so every verdict can be traced
to the exact weights and pixels. Verdicts are append-only: a new verdict is a new row, the latest
per (result, reviewer) is the one that counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from app.db import Base

ROLES = ("reviewer", "admin")
VERDICTS = ("approve", "reject")
REASON_TAGS = ("outside_lungs", "text_or_marker", "device_or_line", "image_border", "other")
READING_MODES = ("film_first", "ai_first")
"""film_first: the case opens on the plain film, the AI is shown on request (V); ai_first: shown at once."""
CLASS_LABELS = {"normal": "Normal", "bacterial": "Bacterial", "viral": "Viral", "covid19": "COVID-19"}
"""How pages and charts name each of `ml.CLASSES`."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('reviewer', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="reviewer")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reading_mode: Mapped[str | None] = mapped_column(String(16))
    """The user's own choice of READING_MODES; NULL: the service's setting (CXR_READING_MODE)."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class ApiToken(Base):
    """A REST bearer token. Only the sha256 of the token is stored; `prefix` identifies it to humans."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(lazy="joined")


class WebSession(Base):
    """A browser login. The cookie carries a random token; only its sha256 is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))

    user: Mapped[User] = relationship(lazy="joined")


class LoginAttempt(Base):
    """Failed logins, for throttling (per username + client address within a time window)."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_user_ip_time", "username", "ip", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MLModel(Base):
    """A registered checkpoint. Rows are never deleted while predictions reference them."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    architecture: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The classes the model was trained on (a scenario may leave some out); outputs always have all four."""
    input_size: Mapped[int] = mapped_column(Integer)
    cam_method: Mapped[str] = mapped_column(String(32))
    data_manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    hparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Image(Base):
    """An uploaded film, content-addressed: original bytes at images/<sha[:2]>/<sha>."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prediction(Base):
    """One upload of an image, run through one or more models (`results`)."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    filename: Mapped[str | None] = mapped_column(String(255))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    image: Mapped[Image] = relationship(lazy="joined")
    created_by: Mapped[User | None] = relationship(lazy="joined")
    results: Mapped[list[PredictionResult]] = relationship(
        back_populates="prediction", order_by="PredictionResult.id", lazy="selectin"
    )


class PredictionResult(Base):
    """One model's output for one prediction: probabilities, class, CAM (raw maps at cams/<sha[:2]>/<sha>.npy)."""

    __tablename__ = "prediction_results"
    __table_args__ = (
        UniqueConstraint("prediction_id", "model_id", name="uq_prediction_results_prediction_model"),
        Index("ix_prediction_results_top_probability", "top_probability"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    predicted_class: Mapped[str] = mapped_column(String(16), index=True)
    top_probability: Mapped[float] = mapped_column(Float)
    """Probability of the predicted class; the worklist's priority puts the least confident first."""
    cam_method: Mapped[str] = mapped_column(String(32))
    cam_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Lung focus (migration 0003). All NULL on results stored before it existed: "not computed".
    lung_focus: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """{class: {"score", "lung_area", "reason"}} for every class (see ml.lung_focus). No threshold and no
    `flagged` here: those are applied when the result is read (CXR_LUNG_FOCUS_THRESHOLD)."""
    lung_focus_score: Mapped[float | None] = mapped_column(Float, index=True)
    """The predicted class's score, for sorting and filtering. Also NULL when that class's score is not
    meaningful (no positive activation, no lung found): such a result is flagged at any threshold."""
    lung_mask_sha256: Mapped[str | None] = mapped_column(String(64))
    """The film's lung mask, masks/<sha[:2]>/<sha>.png; NULL means lung focus was not computed."""
    lungseg_sha256: Mapped[str | None] = mapped_column(String(64))
    """Checkpoint sha256 of the lung segmenter that made the mask (the audit trail of the score)."""
    input_box: Mapped[dict[str, float] | None] = mapped_column(JSON(none_as_null=True))
    """The film region a lung-crop model saw and its CAM spans ({top, left, bottom, right} fractions);
    NULL: the whole film."""
    # Error risk and warnings (migration 0006). NULL on results stored before it existed.
    error_risk: Mapped[float | None] = mapped_column(Float, index=True)
    """Estimated probability that `predicted_class` is wrong (ml.risk); NULL: not available (see the reason)."""
    error_risk_reason: Mapped[str | None] = mapped_column(Text)
    """Why there is no error risk (an uncalibrated model, a result stored before error risk existed)."""
    warnings: Mapped[list[dict[str, str]] | None] = mapped_column(JSON(none_as_null=True))
    """[{"code", "message"}] as the model's calibration gave them, most serious first; NULL: stored before."""
    risk_signals: Mapped[dict[str, float | None] | None] = mapped_column(JSON(none_as_null=True))
    """The signals the error risk was computed from (ml.risk.Signals), for audit."""

    prediction: Mapped[Prediction] = relationship(back_populates="results")
    model: Mapped[MLModel] = relationship(lazy="joined")


class Verdict(Base):
    """A reviewer's judgement of one result's CAM. Append-only: never updated, never deleted."""

    __tablename__ = "verdicts"
    __table_args__ = (
        CheckConstraint("verdict IN ('approve', 'reject')", name="verdict"),
        CheckConstraint(
            "diagnosis IS NULL OR diagnosis IN ('normal', 'bacterial', 'viral', 'covid19')", name="diagnosis"
        ),
        Index("ix_verdicts_result_reviewer", "result_id", "reviewer_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("prediction_results.id", ondelete="RESTRICT"))
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="RESTRICT"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    diagnosis: Mapped[str | None] = mapped_column(String(16))
    regions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    """Boxes the reviewer drew on the film: [{"kind": "wrong_evidence" | "finding", "box": [x0, y0, x1, y1]}],
    fractions of the film's width (x) and height (y); [] for none (and for verdicts stored before boxes)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How the case was read (migration 0007; app.services.reading). NULL: not known (older verdicts,
    # API clients that send no reading token).
    reading_mode: Mapped[str | None] = mapped_column(String(16))
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the reviewer opened the case (server time, from the signed token of the page)."""
    seconds_to_verdict: Mapped[float | None] = mapped_column(Float)
    ai_revealed: Mapped[bool | None] = mapped_column(Boolean)
    """Whether the AI (probabilities, heat maps, warnings) was shown before the verdict; NULL: unknown."""
    ai_revealed_after_s: Mapped[float | None] = mapped_column(Float)
    """Seconds from opening to showing the AI (0 in AI-first mode); NULL when not shown or unknown."""

    reviewer: Mapped[User] = relationship(lazy="joined")
    result: Mapped[PredictionResult] = relationship(lazy="joined")


class Assignment(Base):
    """A result an admin asked a reviewer to read (e.g. a second reader for agreement figures).
    Open until that reviewer gives a verdict on the result; rows are kept."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("result_id", "reviewer_id", name="uq_assignments_result_reviewer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("prediction_results.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    assigned_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    reviewer: Mapped[User] = relationship(lazy="joined", foreign_keys=[reviewer_id])


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class TrainingJob(Base):
    """An admin-requested training run. A worker claims it (queued → running), heartbeats while it
    runs, and finishes it (succeeded with `model_id`, failed with `error`, or cancelled). A job whose
    worker stops heartbeating is failed by the reaper (`app.services.training.reap_stale_jobs`)."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status"),
        Index("ix_training_jobs_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The validated request (architecture, scenario, epochs, batch size, learning rate, seed, ...)."""
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    """`host:pid` of the worker that claimed the job."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    phase: Mapped[str] = mapped_column(String(32), default="queued")
    """What a running job is doing: preparing, training, evaluating, registering."""
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    """Share of the training steps done, 0..1 (1 once the job succeeded)."""
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    steps_per_epoch: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """`history`: per-epoch train loss and validation figures; `test`: the test-split summary when done."""
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The full report of a succeeded job (test split, per source, the active model on the same split)."""
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Dataset dir and manifest sha256, reviewed uploads added and excluded."""
    work_dir: Mapped[str | None] = mapped_column(Text)
    parent_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    """The active model when the job was created: the new version's parent."""
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)

    created_by: Mapped[User | None] = relationship(lazy="joined")

    @property
    def finished(self) -> bool:
        return self.status in JOB_FINAL_STATUSES


class AuditEntry(Base):
    """Who did what, when: training jobs, promotions, rollbacks. Append-only (database triggers)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    actor: Mapped[str] = mapped_column(String(64))
    """The user's name at the time, or `system` (reaper, start-up)."""
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


PACS_STATUSES = ("pending", "done", "rejected", "failed")
PACS_ORIGINS = ("dicomweb", "c-store")


class PacsInstance(Base):
    """A DICOM instance found on the PACS (pacs-sync) or pushed to the listener, and what became of it.

    `pending`: to do, or to retry after a failure (`attempts` so far, `reason` the last error);
    `done`: its prediction exists; `rejected`: not processable (`reason` says why; never retried);
    `failed`: gave up after the configured number of attempts (`reason`: the last error).
    """

    __tablename__ = "pacs_instances"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'done', 'rejected', 'failed')", name="status"),
        Index("ix_pacs_instances_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


EXPORT_KINDS = ("sr", "seg", "sc")
EXPORT_STATUSES = ("pending", "sent", "failed")


class DicomExport(Base):
    """One DICOM object of a result to push to the PACS (an outbox row): the SR, SEG or SC of a
    result, or an amended SR after a verdict (`verdict_id`). Its UIDs are fixed when the row is made,
    so a retried push sends the same instance again instead of a duplicate.

    `pending`: to send (`attempts` so far, `error` the last failure); `sent`; `failed`: gave up.
    """

    __tablename__ = "dicom_exports"
    __table_args__ = (
        CheckConstraint("kind IN ('sr', 'seg', 'sc')", name="kind"),
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index("ix_dicom_exports_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="RESTRICT"), index=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("prediction_results.id", ondelete="RESTRICT"), index=True)
    verdict_id: Mapped[int | None] = mapped_column(ForeignKey("verdicts.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(8))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    instance_number: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    result: Mapped[PredictionResult] = relationship(lazy="joined")
