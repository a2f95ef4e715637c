"""Find particle poses by projection matching against the base structure (or a trained run's states).

This is the searched pose route (`atomvae train --poses inferred` is the other route from images alone:
the paper's amortised pose encoder).

Writes OUTPUT.star (the particles with rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst) and OUTPUT.npz
(scores and the best reference per particle). Train on the result with --poses given (or refine). The
poses rotate the base about its centre of atoms, the rotation centre `atomvae train` uses by default,
so do not pass --pose-center with them.

A particle in a state far from the base (a closed domain against an open base) matches a wrong view of
the base better than its own: search a second time against the states a first run learnt
(--references-from RUN), the refinement loop of heterogeneous cryo-EM refinement.

examples:
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
