"""What every ML command shares: the user-error exception, number types for argparse, the `--data` option
and the default dataset folders. Torch-free, so `--help` stays fast."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ml.dataset_dirs import parse_dataset_dirs


class CLIError(Exception):
    """A user error: printed as `error: ...` with exit status 2, no traceback."""


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_dataset_dirs() -> list[str]:
    """The manifest folders used when no `--data` is given: `$CXR_DATASET_DIRS` (a JSON list, or a list
    separated by os.pathsep), else `$CXR_DATASET_DIR`, else both `../shared/data/cxr` and
    `../shared/data/cxr-adult`."""
    try:
        listed = parse_dataset_dirs(os.environ.get("CXR_DATASET_DIRS", ""))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if listed:
        return listed
    if os.environ.get("CXR_DATASET_DIR"):
        return [os.environ["CXR_DATASET_DIR"]]
    shared = project_root().parent / "shared" / "data"
    return [str(shared / "cxr"), str(shared / "cxr-adult")]


DATA_HELP = (
    "dataset folder with manifest.csv; repeat for several, read together (default: $CXR_DATASET_DIRS, "
    "else $CXR_DATASET_DIR, else ../shared/data/cxr and ../shared/data/cxr-adult)"
)


def add_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", default=None, metavar="DIR", help=DATA_HELP)


def _number_type(
    parse: Callable[[str], float], noun: str, ok: Callable[[float], bool], rule: str
) -> Callable[[str], float]:
    """An argparse `type=`: `parse` the text (else "'x' is not <noun>"), then require `ok` (else "must be <rule>")."""

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return convert


_positive_int = _number_type(int, "an integer", lambda v: v > 0, "> 0")
_positive_float = _number_type(float, "a number", lambda v: v > 0, "> 0")
_unit_float = _number_type(float, "a number", lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
