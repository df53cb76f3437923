"""Uploads → stored predictions (one result per model) and the images/overlays that show them.

`create_prediction` is the one write path: decode (limits checked before pixels are decoded) → the
process's inference executor (`app.services.executor`: a bounded queue, micro-batches through the
per-film pipeline `ml.inference.analyze_films`: lungs segmented once, each requested model run with
that mask, each result's lung focus scored; a full queue is a 503 before anything is written) → write
files atomically → one group sync → insert rows → commit; this module only stores and serves what
the pipeline returns. The decoded film's PNG is not written on upload: `FileStore.film_png` derives
it from the kept original on first read, as overlays are rendered on first read. If anything fails after
files were written, the files this call created are removed unless a committed row references
them. Blocking (numpy/torch) work: call from sync (`def`) routes or a worker, never `async def`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import is_row_id
from app.models import Image, MLModel, Prediction, PredictionResult, User
from app.services import error_risk, lung_focus
from app.services.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from app.services.executor import InferenceExecutor
from app.services.model_registry import ModelManager, resolve_models
from app.services.storage import FileStore, is_sha256
from ml import CLASSES
from ml.cam.overlay import outline_png, overlay_png
from ml.imageio import decode_image
from ml.lung_crop import Box
from ml.lung_focus import LungFocus

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
OVERLAY_ALPHA = 0.5
OVERLAY_MAX_SIDE = 1024
OVERLAY_COLORMAPS = ("inferno", "viridis", "jet")
"""The heat maps' colour maps a reader can choose; the default first (colour-blind safe, perceptually uniform)."""
OVERLAY_COLORMAP = OVERLAY_COLORMAPS[0]


# ------------------------------------------------------------------------------------ URLs
def image_url(image_sha256: str) -> str:
    """Authenticated URL of the decoded grayscale film (PNG)."""
    return f"{API_PREFIX}/images/{image_sha256}.png"


def overlay_url(prediction_id: int, model_id: int, cls: str) -> str:
    """Authenticated URL of one class's CAM overlay (PNG, the film's aspect, longest side ≤ 1024 px)."""
    return f"{API_PREFIX}/predictions/{prediction_id}/overlays/{model_id}/{cls}.png"


def lung_outline_url(prediction_id: int, model_id: int) -> str:
    """Authenticated URL of a result's lung outline layer (transparent PNG of its overlays' exact size)."""
    return f"{API_PREFIX}/predictions/{prediction_id}/lung-outline/{model_id}.png"


def overlay_classes(result: PredictionResult) -> list[str]:
    """Classes in display order: the predicted class first, then by decreasing probability."""
    rest = sorted((c for c in CLASSES if c != result.predicted_class), key=lambda c: -result.probabilities[c])
    return [result.predicted_class, *rest]


# ---------------------------------------------------------------------------------- writing
def create_prediction(
    *,
    session: Session,
    settings: Settings,
    store: FileStore,
    manager: ModelManager,
    executor: InferenceExecutor,
    data: bytes,
    filename: str | None,
    models: str | None,
    user: User | None,
) -> Prediction:
    """Decode `data`, then through the executor's queue: segment its lungs, run the requested models
    (see `resolve_models`) with that mask, score each result's lung focus; then store everything
    (mask included), make the files durable in one group sync, commit.

    Raises ml.imageio errors (415/422/413), PayloadTooLargeError, InvalidInputError (unknown model id),
    ModelUnavailableError, OverloadedError (the queue is full: 503). Nothing is left behind on failure.
    """
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLargeError(too_large_message(settings.max_upload_bytes))
    targets = resolve_models(session=session, spec=models)
    # End the read transaction: the connection goes back to the pool while the film waits in the
    # executor's queue (minutes for models=all under load), so waiting uploads never exhaust the pool.
    session.commit()
    decoded = decode_image(data, max_pixels=settings.max_pixels)
    segmenter = manager.segmenter()
    (film,) = executor.run([decoded.gray], [manager.get(model) for model in targets], segmenter)
    assert film.lung_mask is not None
    outputs = list(zip(targets, film.predictions, strict=True))

    batch = store.batch()
    try:
        image_sha = store.put_image(batch, original=data)
        cam_shas = [store.put_cam(batch, out.cam_raw) for _model, out in outputs]
        mask_sha = store.put_mask(batch, film.lung_mask)
        batch.sync()  # every file of this result is on disk before a row names it
        image = _get_or_create_image(
            session, image_sha, decoded.format, decoded.width, decoded.height, len(data), decoded.meta
        )
        prediction = Prediction(
            image_id=image.id, filename=_clean_filename(filename), created_by_id=user.id if user else None
        )
        session.add(prediction)
        session.flush()
        for (model, out), cam_sha in zip(outputs, cam_shas, strict=True):
            assert out.lung_focus is not None and out.predicted_lung_focus is not None
            session.add(
                PredictionResult(
                    prediction_id=prediction.id,
                    model_id=model.id,
                    model_version=model.version,
                    checkpoint_sha256=model.checkpoint_sha256,
                    architecture=model.architecture,
                    probabilities={c: out.probabilities[c] for c in CLASSES},
                    predicted_class=out.predicted_class,
                    top_probability=out.probabilities[out.predicted_class],
                    cam_method=out.cam_method,
                    cam_sha256=cam_sha,
                    lung_focus=lung_focus.stored_lung_focus(out.lung_focus),
                    lung_focus_score=out.predicted_lung_focus.meaningful,
                    lung_mask_sha256=mask_sha,
                    lungseg_sha256=film.lungseg_sha256,
                    input_box=out.input_box.as_dict() if out.input_box is not None else None,
                    **error_risk.stored_columns(out),
                )
            )
        session.commit()
    except BaseException:
        session.rollback()
        removed = batch.discard(lambda path: _file_referenced(session, store, path))
        if removed:
            log.info("removed %d file(s) of a failed prediction", len(removed))
        raise
    session.refresh(prediction)
    return prediction


def too_large_message(limit: int) -> str:
    return f"the file is larger than the {limit / (1024 * 1024):.1f} MiB upload limit"


def _clean_filename(name: str | None) -> str | None:
    """The upload's base name (no folders, no control characters: PostgreSQL refuses NUL, terminals and
    logs misread the rest), at most 255 characters; None when nothing is left."""
    if not name:
        return None
    printable = "".join(c for c in name if c.isprintable() or c == " ")
    return Path(printable.replace("\\", "/")).name[:255] or None


def _get_or_create_image(
    session: Session, sha: str, fmt: str, width: int, height: int, size: int, meta: dict[str, object]
) -> Image:
    """The row of this content address, inserted if new. Concurrent uploads of the same bytes both
    succeed: INSERT ... ON CONFLICT DO NOTHING, then read (no savepoint needed; pysqlite's legacy
    transaction handling does not support savepoints reliably)."""
    image = session.scalar(select(Image).where(Image.sha256 == sha))
    if image is not None:
        return image
    values = {"sha256": sha, "format": fmt, "width": width, "height": height, "byte_size": size, "meta": meta}
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        session.execute(insert(Image).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    else:
        session.add(Image(**values))
        session.flush()
    image = session.scalar(select(Image).where(Image.sha256 == sha))
    assert image is not None
    return image


def _file_referenced(session: Session, store: FileStore, path: Path) -> bool:
    """Whether a committed row names this file (so a failed request must not delete it)."""
    sha = path.name.split(".", 1)[0]
    try:
        if path.parent.parent.name == "cams":
            return bool(session.scalar(select(exists().where(PredictionResult.cam_sha256 == sha))))
        if path.parent.parent.name == "masks":
            return bool(session.scalar(select(exists().where(PredictionResult.lung_mask_sha256 == sha))))
        return bool(session.scalar(select(exists().where(Image.sha256 == sha))))
    except Exception:  # cannot tell: keep the file (an orphan is harmless, a dangling row is not)
        session.rollback()
        return True


def remove_orphan_files(*, session: Session, store: FileStore) -> list[Path]:
    """Remove what an upload cut between writing its files and committing its rows left behind (files
    under images/, cams/ and masks/ that no row names, temp files). Only while no other process can be
    mid-upload (app.main.build_context calls it holding the data dir's exclusive lock)."""
    image_shas = set(session.scalars(select(Image.sha256)))
    cam_shas = set(session.scalars(select(PredictionResult.cam_sha256)))
    mask_shas = {sha for sha in session.scalars(select(PredictionResult.lung_mask_sha256)) if sha is not None}
    return store.remove_unreferenced(image_shas=image_shas, cam_shas=cam_shas, mask_shas=mask_shas)


# ---------------------------------------------------------------------------------- reading
def get_prediction(*, session: Session, prediction_id: int) -> Prediction:
    prediction = session.get(Prediction, prediction_id) if is_row_id(prediction_id) else None
    if prediction is None:
        raise NotFoundError(f"prediction {prediction_id} not found")
    return prediction


def get_result(*, session: Session, prediction_id: int, model_id: int) -> PredictionResult:
    if not is_row_id(prediction_id):
        raise NotFoundError(f"prediction {prediction_id} not found")
    if not is_row_id(model_id):
        raise NotFoundError(f"prediction {prediction_id} has no result of model {model_id}")
    result = session.scalar(
        select(PredictionResult).where(
            PredictionResult.prediction_id == prediction_id, PredictionResult.model_id == model_id
        )
    )
    if result is None:
        if session.get(Prediction, prediction_id) is None:
            raise NotFoundError(f"prediction {prediction_id} not found")
        raise NotFoundError(f"prediction {prediction_id} has no result of model {model_id}")
    return result


@dataclass
class ResultView:
    """A result with the model's identity, the overlay URLs in display order and its lung focus at the
    configured threshold (for API and pages)."""

    result: PredictionResult
    model: MLModel
    overlays: dict[str, str]
    lung_focus: LungFocus | None
    """The predicted class's lung focus; None: not computed (stored before lung focus existed)."""
    lung_focus_by_class: dict[str, LungFocus] | None
    lung_outline_url: str | None
    input_box: Box | None
    risk: error_risk.RiskView
    """Its error risk and warnings (`app.services.error_risk`)."""


def result_views(prediction: Prediction, *, threshold: float) -> list[ResultView]:
    views = []
    for r in prediction.results:
        by_class = lung_focus.by_class(r, threshold)
        focus = by_class.get(r.predicted_class) if by_class is not None else None
        views.append(
            ResultView(
                result=r,
                model=r.model,
                overlays={c: overlay_url(prediction.id, r.model_id, c) for c in overlay_classes(r)},
                lung_focus=focus,
                lung_focus_by_class=by_class,
                lung_outline_url=lung_outline_url(prediction.id, r.model_id) if by_class is not None else None,
                input_box=_box(r),
                risk=error_risk.view(r, lung_flagged=focus is not None and focus.flagged),
            )
        )
    return views


def _box(result: PredictionResult) -> Box | None:
    return Box.from_dict(result.input_box) if result.input_box else None


def film_png(*, session: Session, store: FileStore, image_sha256: str) -> bytes:
    """The decoded grayscale film of a stored image, as PNG bytes."""
    if not is_sha256(image_sha256) or session.scalar(select(Image.id).where(Image.sha256 == image_sha256)) is None:
        raise NotFoundError("image not found")
    try:
        return store.film_png(image_sha256)
    except FileNotFoundError:
        raise NotFoundError("image file missing from the data directory") from None


def render_overlay_png(
    *,
    session: Session,
    store: FileStore,
    prediction_id: int,
    model_id: int,
    cls: str,
    colormap: str = OVERLAY_COLORMAP,
) -> bytes:
    """PNG of the film with `cls`'s CAM blended on top in `colormap` (one of `OVERLAY_COLORMAPS`;
    rendered once, then served from the cache)."""
    if cls not in CLASSES:
        raise NotFoundError(f"unknown class {cls!r}; expected one of {', '.join(CLASSES)}")
    if colormap not in OVERLAY_COLORMAPS:
        raise InvalidInputError(f"unknown colour map {colormap!r}; expected one of {', '.join(OVERLAY_COLORMAPS)}")
    result = get_result(session=session, prediction_id=prediction_id, model_id=model_id)
    image_sha = result.prediction.image.sha256
    box = _box(result)  # a lung-crop model's map covers only the crop it saw
    key = f"{image_sha}:{result.cam_sha256}:{cls}:{OVERLAY_ALPHA}:{colormap}:{OVERLAY_MAX_SIDE}"
    if box is not None:
        key += f":box={box.top},{box.left},{box.bottom},{box.right}"
    cached = store.read_cache(key)
    if cached is not None:
        return cached
    try:
        gray = store.read_gray(image_sha)
        cam = store.read_cam(result.cam_sha256)
    except FileNotFoundError:
        raise NotFoundError("stored image or CAM missing from the data directory") from None
    if cam.ndim != 3 or cam.shape[0] != len(CLASSES):
        raise InvalidInputError(f"stored CAM has unexpected shape {cam.shape}")
    png = overlay_png(
        gray,
        cam[CLASSES.index(cls)],
        alpha=OVERLAY_ALPHA,
        colormap=colormap,
        max_side=OVERLAY_MAX_SIDE,
        box=box,
    )
    store.put_cache(key, png)
    return png


def render_lung_outline_png(*, session: Session, store: FileStore, prediction_id: int, model_id: int) -> bytes:
    """The lung outline layer of one result: a transparent PNG exactly the size of its overlays, the
    lung mask's outline in cyan (and a lung-crop model's box in white). Rendered once, then cached.
    404 when the result has no lung mask (stored before lung focus existed)."""
    result = get_result(session=session, prediction_id=prediction_id, model_id=model_id)
    mask_sha = result.lung_mask_sha256
    if mask_sha is None:
        raise NotFoundError(
            f"prediction {prediction_id} has no lung outline for model {model_id}: lung focus was not computed "
            "for it (stored before lung focus existed)"
        )
    image = result.prediction.image
    box = _box(result)
    box_key = "none" if box is None else f"{box.top},{box.left},{box.bottom},{box.right}"
    key = f"lung-outline:{mask_sha}:{image.height}x{image.width}:{box_key}:{OVERLAY_MAX_SIDE}"
    cached = store.read_cache(key)
    if cached is not None:
        return cached
    try:
        mask = store.read_mask(mask_sha)
    except FileNotFoundError:
        raise NotFoundError("stored lung mask missing from the data directory") from None
    png = outline_png(mask, image.height, image.width, max_side=OVERLAY_MAX_SIDE, box=box)
    store.put_cache(key, png)
    return png
