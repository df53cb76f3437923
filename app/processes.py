"""The worker's child processes: start one in its own process group (killed as a whole, and by Linux
when the worker dies), stop it, read the end of its log; and `cxr-review serve`'s embedded worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

TERMINATE_GRACE_SECONDS = 10.0
LOG_TAIL_CHARS = 1500


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGKILL this child when the worker dies, so a killed worker leaves no trainer behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn_child(command: list[str], *, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group (killed as a whole), output appended to `log_path`."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )


def stop_child(proc: subprocess.Popen[bytes], grace: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM the child's process group, SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of a child's log: its `error: ...` line if it printed one, else the last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: ") :]
    return text[-chars:].strip()


def start_embedded_worker(log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """`cxr-review serve`'s worker: a `cxr-review worker` subprocess (same environment and settings),
    killed with the server (parent-death signal)."""
    out = log_path.open("ab") if log_path is not None else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        if out is not None:
            out.close()
