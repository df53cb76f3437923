"""`cxr-review calibrate CHECKPOINT`: fit a checkpoint's error risk, temperature and warning cut-offs
(`ml.calibrate`) and write them into it; `ml.cli` adds it to its parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ml.cli_common import CLIError, _positive_int, _unit_float, add_data_option, default_dataset_dirs


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ml.calibrate import calibrate_checkpoint
    from ml.checkpoints import CheckpointError

    if not Path(args.checkpoint).is_file():
        raise CLIError(f"checkpoint not found: {args.checkpoint}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        risk = calibrate_checkpoint(
            args.checkpoint,
            args.data or default_dataset_dirs(),
            out=args.out,
            batch_size=args.batch_size,
            lungseg_checkpoint=args.lungseg_checkpoint,
            target_right_share=args.target_right_share,
            ood_share=args.ood_share,
            focus_share=args.focus_share,
            log=print,
        )
    except (ValueError, CheckpointError) as exc:
        raise CLIError(str(exc)) from exc
    print(
        json.dumps(
            {
                "temperature": risk.temperature,
                "thresholds": risk.thresholds,
                **{k: v for k, v in risk.fit.items() if k.startswith("val_")},
            },
            indent=2,
        )
    )
    print(f"wrote {args.out or args.checkpoint}")
    return 0


TARGET_RIGHT_SHARE, OOD_SHARE, FOCUS_SHARE = 0.20, 0.05, 0.03
"""`ml.calibrate`'s defaults, repeated so `--help` needs no torch (tests/ml/test_calibrate.py checks they agree)."""


def add_calibrate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a checkpoint's error risk, temperature and warning cut-offs on its train/val splits",
        description="Fit the error-risk calibration (ml/risk.py) of CHECKPOINT on the train and val splits of its "
        "data and write it into the checkpoint (in place unless --out), atomically. See ml/calibrate.py.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    add_data_option(p)
    p.add_argument(
        "--out", default=None, metavar="FILE", help="write the calibrated checkpoint here (default: in place)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lungseg-checkpoint", default=None, help="lung segmentation checkpoint (default: bundled)")
    p.add_argument(
        "--target-right-share",
        type=_unit_float,
        default=TARGET_RIGHT_SHARE,
        help=f"most right validation predictions any warning may mark (default {TARGET_RIGHT_SHARE})",
    )
    p.add_argument(
        "--ood-share",
        type=_unit_float,
        default=OOD_SHARE,
        help=f"right validation predictions the out-of-distribution warning marks (default {OOD_SHARE})",
    )
    p.add_argument(
        "--focus-share",
        type=_unit_float,
        default=FOCUS_SHARE,
        help=f"right validation predictions the outside-lungs warning marks (default {FOCUS_SHARE})",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(handler=cmd_calibrate)
