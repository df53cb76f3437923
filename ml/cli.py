"""Command line of the ML core: `archs`, `train`, `evaluate`, `calibrate`, `benchmark`.

`app.cli` adds the service commands (`serve`, `users`, ...) to the same parser, so `cxr-review`
offers both; `python -m ml` offers only these and needs nothing from the web service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.cli_common import (
    CLIError,
    _positive_float,
    _positive_int,
    _unit_float,
    add_data_option,
    default_dataset_dirs,
)

if TYPE_CHECKING:  # the CLI imports torch lazily, so `--help` and argument errors stay fast
    from ml.config import ConfigField, TrainConfig

Handler = Callable[[argparse.Namespace], int]


def add_config_options(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """`--config FILE` plus one option per `TrainConfig` field (but `skip`), all from `ml.config`.

    No option has an argparse default, so the namespace holds only what was given: the command line
    overrides the file, the file overrides the fields' defaults (`config_from_args`)."""
    from ml.config import config_fields

    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a JSON object of training options (e.g. a checkpoint's train_config); options given here override it",
    )
    for f in config_fields():
        if f.name not in skip:
            p.add_argument(f.flag, dest=f.name, default=argparse.SUPPRESS, help=_option_help(f), **_option_kind(f))


CLI_FALLBACKS: dict[str, tuple[str, Callable[[], Any]]] = {
    "data_dirs": (
        "$CXR_DATASET_DIRS, else $CXR_DATASET_DIR, else ../shared/data/cxr and ../shared/data/cxr-adult",
        default_dataset_dirs,
    ),
}
"""Required fields the command line fills in when neither the options nor --config give them."""


def _option_help(f: ConfigField) -> str:
    parts = [f.option.help.rstrip(".")]
    choices = f.static_choices
    if choices:
        parts.append("; ".join(f"{value}: {meaning}" for value, meaning in choices.items()))
    if f.kind in ("int", "float") and f.bound_rule():
        parts.append(str(f.bound_rule()))
    if f.name in CLI_FALLBACKS:
        parts.append(f"default: {CLI_FALLBACKS[f.name][0]}")
    else:
        parts.append("required (here or in --config)" if f.required else f"default: {f.describe_default()}")
    if f.exposed:
        parts.append(f"job API: {f.public}")
    return ". ".join(parts).replace("%", "%%")


def _option_kind(f: ConfigField) -> dict[str, Any]:
    if f.kind == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if f.kind == "list":
        return {"action": "append", "metavar": "DIR"}
    if f.static_choices:
        return {"choices": list(f.static_choices)}
    if f.kind in ("int", "float"):
        return {"type": _field_number_type(f), "metavar": "N" if f.kind == "int" else "X"}
    return {"metavar": "DIR" if f.name.endswith("_dir") else "FILE" if f.name.endswith("_checkpoint") else "NAME"}


def _field_number_type(f: ConfigField) -> Callable[[str], float]:
    """An argparse `type=` for a numeric field: "'x' is not an integer", "must be > 0, got 0"."""
    noun = "an integer" if f.kind == "int" else "a number"
    parse: Callable[[str], float] = int if f.kind == "int" else float

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        problem = f.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def config_from_args(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The run `args` describe: the fields' defaults, then `--config FILE`, then the options given,
    then `fixed`; the datasets default to `default_dataset_dirs()`. Validated (CLIError otherwise)."""
    from ml.config import ConfigError, TrainConfig, config_fields, read_config_file

    try:
        values = read_config_file(args.config) if args.config else {}
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    values.update({f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)})
    values.update(fixed)
    for name, (_, fallback) in CLI_FALLBACKS.items():
        values.setdefault(name, fallback())
    missing = [f.flag for f in config_fields() if f.required and f.name not in values]
    if missing:
        args.command_parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        config = TrainConfig.from_dict(values)
        config.validate()
    except (KeyError, ValueError) as exc:
        where = f"config {args.config}: " if args.config and isinstance(exc, ConfigError) else ""
        raise CLIError(where + str(exc).strip("'\"")) from exc
    return config


def parameter_count(name: str) -> int:
    """Parameters of a registry architecture, counted on the meta device: shapes only, no memory and
    no weight initialisation (building the VGGs for real took seconds each, just to count them)."""
    import torch

    from ml.registry import get_arch

    with torch.device("meta"):
        model = get_arch(name).build(pretrained=False)
    return sum(p.numel() for p in model.parameters())


def cmd_archs(args: argparse.Namespace) -> int:
    from ml.pretrained import pretrained_available
    from ml.registry import get_arch, list_archs

    rows = []
    for name in list_archs():
        spec = get_arch(name)
        params = parameter_count(name)
        rows.append(
            {
                "name": name,
                "input_size": spec.input_size,
                "parameters": params,
                "cam_method": spec.cam_method,
                "cam_layer": spec.cam_layer,
                "family": spec.family,
                "pretrained_available": pretrained_available(spec.pretrained_weights),
                "pretrained_weights": spec.pretrained_weights,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'input':>5} {'params':>12}  {'cam method':<21} {'cam layer':<18} pretrained")
    for r in rows:
        pre = "yes" if r["pretrained_available"] else ("n/a" if r["pretrained_weights"] is None else "no")
        print(
            f"{r['name']:<20} {r['input_size']:>5} {r['parameters']:>12,}  {r['cam_method']:<21} "
            f"{r['cam_layer']:<18} {pre}"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ml.train import train

    config = config_from_args(args)
    if args.events and int(os.environ.get("RANK", "0")) == 0:
        with open(args.events, "a", encoding="utf-8") as events:

            def write_event(event: dict[str, object]) -> None:
                # One line per event, flushed at once: a worker process tails this file for progress.
                events.write(json.dumps(event, default=str) + "\n")
                events.flush()

            summary = train(config, callback=write_event)
    else:
        summary = train(config)
    best = summary["best_val"] or {}
    if best:
        print(
            f"best epoch {best.get('epoch')}: val macro sensitivity {best.get('macro_sensitivity'):.3f} "
            f"-> {summary['best_checkpoint']}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ml.checkpoints import DEFAULT_CHECKPOINT, CheckpointError
    from ml.evaluate import evaluate_checkpoint, format_markdown, format_table

    checkpoint = args.checkpoint or str(DEFAULT_CHECKPOINT)
    if not Path(checkpoint).is_file():
        raise CLIError(f"checkpoint not found: {checkpoint}")
    try:
        report = evaluate_checkpoint(
            checkpoint,
            args.data or default_dataset_dirs(),
            split=args.split,
            batch_size=args.batch_size,
            predictions_csv=args.predictions,
            with_lung_focus=not args.no_lung_focus,
            lungseg_checkpoint=args.lungseg_checkpoint,
            lung_threshold=args.lung_threshold,
        )
    except (ValueError, CheckpointError) as exc:  # e.g. a split name the manifest does not have
        raise CLIError(str(exc)) from exc
    print(format_table(report))
    if args.figures:
        from ml.risk_report import plot_figures

        for path in plot_figures(report["error_risk"], args.figures):
            print(f"wrote {path}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(format_markdown(report))
        print(f"wrote {args.markdown}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ml.benchmark import run_benchmark
    from ml.registry import list_archs

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in list_archs()]
    if not archs or unknown:
        raise CLIError(
            f"unknown architecture(s): {', '.join(unknown) or '(none given)'}; known: {', '.join(list_archs())}"
        )
    configs = [config_from_args(args, arch=arch, out_dir=str(Path(args.out) / arch), resume=True) for arch in archs]
    run_benchmark(configs, out_dir=args.out, split=args.split)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-review", description="Chest X-ray CNNs with clinician-reviewed CAMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("archs", help="list the architecture registry")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_archs)

    p = sub.add_parser(
        "train",
        help="train one architecture on one scenario",
        description="Train one architecture on one scenario. Every option is a field of ml.config.TrainConfig.",
    )
    p.add_argument(
        "--events",
        default=None,
        metavar="FILE",
        help="append progress events (start/step/epoch/end) as JSON lines to FILE (rank 0 only)",
    )
    add_config_options(p)
    p.set_defaults(handler=cmd_train, command_parser=p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on one split (default: the bundled model)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the bundled default model)")
    add_data_option(p)
    p.add_argument("--split", default="test")
    p.add_argument("--json", default=None, help="write the full report as JSON here")
    p.add_argument("--predictions", default=None, help="write per-image predictions as CSV here")
    p.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    p.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="draw reliability.png (before/after temperature scaling) and risk_coverage.png into DIR",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument(
        "--no-lung-focus",
        action="store_true",
        help="skip lung segmentation and the lung-focus table (not possible for lung-crop models)",
    )
    p.add_argument("--lungseg-checkpoint", default=None, help="lung segmentation checkpoint (default: bundled)")
    p.add_argument(
        "--lung-threshold",
        type=_unit_float,
        default=0.5,
        help="flag a prediction when less than this share of its CAM evidence lies inside the lungs (default 0.5)",
    )
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("benchmark", help="the paper's experiment: train and evaluate several architectures")
    p.add_argument("--archs", required=True, help="comma-separated registry names")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per architecture)")
    p.add_argument("--split", default="test", help="split the comparison is evaluated on")
    add_config_options(p, skip=("arch", "out_dir", "resume"))
    p.set_defaults(handler=cmd_benchmark, command_parser=p)
    add_train_lungs_command(sub)
    from ml.cli_risk import add_calibrate_command  # torch-free at import, like this module

    add_calibrate_command(sub)
    add_contact_sheet_command(sub)
    return parser


def add_contact_sheet_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("contact-sheet", help="CAM overlays of a fixed sample of films, checkpoints side by side (PNG)")
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint file; repeat to compare")
    add_data_option(p)
    p.add_argument("--split", default="test")
    p.add_argument("--per-class", type=_positive_int, default=20, help="films of each true class (default 20)")
    p.add_argument("--lung-threshold", type=_unit_float, default=0.5, help="lung focus flag (orange caption)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(handler=cmd_contact_sheet)


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from ml.checkpoints import CheckpointError
    from ml.contact_sheet import contact_sheet

    missing = [c for c in args.checkpoint if not Path(c).is_file()]
    if missing:
        raise CLIError(f"checkpoint not found: {', '.join(missing)}")
    try:
        sheet = contact_sheet(
            args.checkpoint,
            args.data or default_dataset_dirs(),
            split=args.split,
            per_class=args.per_class,
            columns=max(1, 10 // len(args.checkpoint)),
            lung_threshold=args.lung_threshold,
        )
    except (ValueError, CheckpointError) as exc:
        raise CLIError(str(exc)) from exc
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


def add_train_lungs_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train-lungs", help="train the lung segmentation network on a lung mask set")
    p.add_argument(
        "--data",
        default=None,
        help="folder with manifest.csv (image,mask,split,patient_id,...); "
        "default: $CXR_LUNGSEG_DIR or ../shared/data/lungseg",
    )
    p.add_argument("--out", required=True, help="output folder (best.pt, last.pt, history.json)")
    p.add_argument("--epochs", type=_positive_int, default=100)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate (Adam, cosine decay)")
    p.add_argument("--base-channels", type=_positive_int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=_positive_int, default=None, help="cap steps (smoke tests)")
    # no --intensity here: the segmenter standardises every film by its own mean and std
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    p.add_argument("--no-augment", action="store_true")
    p.set_defaults(handler=cmd_train_lungs)


def cmd_train_lungs(args: argparse.Namespace) -> int:
    import shlex

    from ml.lungseg.data import default_lungseg_dir
    from ml.lungseg.train import LungTrainConfig, train_lungs

    config = LungTrainConfig(
        data_dir=args.data or default_lungseg_dir(),
        out_dir=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        base_channels=args.base_channels,
        seed=args.seed,
        augment=not args.no_augment,
        max_steps_per_epoch=args.max_steps_per_epoch,
        device=args.device,
        threads=args.threads,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    command = [
        "cxr-review",
        "train-lungs",
        "--data",
        config.data_dir,
        "--out",
        args.out,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--base-channels",
        str(args.base_channels),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
    ]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)] if args.max_steps_per_epoch else []
    command += ["--no-augment"] if args.no_augment else []
    summary = train_lungs(config, command=shlex.join(command))
    print(
        f"best epoch {summary['best_val']['epoch']}: val Dice {summary['best_val_dice_as_stored']:.4f} "
        f"-> {summary['best_checkpoint']}"
    )
    return 0


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # known user-facing failures carry a clear message
        from ml.checkpoints import CheckpointError
        from ml.data import ManifestError
        from ml.pretrained import PretrainedWeightsUnavailable

        if isinstance(exc, CheckpointError | ManifestError | PretrainedWeightsUnavailable | FileNotFoundError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
