"""Child process of a training job: evaluate checkpoints on one split of a manifest dataset.

    python -m app.training_eval --split test --lung-threshold T --out-dir DIR NAME=CHECKPOINT@DATASET[:DATASET...] [...]

writes `<out-dir>/<NAME>.json` (an `ml.evaluate` report of CHECKPOINT on the split of the DATASET
folders, read together, several separated by os.pathsep; lung focus flagged below T, the service's
CXR_LUNG_FOCUS_THRESHOLD) per pair.
One process evaluates all of them, so a job pays for one torch start-up, not one per model. If the
first checkpoint (the new version) cannot be evaluated, it prints `error: ...` and exits with status
2 (the worker shows that line as the job's error); a later one (the comparison) is skipped with a
warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.training_eval")
    parser.add_argument("--split", default="test")
    parser.add_argument("--lung-threshold", type=float, required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("checkpoints", nargs="+", metavar="NAME=CHECKPOINT@DATASET[:DATASET...]")
    args = parser.parse_args(argv)

    from ml.checkpoints import CheckpointError
    from ml.data import ManifestError
    from ml.evaluate import evaluate_checkpoint

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(args.checkpoints):
        name, _, rest = item.partition("=")
        path, _, data = rest.rpartition("@")
        try:
            dirs = [d for d in data.split(os.pathsep) if d]
            report = evaluate_checkpoint(path, dirs, split=args.split, lung_threshold=args.lung_threshold)
        except (CheckpointError, ManifestError, ValueError, FileNotFoundError) as exc:
            if index == 0:  # the model being evaluated: the job cannot report without it
                print(f"error: evaluating {name} ({path}): {exc}", file=sys.stderr)
                return 2
            print(f"warning: no comparison with {name} ({path}): {exc}", file=sys.stderr)
            continue
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
        print(f"{name}: {args.split} accuracy {report['accuracy']}, n = {report['n']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
