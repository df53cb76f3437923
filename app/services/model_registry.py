"""The `models` table and the in-memory `ModelManager` that hands out loaded Predictors.

Registration is by checkpoint sha256: the same file is never registered twice, and a changed file
at a known path becomes a new version of that name. Exactly one model is `active` (the default for
predictions); `models=all` runs every registered model whose checkpoint is present and unchanged.
A Predictor is loaded once per model (under a lock, so concurrent first requests load it once) and
is verified against the recorded sha256, so a prediction's recorded hash is always the one used.
The manager also holds the one lung segmenter (`CXR_LUNGSEG_CHECKPOINT`), loaded the same way and
shared by every Predictor (lung-crop models crop with it) and by the lung-focus score of each upload.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import is_row_id
from app.models import MLModel, User
from app.services import audit
from app.services.errors import ConflictError, InvalidInputError, ModelUnavailableError, NotFoundError
from ml.checkpoints import CheckpointError, file_sha256, read_meta
from ml.inference import Predictor
from ml.lungseg import LungSegmenter

log = logging.getLogger(__name__)


def list_models(*, session: Session) -> list[MLModel]:
    """All registered models, active first, then newest first."""
    return list(session.scalars(select(MLModel).order_by(MLModel.active.desc(), MLModel.id.desc())))


def get_model(*, session: Session, model_id: int) -> MLModel:
    model = session.get(MLModel, model_id) if is_row_id(model_id) else None
    if model is None:
        raise NotFoundError(f"model {model_id} not found")
    return model


def get_active_model(*, session: Session) -> MLModel:
    model = session.scalar(select(MLModel).where(MLModel.active.is_(True)).order_by(MLModel.id.desc()))
    if model is None:
        raise ModelUnavailableError("no active model is registered")
    return model


def set_active_model(
    *, session: Session, model: MLModel, actor: User | None = None, details: dict[str, Any] | None = None
) -> MLModel:
    """Make `model` the only active one and record it in the audit log (`actor=None`: the system).

    Newer than the model it replaces (higher id) is a `model.promote`, older a `model.rollback`.
    Serving switches without a restart: each request resolves the active model when it starts and
    keeps the Predictor it got, so requests in flight finish on the model they started with.
    """
    previous = session.scalar(select(MLModel).where(MLModel.active.is_(True), MLModel.id != model.id))
    session.execute(update(MLModel).where(MLModel.id != model.id).values(active=False))
    was_active = model.active
    model.active = True
    if not was_active or previous is not None:
        audit.record(
            session=session,
            actor=actor,
            action="model.rollback" if previous is not None and model.id < previous.id else "model.promote",
            target_type="model",
            target_id=model.id,
            details={
                "model": _model_ref(model),
                "replaced": _model_ref(previous) if previous else None,
                **(details or {}),
            },
        )
    session.commit()
    return model


def activate_model(
    *, session: Session, model_id: int, actor: User | None, details: dict[str, Any] | None = None
) -> MLModel:
    """The admin action (API, pages and `cxr-review models activate`, whose `actor` is None: the system):
    any registered version whose checkpoint is present and unchanged becomes active — a promotion of a
    new version or a rollback to an earlier one. 404 unknown id, 409 checkpoint missing or changed.
    `details`: more for the audit entry (app.services.promotion: the reason and the compared figures);
    the reason rule itself is `promotion.activate`'s, which every admin action goes through."""
    model = get_model(session=session, model_id=model_id)
    if not checkpoint_matches(model):
        raise ConflictError(
            f"model {model.id} ({model.name} v{model.version}) cannot serve: its checkpoint is missing or changed"
        )
    return set_active_model(session=session, model=model, actor=actor, details=details)


INPUT_MODE_LABELS = {"full": "whole film", "lung-crop": "lung crop"}


def model_name(arch: str, scenario: str, input_mode: str) -> str:
    """The name a trained model is registered under: architecture, scenario and input mode, e.g.
    `resnet18-s2-full`, `resnet18-s2-lung-crop` (each name is its own line of versions)."""
    return f"{arch}-{scenario}-{input_mode}"


def describe(model: MLModel) -> str:
    """What a model is, for pages: 'resnet18 · scenario s2 · whole film' (from its training options)."""
    hp = model.hparams or {}
    mode = str(hp.get("input_mode") or "full")
    parts = [model.architecture, f"scenario {hp['scenario']}" if hp.get("scenario") else None]
    return " · ".join(p for p in [*parts, INPUT_MODE_LABELS.get(mode, mode)] if p)


def _model_ref(model: MLModel) -> dict[str, Any]:
    return {"id": model.id, "name": model.name, "version": model.version, "sha256": model.checkpoint_sha256}


def resolve_models(*, session: Session, spec: str | None) -> list[MLModel]:
    """The models a prediction request asks for.

    `None`/"" → the active model; "all" → every registered model whose checkpoint is available;
    "3,5" → those ids (each must exist, else InvalidInputError → HTTP 422). Order is kept, no duplicates.
    """
    text = (spec or "").strip()
    if not text:
        return [get_active_model(session=session)]
    if text.lower() == "all":
        models = [m for m in list_models(session=session) if Path(m.checkpoint_path).is_file()]
        if not models:
            raise ModelUnavailableError("no registered model has its checkpoint available")
        return models
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise InvalidInputError(f"models must be 'all' or comma-separated model ids, got {part!r}")
        if int(part) not in ids:
            ids.append(int(part))
    valid = [i for i in ids if is_row_id(i)]
    found = {m.id: m for m in session.scalars(select(MLModel).where(MLModel.id.in_(valid)))} if valid else {}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidInputError(f"unknown model id(s): {', '.join(map(str, missing))}")
    return [found[i] for i in ids]


def register_checkpoint(
    *, session: Session, path: Path, name: str | None = None, parent_id: int | None = None, sha256: str | None = None
) -> tuple[MLModel, bool]:
    """Register `path` unless a model with the same sha256 exists. Returns (model, created). Commits."""
    path = Path(path).resolve()
    sha = sha256 or file_sha256(path)
    existing = session.scalar(select(MLModel).where(MLModel.checkpoint_sha256 == sha))
    if existing is not None:
        if existing.checkpoint_path != str(path) and not Path(existing.checkpoint_path).is_file():
            existing.checkpoint_path = str(path)  # the same weights moved: follow them
            session.commit()
        return existing, False
    meta = read_meta(path)
    name = name or meta.name or path.stem
    version = (session.scalar(select(func.max(MLModel.version)).where(MLModel.name == name)) or 0) + 1
    model = MLModel(
        name=name,
        architecture=meta.arch,
        version=version,
        checkpoint_path=str(path),
        checkpoint_sha256=sha,
        active=False,
        metrics=meta.metrics,
        classes=list(meta.active_classes),
        input_size=meta.input_size,
        cam_method=meta.cam_method,
        data_manifest_sha256=meta.data.manifest_sha256 if meta.data is not None else None,
        hparams=meta.hparams,
        parent_id=parent_id,
    )
    session.add(model)
    session.commit()
    return model, True


def sync_models(*, session: Session, settings: Settings) -> list[MLModel]:
    """Register the bundled checkpoint and every *.pt in the models dir; make sure one model is active.

    The bundled model becomes active when no model is, or when the active one's checkpoint is gone
    or changed on disk (it could no longer serve). Unreadable checkpoints are logged and skipped.
    Returns the newly registered models.
    """
    created: list[MLModel] = []
    bundled_model: MLModel | None = None
    candidates: list[Path] = []
    bundled = settings.resolved_default_checkpoint
    if bundled.is_file():
        candidates.append(bundled)
    else:
        log.warning("bundled checkpoint %s not found", bundled)
    models_dir = settings.resolved_models_dir
    if models_dir.is_dir():
        candidates.extend(sorted(p for p in models_dir.glob("*.pt") if p.is_file()))
    for path in candidates:
        try:
            model, was_created = register_checkpoint(session=session, path=path)
        except (CheckpointError, KeyError, OSError) as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            session.rollback()
            continue
        if was_created:
            log.info("registered model %s v%s (%s) from %s", model.name, model.version, model.architecture, path)
            created.append(model)
        if path == bundled:
            bundled_model = model
    active = session.scalar(select(MLModel).where(MLModel.active.is_(True)))
    if (active is None or not checkpoint_matches(active)) and bundled_model is not None and active != bundled_model:
        set_active_model(session=session, model=bundled_model)
    elif active is None:
        first = session.scalar(select(MLModel).order_by(MLModel.id))
        if first is not None:
            set_active_model(session=session, model=first)
    return created


def checkpoint_matches(model: MLModel) -> bool:
    path = Path(model.checkpoint_path)
    try:
        return path.is_file() and file_sha256(path) == model.checkpoint_sha256
    except OSError:
        return False


class ModelManager:
    """Loads each model's Predictor, and the lung segmenter, once and hands them out; safe to share
    between request threads (both are read-only after loading)."""

    def __init__(self, lungseg_checkpoint: Path | None = None) -> None:
        """`lungseg_checkpoint`: the segmenter's file (None: the bundled ml/bundled/lungseg.pt)."""
        self._predictors: dict[int, Predictor] = {}
        self._lock = threading.Lock()
        self._lungseg_checkpoint = lungseg_checkpoint
        self._segmenter: LungSegmenter | None = None

    def loaded_ids(self) -> list[int]:
        return sorted(self._predictors)

    def segmenter(self) -> LungSegmenter:
        """The lung segmenter, loaded on first use. ModelUnavailableError (503) if it cannot be loaded."""
        segmenter = self._segmenter
        if segmenter is not None:
            return segmenter
        with self._lock:
            if self._segmenter is None:
                self._segmenter = self._load_segmenter(self._lungseg_checkpoint)
            return self._segmenter

    def get(self, model: MLModel) -> Predictor:
        predictor = self._predictors.get(model.id)
        if predictor is not None:
            return predictor
        segmenter = self.segmenter()  # outside the lock below: it takes the same lock
        with self._lock:  # one load per model even when the first requests arrive together
            predictor = self._predictors.get(model.id)
            if predictor is None:
                predictor = self._load(model, segmenter)
                self._predictors[model.id] = predictor
        return predictor

    @staticmethod
    def _load_segmenter(path: Path | None) -> LungSegmenter:
        if path is not None and not Path(path).is_file():
            raise ModelUnavailableError(f"lung segmenter checkpoint {path} not found (CXR_LUNGSEG_CHECKPOINT)")
        try:
            return LungSegmenter.from_checkpoint(path)
        except (CheckpointError, OSError) as exc:
            raise ModelUnavailableError(f"lung segmenter unavailable: {exc}") from exc

    @staticmethod
    def _load(model: MLModel, segmenter: LungSegmenter) -> Predictor:
        path = Path(model.checkpoint_path)
        if not path.is_file():
            raise ModelUnavailableError(f"model {model.id} ({model.name} v{model.version}): checkpoint missing")
        try:
            predictor = Predictor.from_checkpoint(path, segmenter=segmenter)
        except CheckpointError as exc:
            raise ModelUnavailableError(f"model {model.id} ({model.name} v{model.version}): {exc}") from exc
        if predictor.checkpoint_sha256 != model.checkpoint_sha256:
            raise ModelUnavailableError(
                f"model {model.id} ({model.name} v{model.version}): the checkpoint file changed since it was "
                "registered; register the new file as a new model version"
            )
        return predictor

    def clear(self) -> None:
        """Forget the loaded Predictors (the segmenter stays: its file is fixed for the app's lifetime)."""
        with self._lock:
            self._predictors.clear()
