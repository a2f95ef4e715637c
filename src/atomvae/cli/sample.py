"""Sample all-atom structures from a trained run: from the prior (z ~ N(0, I), decoded; the paper), or with
--latents from the particles' aggregate posterior (z ~ q(z | y) of randomly drawn particles; the
ensemble the particles themselves support, and the closer to the truth in BENCHMARKS.md).

The output format follows the suffix: .pdb (multi-model), .cif, or .dcd (coordinates only; the
run folder's base structure is the matching topology). Structures are in the base structure's frame.

examples:
  atomvae sample run/ -n 2048 -o ensemble.pdb
  atomvae sample run/ -n 10000 -o ensemble.dcd --seed 7
  atomvae encode run/ particles.star -o latents.npz
  atomvae sample run/ -n 2048 --latents latents.npz -o posterior.pdb
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by atomvae train")
    parser.add_argument("-n", type=int, required=True, help="number of structures")
    parser.add_argument("-o", "--output", type=Path, required=True, help="OUT.pdb, OUT.cif or OUT.dcd")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default 0)")
    parser.add_argument(
        "--latents",
        type=Path,
        default=None,
        metavar="LATENTS.npz",
        help="atomvae encode output: sample the particles' aggregate posterior instead of the prior",
    )
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (files of the run folder and inputs never are)",
    )


def run(args: argparse.Namespace) -> int:
    from atomvae.train.inference import sample_to_file

    out = sample_to_file(
        args.run_dir,
        args.n,
        args.output,
        seed=args.seed,
        device=args.device,
        latents=args.latents,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.n} structures to {out}")
    return 0
