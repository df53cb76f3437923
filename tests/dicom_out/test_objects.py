"""The DICOM objects of a result: SR (and the amended SR), SEG and SC of a real film, run through the
bundled model and lung segmenter, validated by dciodvfy (dicom3tools) and read back."""

from __future__ import annotations

import datetime
import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from app.dicom_out.content import DISCLAIMER, AiResult, Review, SourceFilm, new_uid
from app.dicom_out.sc import build_sc
from app.dicom_out.seg import build_seg, mask_at_film_size
from app.dicom_out.sr import build_sr, read_report
from ml.imageio import decode_image
from ml.inference import Predictor, analyze_film
from ml.lungseg import LungSegmenter
from tests.support.dicom_films import dicom_film

COVID_FILM = "images/cohen/01E392EE-69F9-4E33-BFCE-E5C968654078.jpg"


def dciodvfy(ds: Dataset, tmp_path: Path) -> list[str]:
    """dciodvfy's error lines for `ds` (written as a Part 10 file); an empty list means valid."""
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert lines and "Error - " not in lines[0], lines  # first line names the IOD it checked against
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture(scope="module")
def pipeline() -> tuple[Predictor, LungSegmenter]:
    segmenter = LungSegmenter.from_checkpoint()
    return Predictor.from_checkpoint(segmenter=segmenter), segmenter


@pytest.fixture(scope="module")
def analyse(
    pipeline: tuple[Predictor, LungSegmenter],
) -> Callable[[bytes], tuple[SourceFilm, AiResult, np.ndarray, np.ndarray]]:
    predictor, segmenter = pipeline

    def run(data: bytes) -> tuple[SourceFilm, AiResult, np.ndarray, np.ndarray]:
        decoded = decode_image(data, max_pixels=10**8)
        film = analyze_film(decoded.gray, [predictor], segmenter)
        mask, (out,) = film.lung_mask, film.predictions
        assert mask is not None and out.predicted_lung_focus is not None
        focus = out.predicted_lung_focus.at(0.5)
        if decoded.format == "dicom":
            source = SourceFilm.from_dicom(data, decoded.gray)
        else:
            source = SourceFilm.from_raster(decoded.gray, image_sha256="ab" * 32)
        result = AiResult(
            probabilities=out.probabilities,
            predicted_class=out.predicted_class,
            model_name="cxr_default",
            model_version=1,
            architecture=predictor.arch,
            checkpoint_sha256=str(predictor.checkpoint_sha256),
            cam_method=out.cam_method,
            lung_focus_score=focus.score,
            lung_focus_flagged=focus.flagged,
            lung_focus_threshold=0.5,
            lungseg_sha256=segmenter.checkpoint_sha256,
            tracking_uid=new_uid(),
            label="prediction 1 / model 1",
            warnings=("test warning",),
        )
        return source, result, mask, out.cam_raw

    return run


REVIEW = Review(
    verdict="reject",
    reasons=("outside_lungs", "text_or_marker"),
    comment="Heat on the side marker — not the lungs (ü)",
    reviewer="dr.house",
    diagnosis="normal",
    given_at=datetime.datetime.now(datetime.UTC),
)


def build_all(source: SourceFilm, result: AiResult, mask: np.ndarray, cam: np.ndarray) -> dict[str, Dataset]:
    sr = build_sr(source=source, result=result, series_instance_uid=new_uid(), sop_instance_uid=new_uid())
    amended = build_sr(
        source=source,
        result=result,
        series_instance_uid=sr.SeriesInstanceUID,
        sop_instance_uid=new_uid(),
        instance_number=2,
        review=REVIEW,
        previous=sr,
    )
    seg = build_seg(
        source=source, lung_mask=mask, lungseg_sha256=result.lungseg_sha256, series_instance_uid=new_uid(),
        sop_instance_uid=new_uid(),
    )  # fmt: skip
    sc = build_sc(source=source, result=result, cam_raw=cam, series_instance_uid=new_uid(), sop_instance_uid=new_uid())
    return {"sr": sr, "amended": amended, "seg": seg, "sc": sc}


def round_trip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_every_object_of_a_dicom_film_validates_and_joins_its_study(
    modality: str, analyse: Callable, cxr_data_dir: Path, tmp_path: Path
) -> None:
    data = dicom_film(cxr_data_dir / COVID_FILM, modality=modality)
    source, result, mask, cam = analyse(data)
    objects = build_all(source, result, mask, cam)
    assert dciodvfy(pydicom.dcmread(io.BytesIO(data)), tmp_path) == []  # the test film itself is valid
    for name, ds in objects.items():
        assert dciodvfy(ds, tmp_path) == [], name
        ds = round_trip(ds)
        assert ds.StudyInstanceUID == source.header.StudyInstanceUID, name
        assert ds.PatientID == source.header.PatientID and ds.AccessionNumber == "ACC0001", name
        assert ds.SeriesInstanceUID != source.header.SeriesInstanceUID, name
    series = {objects[k].SeriesInstanceUID for k in ("sr", "seg", "sc")}
    assert len(series) == 3 and objects["amended"].SeriesInstanceUID == objects["sr"].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in objects.values()} | {source.header.SOPInstanceUID}) == 5
    src_uid = source.header.SOPInstanceUID
    assert objects["sc"].SourceImageSequence[0].ReferencedSOPInstanceUID == src_uid
    assert objects["seg"].ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src_uid
    evidence = objects["sr"].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src_uid


def test_sr_content_reads_back_and_the_amended_sr_carries_the_review(analyse: Callable, cxr_data_dir: Path) -> None:
    source, result, mask, cam = analyse(dicom_film(cxr_data_dir / COVID_FILM))
    objects = build_all(source, result, mask, cam)
    first = read_report(round_trip(objects["sr"]))
    assert first.probabilities == pytest.approx(result.probabilities)
    assert first.predicted_class == result.predicted_class
    assert first.algorithm_name == "cxr-review cxr_default" and first.algorithm_version == "1"
    assert first.checkpoint_sha256 == result.checkpoint_sha256
    assert first.lung_focus_score == pytest.approx(result.lung_focus_score)
    assert first.lung_focus_flagged == result.lung_focus_flagged
    assert first.warnings == ["test warning"]
    assert (first.verdict, first.verified, first.predecessor_uids) == (None, False, [])
    amended_ds = round_trip(objects["amended"])
    amended = read_report(amended_ds)
    assert amended.probabilities == first.probabilities  # the AI result is kept as it was
    assert amended.verdict == "reject" and amended.reasons == ["outside_lungs", "text_or_marker"]
    assert amended.diagnosis == "normal" and amended.comment == REVIEW.comment
    assert amended.verified and amended.verifying_observer == "dr.house"
    assert amended.predecessor_uids == [objects["sr"].SOPInstanceUID]
    assert amended_ds.InstanceNumber == 2 and amended_ds.CompletionFlag == "COMPLETE"
    assert isinstance(hd.sr.srread(io.BytesIO(_bytes(amended_ds))), hd.sr.ComprehensiveSR)


def test_seg_holds_the_lung_mask_at_the_films_size_and_sc_the_legend(analyse: Callable, cxr_data_dir: Path) -> None:
    source, result, mask, cam = analyse(dicom_film(cxr_data_dir / COVID_FILM))
    objects = build_all(source, result, mask, cam)
    seg = hd.seg.segread(io.BytesIO(_bytes(objects["seg"])))
    pixels = seg.pixel_array  # one frame: the mask on the source's pixel grid
    rows, cols = int(source.header.Rows), int(source.header.Columns)
    expected = mask_at_film_size(mask, rows, cols)
    assert expected.any() and np.array_equal(np.asarray(pixels).reshape(rows, cols).astype(bool), expected)
    assert seg.SegmentSequence[0].SegmentLabel == "Lungs"
    sc = round_trip(objects["sc"])
    assert sc.BurnedInAnnotation == "YES" and DISCLAIMER in sc.ImageComments
    assert sc.PhotometricInterpretation == "RGB" and sc.Columns == cols and sc.Rows > rows  # the legend band below
    band = sc.pixel_array[rows + 2 :]
    assert (band.max(axis=2) > 200).any()  # text and colour bar drawn into the band


def test_a_png_upload_gets_a_new_study_with_a_secondary_capture_of_the_film(
    analyse: Callable, cxr_data_dir: Path, tmp_path: Path
) -> None:
    source, result, mask, cam = analyse((cxr_data_dir / COVID_FILM).read_bytes())
    assert source.synthetic is not None
    assert dciodvfy(source.synthetic, tmp_path) == []
    for name, ds in build_all(source, result, mask, cam).items():
        assert dciodvfy(ds, tmp_path) == [], name
        assert ds.StudyInstanceUID == source.synthetic.StudyInstanceUID
    assert read_report(round_trip(build_all(source, result, mask, cam)["sr"])).predicted_class == result.predicted_class


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
