"""Decode structures along a line in a trained run's conformation latent space (multi-model file).

The line runs between --from and --to (latent points as comma lists or .npy files), or, when they
are not given, along the first principal axis of the particles' posterior means, between its 1st and
99th percentiles (--percentile). The means come from --latents (an atomvae encode output) or are
computed on up to --n-particles of the run's own particles.

examples:
  atomvae interpolate run/ -o path.pdb --steps 20
  atomvae interpolate run/ -o path.pdb --latents latents.npz
  atomvae interpolate run/ -o path.cif --from a.npy --to b.npy --steps 50
  atomvae interpolate run/ -o path.pdb --from -1,0,...,0 --to 1,0,...,0   (32 values each)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atomvae.cli.train import accept_negative_number_lists


def add_arguments(parser: argparse.ArgumentParser) -> None:
    accept_negative_number_lists(parser)
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by atomvae train")
    parser.add_argument("-o", "--output", type=Path, required=True, help="OUT.pdb, OUT.cif or OUT.dcd")
    parser.add_argument("--steps", type=int, default=10, help="structures along the line (default 10)")
    parser.add_argument("--from", dest="start", help="start point: comma-separated values or a .npy file")
    parser.add_argument("--to", dest="end", help="end point: comma-separated values or a .npy file")
    parser.add_argument("--latents", type=Path, help="latents.npz from atomvae encode (automatic line)")
    parser.add_argument(
        "--n-particles",
        type=int,
        default=2048,
        help="particles encoded for the automatic line without --latents (default 2048)",
    )
    parser.add_argument(
        "--percentile",
        type=float,
        default=1.0,
        help="line ends at this and 100 minus this percentile along the axis (default 1)",
    )
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (files of the run folder and inputs never are)",
    )


def run(args: argparse.Namespace) -> int:
    from atomvae.train.inference import interpolate_to_file

    interpolate_to_file(
        args.run_dir,
        args.output,
        steps=args.steps,
        start=args.start,
        end=args.end,
        latents=args.latents,
        n_particles=args.n_particles,
        percentile=args.percentile,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.steps} structures to {args.output}")
    return 0
