"""Simulate a synthetic cryo-EM particle set from a conformational ensemble.

Each particle shows one frame of ENSEMBLE (drawn from the frame weights) in a uniformly random
orientation with a random shift and its own astigmatic CTF. The physics is richer than the model's
renderer: Peng (1996) element scattering factors with an atomic B-factor, the projected potential
integrated exactly over sub-pixels, the CTF applied at --oversample, then detector binning; noise is
Gaussian at a set-average SNR (--snr: mean signal variance over the box / noise variance) or Poisson
shot noise (--dose, e/A^2). Images stream to disk in chunks.

Output folder: particles.mrcs, particles.star (RELION 3.1, true poses and CTF), truth.npz (frame,
rotation, shift, defocus, weights, gt_frame, noise_sigma, ...) and gt_ensemble.pdb (--gt-n models
drawn from the same frame distribution, for `atomvae evaluate`).

--weights: a file with one weight per frame (.npy or text), "uniform", or a mixture such as
"mix:0.6@0:5,0.3@97:5,0.1@uniform" (60% a Gaussian bump over the frame index centred at frame 0
with width 5 frames, 30% centred at frame 97, 10% uniform).

examples:
  atomvae simulate models.pdb -n 10000 --box 64 --pixel-size 1.5 --snr 0.05 -o sim/
  atomvae simulate traj.dcd --topology top.psf -n 100000 --box 64 --pixel-size 2 \\
      --dose 60 --weights "mix:0.7@0:5,0.3@97:5" --seed 1 -o sim_adk/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atomvae.simulate import SimulationConfig, simulate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ensemble", type=Path, help="multi-model PDB/mmCIF, or a trajectory with --topology")
    parser.add_argument("--topology", type=Path, help="topology for a trajectory (.psf, .tpr, .gro, .pdb)")
    parser.add_argument("-n", type=int, required=True, dest="n_particles", help="number of particles")
    parser.add_argument("--box", type=int, required=True, help="image size in pixels (even)")
    parser.add_argument("--pixel-size", type=float, required=True, help="pixel size in A")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (must not exist)")
    noise_group = parser.add_mutually_exclusive_group()
    noise_group.add_argument("--snr", type=float, help="signal variance / noise variance (set average)")
    noise_group.add_argument("--dose", type=float, help="electron dose in e/A^2 (Poisson shot noise)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--weights", help="frame weights: FILE, 'uniform' or 'mix:w@centre:width,...'")
    parser.add_argument("--atoms", choices=["heavy", "backbone", "CA"], help="atoms to image (default heavy)")
    defaults = SimulationConfig(Path(), Path(), 1, 8, 1.0)
    optics = parser.add_argument_group("optics and CTF")
    optics.add_argument(
        "--defocus-min", type=float, default=defaults.defocus_min, help="A (default %(default)s)"
    )
    optics.add_argument(
        "--defocus-max", type=float, default=defaults.defocus_max, help="A (default %(default)s)"
    )
    optics.add_argument(
        "--astigmatism",
        type=float,
        default=defaults.astigmatism,
        help="max |dU - dV| in A (default %(default)s)",
    )
    optics.add_argument("--voltage", type=float, default=defaults.voltage, help="kV (default %(default)s)")
    optics.add_argument(
        "--cs",
        type=float,
        default=defaults.spherical_aberration,
        help="spherical aberration, mm (default %(default)s)",
    )
    optics.add_argument(
        "--amplitude-contrast", type=float, default=defaults.amplitude_contrast, help="(default %(default)s)"
    )
    optics.add_argument(
        "--bfactor", type=float, default=defaults.bfactor, help="atomic B-factor, A^2 (default %(default)s)"
    )
    optics.add_argument(
        "--envelope-bfactor",
        type=float,
        default=defaults.envelope_bfactor,
        help="CTF envelope B-factor, A^2, written as rlnCtfBfactor (default %(default)s)",
    )
    optics.add_argument(
        "--shift-spread",
        type=float,
        default=defaults.shift_spread,
        help="std of the in-plane shift per axis, A (default %(default)s)",
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--oversample",
        type=int,
        default=defaults.oversample,
        help="sub-pixels per pixel edge for the CTF (default %(default)s)",
    )
    run_group.add_argument(
        "--gt-n", type=int, default=defaults.gt_n, help="models in gt_ensemble.pdb (default %(default)s)"
    )
    run_group.add_argument(
        "--chunk", type=int, default=defaults.chunk, help="particles per write chunk (default %(default)s)"
    )
    run_group.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = SimulationConfig(
        ensemble=args.ensemble,
        output=args.output,
        n_particles=args.n_particles,
        box=args.box,
        pixel_size=args.pixel_size,
        topology=args.topology,
        atoms=None if args.atoms in (None, "heavy") else args.atoms,
        weights=args.weights,
        snr=args.snr,
        dose=args.dose,
        seed=args.seed,
        defocus_min=args.defocus_min,
        defocus_max=args.defocus_max,
        astigmatism=args.astigmatism,
        voltage=args.voltage,
        spherical_aberration=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        bfactor=args.bfactor,
        envelope_bfactor=args.envelope_bfactor,
        shift_spread=args.shift_spread,
        oversample=args.oversample,
        gt_n=args.gt_n,
        chunk=args.chunk,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    result = simulate(config)
    print(
        f"wrote {result.n_particles} particles to {result.output} (noise sigma {result.noise_sigma:.4g} rad)"
    )
    return 0
