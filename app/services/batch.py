"""`cxr-review predict`: the prediction pipeline over files and folders of PNG/JPEG/DICOM films.

The same steps as an upload (decode with the same limits, then the same inference executor as the web
service, `app.services.executor`: micro-batches through `ml.inference.analyze_films`, lung mask once
per film, each requested model with that mask, lung focus; the next films are decoded while earlier
ones run, and the queue bounds how many are in memory), with the models resolved from the
registry as the API's `models` field is, but nothing is stored in the database: the output is a CSV
with one row per film and model (probabilities, predicted class, CAM method, lung focus, model
version, checkpoint and image sha256). A file that cannot be read gets a row with status `error` and
the reason, is counted, and is listed on stderr: never skipped silently. Optional: each result's
heat-map overlay (PNG) and DICOM SR.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.services.errors import InvalidInputError
from app.services.storage import sha256_bytes
from ml import CLASSES

CSV_FIELDS = (
    "file",
    "status",
    "error",
    "image_sha256",
    "format",
    "width",
    "height",
    "model_id",
    "model_name",
    "model_version",
    "architecture",
    "checkpoint_sha256",
    "predicted_class",
    *(f"p_{c}" for c in CLASSES),
    "cam_method",
    "lung_focus_score",
    "lung_focus_flagged",
    "lung_focus_threshold",
    "lungseg_sha256",
    "error_risk",
    "risk_warnings",
    "warnings",
    "overlay",
    "dicom_sr",
)


@dataclass
class BatchSummary:
    films: int = 0
    rows: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)


def collect_files(inputs: Iterable[Path]) -> list[Path]:
    """Files given, and every file under the folders given (sorted); a missing path is an error."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"no such file or folder: {path}")
    return files


def run(
    settings: Settings,
    *,
    inputs: list[Path],
    csv_path: Path,
    models: str | None,
    overlays: Path | None,
    dicom_sr: Path | None,
    progress: bool = True,
) -> int:
    """The command. Exit status 0 when every file was read, 1 when some were not (they are in the CSV)."""
    from app.db import make_engine, make_session_factory, upgrade_database
    from app.services.model_registry import ModelManager, resolve_models, sync_models

    files = collect_files(inputs)
    if not files:
        raise InvalidInputError("no files to read in " + ", ".join(map(str, inputs)))
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with make_session_factory(engine)() as session:
            sync_models(session=session, settings=settings)
            targets = resolve_models(session=session, spec=models)
            session.expunge_all()
    finally:
        engine.dispose()
    manager = ModelManager(lungseg_checkpoint=settings.resolved_lungseg_checkpoint)
    for folder in (overlays, dicom_sr):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    rows: list[dict[str, Any]] = []
    iterator: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="predict", unit="film", file=sys.stderr)
    from app.services.executor import InferenceExecutor

    executor = InferenceExecutor.from_settings(settings)
    predictors = [manager.get(model) for model in targets]
    in_flight: deque[_Pending] = deque()
    window = executor.max_queue  # films decoded ahead of their results

    def finish(pending: _Pending) -> None:
        film_rows = pending.rows(settings, targets, overlays, dicom_sr)
        if film_rows[0]["status"] == "error":
            summary.unreadable[pending.file] = film_rows[0]["error"]
        else:
            summary.films += 1
        rows.extend(film_rows)

    try:
        for path in iterator:
            pending = _read(path, settings)
            if pending.decoded is not None:
                (pending.future,) = executor.submit([pending.decoded.gray], predictors, manager.segmenter(), wait=True)
            in_flight.append(pending)
            while len(in_flight) > window or (in_flight and in_flight[0].done):
                finish(in_flight.popleft())
        while in_flight:
            finish(in_flight.popleft())
    finally:
        executor.close()
    _write_csv(csv_path, rows)
    summary.rows = len(rows)
    counts = f"{summary.films} film(s) read, {len(summary.unreadable)} unreadable"
    print(f"predict: {counts}; {summary.rows} row(s) in {csv_path}")
    for name, reason in summary.unreadable.items():
        print(f"unreadable: {name}: {reason}", file=sys.stderr)
    return 1 if summary.unreadable else 0


@dataclass
class _Pending:
    """A film read and decoded (or not: `base` then holds its error row), and its result to come."""

    file: str
    base: dict[str, Any]
    data: bytes = b""
    decoded: Any = None
    future: Future[Any] | None = None

    @property
    def done(self) -> bool:
        return self.future is None or self.future.done()

    def rows(
        self, settings: Settings, targets: list[Any], overlays: Path | None, dicom_sr: Path | None
    ) -> list[dict[str, Any]]:
        if self.future is None:
            return [self.base]
        return _film_rows(self, self.future.result(), settings, targets, overlays, dicom_sr)


def _read(path: Path, settings: Settings) -> _Pending:
    from ml.imageio import ImageDecodeError, decode_image

    base: dict[str, Any] = {"file": str(path)}
    try:
        data = path.read_bytes()
        if len(data) > settings.max_upload_bytes:
            raise ImageDecodeError(
                f"the file is larger than the {settings.max_upload_bytes} byte limit (CXR_MAX_UPLOAD_BYTES)"
            )
        decoded = decode_image(data, max_pixels=settings.max_pixels)
    except (OSError, ImageDecodeError) as exc:
        return _Pending(str(path), {**base, "status": "error", "error": str(exc)})
    base.update(
        image_sha256=sha256_bytes(data), format=decoded.format, width=decoded.width, height=decoded.height,
        warnings=";".join(decoded.meta.get("decoder_warnings", [])),
    )  # fmt: skip
    return _Pending(str(path), base, data, decoded)


def _film_rows(
    pending: _Pending,
    film: Any,
    settings: Settings,
    targets: list[Any],
    overlays: Path | None,
    dicom_sr: Path | None,
) -> list[dict[str, Any]]:
    path, base, data, decoded = Path(pending.file), pending.base, pending.data, pending.decoded
    rows = []
    for model, out in zip(targets, film.predictions, strict=True):
        score = out.predicted_lung_focus
        assert score is not None  # a segmenter was given: every result has its lung focus
        focus = score.at(settings.lung_focus_threshold)
        row = {
            **base,
            "status": "ok",
            "error": "",
            "model_id": model.id,
            "model_name": model.name,
            "model_version": model.version,
            "architecture": model.architecture,
            "checkpoint_sha256": model.checkpoint_sha256,
            "predicted_class": out.predicted_class,
            **{f"p_{c}": out.probabilities[c] for c in CLASSES},
            "cam_method": out.cam_method,
            "lung_focus_score": focus.score,
            "lung_focus_flagged": "true" if focus.flagged else "false",
            "lung_focus_threshold": settings.lung_focus_threshold,
            "lungseg_sha256": film.lungseg_sha256,
            "error_risk": out.error_risk,
            "risk_warnings": ";".join(w.code for w in out.warnings),
        }
        stem = f"{path.stem}.{base['image_sha256'][:12]}.model{model.id}"
        if overlays is not None:
            from ml.cam.overlay import overlay_png

            target = overlays / f"{stem}.{out.predicted_class}.png"
            png = overlay_png(decoded.gray, out.cam_raw[CLASSES.index(out.predicted_class)], box=out.input_box)
            _write_atomic(target, png)
            row["overlay"] = str(target)
        if dicom_sr is not None:
            row["dicom_sr"] = str(_write_sr(dicom_sr, stem, data, decoded, model, out, row, film.lungseg_sha256))
        rows.append(row)
    return rows


def _write_sr(
    folder: Path, stem: str, data: bytes, decoded: Any, model: Any, out: Any, row: dict[str, Any], lungseg: str | None
) -> Path:
    from app.dicom_out.content import AiResult, SourceFilm, new_uid
    from app.dicom_out.sr import build_sr

    if decoded.format == "dicom":
        source = SourceFilm.from_dicom(data, decoded.gray)
    else:  # the SR must reference a DICOM image: a Secondary Capture of the film, written beside it
        source = SourceFilm.from_raster(decoded.gray, image_sha256=row["image_sha256"])
        assert source.synthetic is not None
        _write_atomic(folder / f"{stem}.film.dcm", _part10(source.synthetic))
    result = AiResult(
        probabilities=out.probabilities, predicted_class=out.predicted_class, model_name=model.name,
        model_version=model.version, architecture=model.architecture, checkpoint_sha256=model.checkpoint_sha256,
        cam_method=out.cam_method, lung_focus_score=row["lung_focus_score"],
        lung_focus_flagged=row["lung_focus_flagged"] == "true", lung_focus_threshold=row["lung_focus_threshold"],
        lungseg_sha256=lungseg, tracking_uid=new_uid(), label=f"{stem}"[:64], input_box=out.input_box,
    )  # fmt: skip
    sr = build_sr(source=source, result=result, series_instance_uid=new_uid(), sop_instance_uid=new_uid())
    target = folder / f"{stem}.sr.dcm"
    _write_atomic(target, _part10(sr))
    return target


def _part10(ds: Any) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """All rows at once through a temp file: an interrupted run leaves no half-written CSV."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, buf.getvalue().encode("utf-8"))
