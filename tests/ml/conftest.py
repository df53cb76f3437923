"""Fixtures of the ML-core tests: real films, small manifests of real films, and one probe per architecture.

Building and running the 13 networks is the expensive part of this suite, so every architecture is
built and run **once per session** (`arch_probe`) and the observations the tests need are kept
(small tensors only; the network itself is dropped, so the big VGGs do not pile up in memory).
"""

from __future__ import annotations

import csv
import gc
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ml import CLASSES
from ml.cam import CAMOutput, explain
from ml.checkpoints import base_meta
from ml.data import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Record, read_manifest
from ml.inference import Prediction, Predictor
from ml.registry import ArchSpec, get_arch
from ml.transforms import load_grayscale, to_model_input

# One intra-op thread unless told otherwise. On a machine whose cores are busy (a training run, other
# test processes) two OpenMP threads wait on each other and a forward pass gets 10-40x slower than on
# one thread (measured: densenet201 at batch 1, 23 s vs 0.3 s); on an idle machine one thread costs
# less than 2x. Set CXR_TEST_TORCH_THREADS to use more.
torch.set_num_threads(int(os.environ.get("CXR_TEST_TORCH_THREADS", "1")))

BIG_ARCHS = frozenset({"vgg16", "vgg19", "inception_resnet_v2", "densenet201", "resnet101"})
"""Run at batch 1 to keep the registry tests within about two minutes on two busy cores."""


@pytest.fixture(scope="session")
def real_records(cxr_data_dir: Path) -> list[Record]:
    return read_manifest(cxr_data_dir)


@pytest.fixture(scope="session")
def adult_records(cxr_adult_data_dir: Path) -> list[Record]:
    return read_manifest(cxr_adult_data_dir)


def pick_records(records: Iterable[Record], per_group: dict[tuple[str, str], int]) -> list[Record]:
    """The first n records (sorted by path, so the choice is stable) of each (split, label) group."""
    ordered = sorted(records, key=lambda r: str(r.path))
    chosen: list[Record] = []
    for (split, label), n in per_group.items():
        group = [r for r in ordered if r.split == split and r.label == label]
        assert len(group) >= n, f"the shared dataset has only {len(group)} {split}/{label} images"
        chosen += group[:n]
    return chosen


def write_manifest(folder: Path, records: Iterable[Record], *, absolute: bool = True) -> Path:
    """A manifest.csv in `folder` whose paths point at the records' (real) files: no image is copied."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        w.writeheader()
        for r in records:
            w.writerow(
                {
                    "path": str(r.path) if absolute else r.path.name,
                    "label": r.label,
                    "source": r.source,
                    "patient_id": r.patient_id,
                    "view": r.view,
                    "split": r.split,
                    "age": "" if r.age is None else str(r.age),
                    "age_group": r.age_group,
                }
            )
    return path


SMALL_SUBSET = {
    **{("train", c): 4 for c in CLASSES},
    **{("val", c): 2 for c in CLASSES},
    **{("test", c): 3 for c in CLASSES},
}
"""36 real films: enough for every class in every split, few enough to train and evaluate in seconds."""


@pytest.fixture(scope="session")
def small_dataset(real_records: list[Record], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder holding only a manifest that points (by absolute path) at 36 real films."""
    folder = tmp_path_factory.mktemp("small-cxr")
    write_manifest(folder, pick_records(real_records, SMALL_SUBSET))
    return folder


@pytest.fixture(scope="session")
def real_films(real_records: list[Record]) -> list[np.ndarray]:
    """Two real films as H×W uint8: a pediatric Kermany film and an adult COVID-19 film (Hannover)."""
    kermany = pick_records(real_records, {("test", "bacterial"): 1})[0]
    hannover = pick_records(real_records, {("test", "covid19"): 1})[0]
    return [load_grayscale(str(kermany.path)), load_grayscale(str(hannover.path))]


# --------------------------------------------------------------------------- one probe per architecture


@dataclass
class ArchProbe:
    """What one run of a freshly built architecture showed (tensors are B×..., detached, on CPU)."""

    spec: ArchSpec
    parameters: int
    batch: int
    input_shape: tuple[int, ...]
    cam_layer_type: str
    classifier_type: str
    classifier_outputs: int
    cam_layer_output: torch.Tensor
    """What a forward hook on `spec.cam_layer` saw during `explain`."""
    features: torch.Tensor
    """What `forward_features` returned during the same `explain` call."""
    cam: CAMOutput
    head_logits: torch.Tensor
    """`forward_head(features)`: the logits the network itself computes from A."""
    predictions: list[Prediction]
    """`Predictor` (built from the in-memory model + meta) on the same films."""


def _run_probe(name: str, films: list[np.ndarray]) -> ArchProbe:
    spec = get_arch(name)
    torch.manual_seed(0)
    model = spec.build(pretrained=False).eval()
    batch = 1 if name in BIG_ARCHS else 2
    grays = films[:batch]
    x = to_model_input(grays, spec.input_size, spec.mean, spec.std)
    cam_layer = model.get_submodule(spec.cam_layer)
    classifier = model.get_submodule(spec.classifier)

    seen_layer: list[torch.Tensor] = []
    seen_features: list[torch.Tensor] = []
    real_forward_features = model.forward_features

    def spy_forward_features(inp: torch.Tensor) -> torch.Tensor:
        # the real method runs; we only keep what it returned
        out = real_forward_features(inp)
        seen_features.append(out.detach().clone())
        return out

    handle = cam_layer.register_forward_hook(lambda _m, _i, out: seen_layer.append(out.detach().clone()))
    model.forward_features = spy_forward_features  # type: ignore[method-assign]
    try:
        cam = explain(model, spec, x)
    finally:
        handle.remove()
        del model.forward_features
    assert len(seen_layer) == 1 and len(seen_features) == 1, "explain must run the backbone exactly once"
    with torch.no_grad():
        head_logits = model.forward_head(seen_features[0])

    meta = base_meta(spec, input_size=spec.input_size, scenario_classes=CLASSES)
    predictions = Predictor(model, meta).predict(grays)
    probe = ArchProbe(
        spec=spec,
        parameters=sum(p.numel() for p in model.parameters()),
        batch=batch,
        input_shape=tuple(x.shape),
        cam_layer_type=type(cam_layer).__name__,
        classifier_type=type(classifier).__name__,
        classifier_outputs=int(getattr(classifier, "out_features", getattr(classifier, "out_channels", -1))),
        cam_layer_output=seen_layer[0],
        features=seen_features[0],
        cam=cam,
        head_logits=head_logits,
        predictions=predictions,
    )
    del model, cam_layer, classifier
    gc.collect()
    return probe


@pytest.fixture(scope="session")
def arch_probe(real_films: list[np.ndarray]) -> Callable[[str], ArchProbe]:
    """`arch_probe(name)`: build the architecture (seed 0, random weights), explain real films, cache."""
    cache: dict[str, ArchProbe] = {}

    def get(name: str) -> ArchProbe:
        if name not in cache:
            cache[name] = _run_probe(name, real_films)
        return cache[name]

    return get


# --------------------------------------------------------------------------- an offline network


@pytest.fixture
def unresponsive_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Route HTTP(S) through a local proxy that accepts connections and never answers.

    This is the network of a firewalled machine that drops packets: the worst case for a download
    (DNS failures, as on this machine, fail at once and prove nothing about timeouts). It also makes
    sure no test ever downloads weights, even on a machine with internet.
    """
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # keep it open, say nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, url)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "")
    try:
        yield url
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()
