"""Train the VAE on particle images: stage 1 (poses on the base structure), then stage 2 (everything).

Writes a self-describing run folder: config.yaml (resolved config, version, argv), run.yaml (box, pixel
size, noise sigma), a copy of the base structure, checkpoints every N steps and at each stage end,
metrics.jsonl, training_curve.png, and best.yaml naming the seed with the highest held-out
log-likelihood. The configuration is the preset, then --config FILE field by field, then the options.

examples:
  atomvae train particles.star base.pdb -o run/ --preset cpu
  atomvae train particles.star base.pdb -o run/ --preset paper --seeds 3 --device cuda
  atomvae train particles.star base.pdb -o run/ --poses given          # poses from a consensus refinement
  atomvae search-poses particles.star base.pdb -o found.star --route  # no poses: the searched route
  atomvae train found.star base.pdb -o run/ --preset cpu --poses given  # (projection matching)
  atomvae train particles.star base.pdb -o run/ --config mine.yaml --max-steps 1000
  atomvae train particles.star base.pdb -o run/ --resume               # continue where it stopped
  atomvae train particles.star base.pdb -o run/ --resume --epochs-stage2 24   # train a finished run on

--config FILE (YAML) overrides any field, e.g.:
  stage1: {epochs: 50, n_pose: 32}
  model: {render_atoms: CA, render_sigma: 2.0}
  data: {val_fraction: 0.1}
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from atomvae.train.config import DEVICES, POSE_MODES, PRESETS, TrainConfig, load_config


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y,z in A, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated values, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_UNSIGNED = r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
NUMBER_LIST = re.compile(rf"^-{_UNSIGNED}(,[-+]?{_UNSIGNED})*$")  # e.g. "-1.5,2,3e-1"


def accept_negative_number_lists(parser: argparse.ArgumentParser) -> None:
    """argparse takes "-1.5,2,3" for an option (only plain negative numbers count as values); let comma
    lists of numbers count as values too, so --pose-center or --from may start with a minus sign."""
    parser._negative_number_matcher = NUMBER_LIST


# One name per pose route, shared with `atomvae demo --help`.
POSES_HELP = (
    "inferred: the amortised pose head learns each pose from its image (paper; the file "
    "needs no poses); given: the STAR file's poses, fixed; refine: the STAR file's poses as the "
    "start of a local refinement. The searched route (poses by projection matching): run "
    "`atomvae search-poses --route`, then train on its output with given"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    accept_negative_number_lists(parser)
    parser.add_argument("particles", type=Path, help="particle metadata (.star; RELION conventions)")
    parser.add_argument("base", type=Path, help="base structure (.pdb or .cif)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="run folder to create (or resume)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="starting configuration: paper (the exact paper numbers) or cpu (default, or "
        "the --config file's 'preset:' key)",
    )
    parser.add_argument("--config", type=Path, help="YAML file overriding preset fields")
    parser.add_argument("--max-steps", type=int, help="stop (with a checkpoint) at this global step")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in -o from its last checkpoint, with the run's own config",
    )
    parser.add_argument(
        "--poses",
        choices=POSE_MODES,
        help=f"{POSES_HELP} (default: the config's pose_mode, inferred in both presets)",
    )
    parser.add_argument(
        "--pose-center",
        type=_point,
        help="x,y,z (A, base coordinates) the given poses rotate about (default: the base's "
        "centre of atoms); e.g. -1.5,2,3. For atomvae "
        "simulate data: truth.npz's center for a base in the input ensemble's frame, "
        "0,0,0 for a base in gt_ensemble.pdb's frame",
    )
    parser.add_argument("--device", choices=DEVICES, help="cpu, cuda or auto (default: auto)")
    parser.add_argument(
        "--init",
        type=Path,
        metavar="RUN",
        help="start from RUN's best weights (same base structure and model)",
    )
    parser.add_argument("--seed", type=int, help="random seed (data split, initialisation, sampling)")
    parser.add_argument("--seeds", type=int, help="train this many seeds and keep the best (held-out LL)")
    parser.add_argument("--val-fraction", type=float, help="fraction of particles held out")
    parser.add_argument(
        "--noise-sigma",
        type=float,
        help="pixel noise sigma in normalised image units (default: from the background)",
    )
    parser.add_argument(
        "--epochs-stage1",
        type=int,
        help="epochs of pose-only training (the learning-rate decay epochs scale with it); with --resume: "
        "continue the run to this many (its decay epochs kept)",
    )
    parser.add_argument(
        "--epochs-stage2",
        type=int,
        help="epochs of full training (the learning-rate decay epochs scale with it); with --resume: "
        "continue the run to this many, a finished run too (its decay epochs kept)",
    )
    parser.add_argument("--batch-size", type=int, help="images per step")
    parser.add_argument("--workers", type=int, help="data loader worker processes")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="torch threads on the CPU (default: OMP_NUM_THREADS when set, else measured while training: "
        "every 50 or more steps a few steps on 1 and on all CPUs, keeping the faster; on a busy machine 1 "
        "thread can be 4-14x faster than 2)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop on particles with NaN/Inf in their image or metadata (default: skip them)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Preset -> --config file -> command-line options (each only when given)."""
    if args.config is not None:
        config = load_config(args.config, preset=args.preset, default_preset="cpu")
    else:
        config = PRESETS[args.preset or "cpu"]
    top = {
        "pose_mode": args.poses,
        "device": args.device,
        "seed": args.seed,
        "n_seeds": args.seeds,
        "batch_size": args.batch_size,
        "init_from": None if args.init is None else str(args.init.resolve()),
    }
    config = dataclasses.replace(config, **{k: v for k, v in top.items() if v is not None})
    data = {
        "val_fraction": args.val_fraction,
        "noise_sigma": args.noise_sigma,
        "num_workers": args.workers,
        "pose_center": args.pose_center,
        "strict": args.strict or None,
    }
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, **{k: v for k, v in data.items() if v is not None})
    )
    return with_stage_epochs(config, args, continuing=False)


def with_stage_epochs(config: TrainConfig, args: argparse.Namespace, continuing: bool) -> TrainConfig:
    """--epochs-stage1/2 applied: a new run's stages rescaled (``StageConfig.with_epochs``), a resumed run's
    continued with their decay epochs kept (``StageConfig.extended``; ``train.prepare.extend_stages`` checks
    and applies it)."""
    for name, epochs in (("stage1", args.epochs_stage1), ("stage2", args.epochs_stage2)):
        if epochs is not None:
            stage = getattr(config, name)
            stage = stage.extended(epochs) if continuing else stage.with_epochs(epochs)
            config = dataclasses.replace(config, **{name: stage})
    return config


# Options that still apply with --resume (everything else comes from the run's config.yaml).
RESUME_OPTIONS = (
    "--resume",
    "--max-steps",
    "--device",
    "--workers",
    "--threads",
    "--no-progress",
    "--epochs-stage1",
    "--epochs-stage2",
)


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as it was parsed (``atomvae train ...``), for config.yaml: independent of how the CLI was
    entered (console script, ``python -m``, or ``main(argv)`` from Python)."""
    argv = ["train", str(args.particles), str(args.base), "-o", str(args.output)]
    for key, value in vars(args).items():
        if key in ("particles", "base", "output", "command") or key.startswith("_") or value in (None, False):
            continue
        option = "--" + key.replace("_", "-")
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        argv += [option] if value is True else [option, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    from atomvae.train.distributed import is_main
    from atomvae.train.loop import resolved_config_for_resume, train

    if args.resume and (args.output / "config.yaml").is_file():
        # The run's own config; only where it runs may change.
        config = resolved_config_for_resume(args.output, device=args.device)
        if args.workers is not None:
            data = dataclasses.replace(config.data, num_workers=args.workers)
            config = dataclasses.replace(config, data=data)
        config = with_stage_epochs(config, args, continuing=True)  # more epochs for a stopped or finished run
        ignored = [
            option
            for option in command_line(args)[5:]
            if option.startswith("--") and option not in RESUME_OPTIONS
        ]
        if ignored and is_main():
            print(
                f"atomvae train --resume: the run's own {args.output / 'config.yaml'} applies; ignoring "
                f"{' '.join(ignored)}",
                file=sys.stderr,
            )
    else:
        config = build_config(args)
    try:
        summary = train(
            config,
            args.particles,
            args.base,
            args.output,
            resume=args.resume,
            max_steps=args.max_steps,
            argv=command_line(args),
            show_progress=False if args.no_progress else None,
            threads=args.threads,
        )
    except KeyboardInterrupt as stop:
        if str(stop) and is_main():  # a graceful stop (first Ctrl-C) wrote a checkpoint
            print(
                f"{stop}; continue with: atomvae train {args.particles} {args.base} -o {args.output} "
                "--resume",
                file=sys.stderr,
            )
        raise
    if not is_main():  # under torchrun rank 0 reports
        return 0
    best = next(r for r in summary.seeds if r.seed == summary.best_seed)
    state = "finished" if summary.complete else f"stopped at step {best.position.global_step}"
    print(
        f"{state}: best seed {summary.best_seed}, held-out log-likelihood "
        f"{best.val_log_likelihood:.2f} nats/image -> {summary.best_checkpoint}"
    )
    return 0
