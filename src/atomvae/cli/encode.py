"""Encode particles with a trained run: per-particle latent posteriors and pose estimates.

latents.npz holds: mu, sigma (N, 32) conformation posterior means and sigmas; rotation (N, 3, 3) and
shift (N, 2) A, the pose estimate (x_image = R x + shift); euler (N, 3) the same rotation as RELION
rot, tilt, psi in degrees; pose_mu, pose_sigma (N, 8) the pose posterior; index (N,) particle number
in the file. Particles must have the run's box and pixel size (after downsampling to its image size).

examples:
  atomvae encode run/ particles.star -o latents.npz
  torchrun --nproc-per-node 4 -m atomvae encode run/ particles.star -o latents.npz --device cuda
  atomvae interpolate run/ -o path.pdb --latents latents.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by atomvae train")
    parser.add_argument("particles", type=Path, help="particle metadata (.star)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="latents.npz")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (files of the run folder and inputs never are)",
    )


def run(args: argparse.Namespace) -> int:
    from atomvae.train.inference import encode_to_file

    result = encode_to_file(
        args.run_dir,
        args.particles,
        args.output,
        device=args.device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    if result is None:  # a rank other than 0 under torchrun: rank 0 wrote the file and reports
        return 0
    print(f"encoded {len(result['index'])} particles to {args.output}")
    return 0
