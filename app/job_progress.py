"""A job's progress as its training child reports it: the JSON lines of its `--events` file, read as
they are appended (`EventTail`), folded into the job row's progress fields (`Progress`), and the
wall-clock seconds of each phase (`PhaseClock`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml import CLASSES

log = logging.getLogger(__name__)


@dataclass
class EventTail:
    """Reads the complete JSON lines appended to a file since the last call."""

    path: Path
    offset: int = 0
    partial: bytes = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    log.warning("ignoring a malformed progress line in %s", self.path)
        return events


@dataclass
class Progress:
    """The job row's progress fields as the worker knows them; `dirty` when not yet written."""

    values: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[tuple[float, float]] = field(default_factory=list)
    dirty: bool = False

    def set(self, **values: Any) -> None:
        self.values.update(values)
        self.dirty = True

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            self.set(
                phase="training",
                steps_per_epoch=event.get("steps_per_epoch"),
                epochs=event.get("epochs"),
                metrics={
                    **self.metrics(),
                    "train_images": event.get("train_images"),
                    "val_images": event.get("val_images"),
                    "skipped": event.get("skipped"),
                },
            )
        elif kind == "step":
            steps = event.get("steps_per_epoch") or 1
            epoch, step = int(event["epoch"]), int(event["step"])
            self.step_losses.append((epoch - 1 + step / steps, float(event["loss"])))
            self.set(
                epoch=epoch,
                step=step,
                loss=event["loss"],
                progress=min(1.0, float(event["progress"])),
                eta_seconds=event.get("eta_seconds"),
            )
        elif kind == "epoch":
            val = event.get("val") or {}
            row = {
                "epoch": event["epoch"],
                "train_loss": event.get("train_loss"),
                "val_loss": val.get("loss"),
                "val_accuracy": val.get("accuracy"),
                "val_macro_sensitivity": val.get("macro_sensitivity"),
                "val_sensitivity": {c: (val.get("per_class") or {}).get(c, {}).get("sensitivity") for c in CLASSES},
                "best": bool(event.get("best")),
            }
            if event.get("train_evidence_outside") is not None:  # explanation loss on: its epoch mean
                row["train_evidence_outside"] = event["train_evidence_outside"]
            self.epochs.append(row)
            self.set(epoch=event["epoch"], metrics={**self.metrics(), "history": list(self.epochs)})
        elif kind == "end":
            self.set(progress=1.0, eta_seconds=0.0, phase="evaluating")

    def metrics(self) -> dict[str, Any]:
        return dict(self.values.get("metrics") or {})


@dataclass
class PhaseClock:
    """Wall-clock seconds per phase of a job (shown in its report)."""

    last: float = field(default_factory=time.monotonic)
    laps: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 2)
        self.last = now
