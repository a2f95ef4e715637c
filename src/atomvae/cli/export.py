"""Write a subset of particles, with all their original metadata, for refinement in RELION or cryoSPARC.

Selections (exactly one):
  --state K --analysis OUT      the particles of state K of `atomvae analyze RUN -o OUT`
  --distance A:55:CA,A:169:CA --below 21 [--above 12]
                                particles whose posterior-mean structure has that distance (A)
                                below (and/or above) the value; the particles are encoded with RUN
                                (or read from --latents, an `atomvae encode` output of these particles)
  --latent-file ROWS            0-based particle rows: a text list, a .npy array or a cryoDRGN ind.pkl

The output keeps the input's format: a .star in gives a .star out with the optics table and every column
and number as they were (only unselected particle rows are left out); a cryoSPARC .cs in gives a .cs out
with all its fields. RELION's and cryoSPARC's refinements read it as they read the original.

examples:
  atomvae export run/ particles.star -o state2.star --state 2 --analysis analysis/
  atomvae export run/ particles.star -o closed.star --distance A:55:CA,A:169:CA --below 21
  atomvae export run/ P12_J3_passthrough_particles.cs -o open.cs --distance A:55:CA,A:169:CA --above 25
  atomvae export run/ particles.star -o picked.star --latent-file ind_selected.pkl
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by atomvae train")
    parser.add_argument("particles", type=Path, metavar="PARTICLES", help="particle file (.star or .cs)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="SUBSET",
        help="SUBSET.star or SUBSET.cs (same format as PARTICLES)",
    )
    parser.add_argument("--state", type=int, metavar="K", help="state K (1-based) of atomvae analyze")
    parser.add_argument("--analysis", type=Path, metavar="OUT", help="the folder atomvae analyze wrote")
    parser.add_argument("--distance", metavar="A:55:CA,A:169:CA", help="two atoms of the base structure")
    parser.add_argument("--below", type=float, metavar="A", help="keep distances below this (A)")
    parser.add_argument("--above", type=float, metavar="A", help="keep distances above this (A)")
    parser.add_argument("--latent-file", type=Path, metavar="ROWS", help="file of 0-based particle rows")
    parser.add_argument("--latents", type=Path, help="latents.npz of PARTICLES from atomvae encode")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace SUBSET if it exists")


def run(args: argparse.Namespace) -> int:
    from atomvae.evaluate.analysis import ExportConfig, export_particles

    config = ExportConfig(
        run=args.run_dir,
        particles=args.particles,
        out=args.output,
        state=args.state,
        analysis=args.analysis,
        distance=args.distance,
        below=args.below,
        above=args.above,
        index_file=args.latent_file,
        latents=args.latents,
        device=args.device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    written, total, description = export_particles(config)
    print(f"wrote {written} of {total} particles ({description}) to {args.output}")
    return 0
