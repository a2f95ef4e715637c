"""Find particle poses by projection matching against the base structure (or a trained run's states).

This is the searched pose route (`atomvae train --poses inferred` is the other route from images alone:
the paper's amortised pose encoder).

Writes OUTPUT.star (the particles with rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst) and OUTPUT.npz
(scores and the best reference per particle). Train on the result with --poses given (or refine). The
poses rotate the base about its centre of atoms, the rotation centre `atomvae train` uses by default,
so do not pass --pose-center with them.

A particle in a state far from the base (a closed domain against an open base) matches a wrong view of
the base better than its own. --route runs the whole searched route: references fitted to the particles
(the base's dynamic domains moved as rigid bodies), a short training run (cpu preset) on those poses,
and a second search against its learnt states and each particle's own decoded conformation
(atomvae.train.searched; rounds and runs in OUTPUT.route/, resumable). By hand, the same loop without the
fitted references: search against the base, train, search against the states a run learnt
(--references-from RUN).

examples:
  atomvae search-poses particles.star base.pdb -o posed.star --route
  atomvae train posed.star base.pdb -o run --preset cpu --poses given
  atomvae search-poses particles.star base.pdb -o round1.star
  atomvae train round1.star base.pdb -o run1 --preset cpu --poses given
  atomvae search-poses particles.star base.pdb -o round2.star --references-from run1
  torchrun --nproc-per-node 8 -m atomvae search-poses particles.star base.pdb -o round1.star
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _amplitudes(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (A), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from atomvae.train.pose_search import PoseSearchConfig

    defaults = PoseSearchConfig()
    parser.add_argument("particles", type=Path, help="particle metadata (.star, .cs, .pkl)")
    parser.add_argument("base", type=Path, help="base structure (.pdb/.cif)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .star (and .npz beside it)")
    parser.add_argument(
        "--image-size", type=int, default=64, help="downsample particles to this box (default 64)"
    )
    parser.add_argument(
        "--references-from",
        type=Path,
        metavar="RUN",
        help="also search against the states this trained run learnt",
    )
    parser.add_argument(
        "--n-references",
        type=int,
        default=4,
        help="learnt states taken from --references-from (k-means of latents; default 4)",
    )
    parser.add_argument(
        "--modes",
        type=int,
        default=0,
        help="also search against the base deformed along its N slowest elastic-network modes (default 0)",
    )
    parser.add_argument(
        "--amplitudes",
        type=_amplitudes,
        default=(3.0, 6.0),
        help="RMSDs (A) of the --modes deformations, both signs (default 3,6)",
    )
    parser.add_argument(
        "--rotations",
        type=int,
        default=defaults.n_rotations,
        help=f"global rotation grid size (default {defaults.n_rotations})",
    )
    parser.add_argument(
        "--resolution",
        type=float,
        default=defaults.resolution,
        help=f"A; ignore finer detail (default {defaults.resolution})",
    )
    parser.add_argument(
        "--max-shift",
        type=float,
        default=defaults.max_shift,
        help=f"A; largest in-plane shift searched (default {defaults.max_shift})",
    )
    parser.add_argument(
        "--atoms",
        choices=("CA", "backbone", "heavy"),
        default=defaults.atoms,
        help=f"atoms rendered in templates (default {defaults.atoms})",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        default=defaults.sigma,
        help=f"A, Gaussian width per atom (default {defaults.sigma})",
    )
    parser.add_argument(
        "--route",
        action="store_true",
        help="the whole searched route (fitted references, a learning run, a second search; minutes to an "
        "hour): the final poses go to OUTPUT, the rounds to OUTPUT.route/",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--route: pose searches (default 2)")
    parser.add_argument(
        "--round-epochs",
        type=int,
        nargs="+",
        default=[4],
        help="--route: stage-2 epochs of each learning run, one value or one per run, the last repeating "
        "(default 4; ~250-300 steps suit a run between searches: 1 for 20,000 particles; with --rounds 3 "
        "'1 6' makes the last run the first half of the final training, continued with --init)",
    )
    parser.add_argument(
        "--fit-references",
        type=int,
        default=1,
        help="--route: references fitted to the particles as rigid domain motions of the base (default 1; "
        "0: the base alone)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from atomvae.errors import InputError, check_output_file
    from atomvae.train.pose_search import PoseSearchConfig, search_poses_to_file

    # Before any work: never the input STAR (or base) itself, nor an existing output without --overwrite.
    if args.output.suffix == ".star":
        check_output_file(
            args.output,
            args.overwrite,
            inputs=[args.particles, args.base],
            companions=[args.output.with_suffix(".npz")],
        )

    try:
        config = PoseSearchConfig(
            n_rotations=args.rotations,
            resolution=args.resolution,
            max_shift=args.max_shift,
            atoms=args.atoms,
            sigma=args.sigma,
        )
    except ValueError as err:
        raise InputError("search-poses", str(err)) from None
    if args.route:
        return _run_route(args, config)
    result = search_poses_to_file(
        args.particles,
        args.base,
        args.output,
        config=config,
        image_size=args.image_size,
        references_from=args.references_from,
        n_references=args.n_references,
        n_modes=args.modes,
        amplitudes=args.amplitudes,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )
    if result is None:  # a rank other than 0 under torchrun: rank 0 wrote the files and reports
        return 0
    counts = np.bincount(result.reference.numpy())
    print(
        f"poses of {len(result.score)} particles written to {args.output} "
        f"(grid {result.grid_spacing:.1f} deg; median score {float(result.score.median()):.3f}; "
        f"particles per reference {counts.tolist()})"
    )
    return 0


def _run_route(args: argparse.Namespace, search) -> int:
    """--route: ``train.searched.searched_poses`` in OUTPUT.route/, its last round's poses to OUTPUT."""
    import dataclasses

    import numpy as np
    import torch

    from atomvae.data.metadata import read_particles
    from atomvae.errors import InputError
    from atomvae.train.config import PRESETS
    from atomvae.train.domain_references import DomainFitConfig
    from atomvae.train.pose_search import PoseSearchResult, write_search_result
    from atomvae.train.searched import SearchedRouteConfig, last_learning_run, searched_poses

    try:
        route = SearchedRouteConfig(
            rounds=args.rounds,
            round_epochs=tuple(args.round_epochs),
            image_size=args.image_size,
            fit=DomainFitConfig(n_fitted=args.fit_references),
        )
    except ValueError as err:
        raise InputError("search-poses", str(err)) from None
    metadata = read_particles(args.particles)  # bad input fails here, before any work
    folder = args.output.with_suffix(".route")
    # the learning runs see the particles at the search's size too
    learning = PRESETS["cpu"]
    learning = dataclasses.replace(
        learning, model=dataclasses.replace(learning.model, image_size=args.image_size)
    )
    last, _seconds = searched_poses(
        args.particles,
        args.base,
        folder,
        learning,
        route,
        search,
        progress=False if args.no_progress else None,
    )
    with np.load(last.with_suffix(".npz")) as found:
        result = PoseSearchResult(
            rotation=torch.as_tensor(found["rotation"]),
            shift=torch.as_tensor(found["shift"]),
            score=torch.as_tensor(found["score"]),
            global_score=torch.as_tensor(found["global_score"]),
            reference=torch.as_tensor(found["reference"]),
            grid_spacing=float("nan"),
        )
        rows = found["index"]
    write_search_result(metadata, rows, result, args.output)
    counts = np.bincount(result.reference.numpy())
    last_run = last_learning_run(folder, route)
    continue_with = "" if last_run is None else f" --init {last_run} (its weights learnt them)"
    print(
        f"poses of {len(rows)} particles written to {args.output} (the searched route's round "
        f"{route.rounds}, {folder}; particles per reference {counts.tolist()}); train on them with "
        f"--poses given{continue_with}"
    )
    return 0
