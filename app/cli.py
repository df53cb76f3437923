"""`cxr-review` console script: the ML commands plus the service commands."""

from __future__ import annotations

from ml.cli import build_parser, run


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)
