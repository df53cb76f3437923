"""How a list of dataset folders is spelt in the environment (`CXR_DATASET_DIRS`), shared by the ML
command line and the web service's settings. No torch: both parse it at start-up."""

from __future__ import annotations

import json
import os


def parse_dataset_dirs(text: str) -> list[str]:
    """A JSON list (`["a", "b"]`) or folders separated by os.pathsep (`a:b`; blanks ignored).

    `[]` for blank text; `ValueError` naming CXR_DATASET_DIRS for a malformed JSON list.
    """
    text = text.strip()
    if not text.startswith("["):
        return [d.strip() for d in text.split(os.pathsep) if d.strip()]
    try:
        listed = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"CXR_DATASET_DIRS looks like a JSON list but is not one: {exc}") from None
    if not (isinstance(listed, list) and all(isinstance(d, str) and d.strip() for d in listed)):
        raise ValueError(f"CXR_DATASET_DIRS as JSON must be a list of folder paths, got {text}")
    return [d.strip() for d in listed]
