"""After training: the states a run found, its main motions, RMSF, density maps, a ChimeraX movie, one page.

K-means (--states K, default 5) of the particles' posterior means gives K states, decoded into
OUT/states.pdb (MODEL k = state k, numbered by particle count) with per-residue C-alpha RMSF of sampled
structures in the B-factor column; OUT/states.json has each state's particle count and fraction,
OUT/states.npz each particle's state (for `atomvae export --state`). OUT/traversal_pc1.pdb and
traversal_pc2.pdb walk the principal axes of the latents. OUT/state_<k>.mrc are density maps of the states
(atoms as Gaussians at --map-resolution) on the particles' box and pixel size in the base's frame, so
they open beside the consensus map and the base in ChimeraX. OUT/movie.cxc plays the PC1 traversal in
ChimeraX coloured by RMSF; OUT/index.html shows everything on one self-contained page.

Latents: --latents (from atomvae encode), else the particles of --particles encoded now, else
RUN/latents.npz, else the run's own particle file encoded now.

examples:
  atomvae analyze run/ -o analysis/
  atomvae analyze run/ -o analysis/ --states 3 --particles particles.star --map-resolution 6
  chimerax analysis/movie.cxc
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by atomvae train")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument("--states", type=int, default=5, metavar="K", help="number of states (default 5)")
    parser.add_argument(
        "--particles",
        type=Path,
        metavar="STAR",
        help="particles to encode (default: RUN/latents.npz or the run's own particles)",
    )
    parser.add_argument("--latents", type=Path, help="latents.npz from atomvae encode (no encoding)")
    parser.add_argument(
        "--map-resolution",
        type=float,
        default=4.0,
        metavar="A",
        help="resolution of the state maps in A (default 4)",
    )
    parser.add_argument(
        "--traversal-steps", type=int, default=10, help="structures along each principal axis (default 10)"
    )
    parser.add_argument(
        "--rmsf-samples", type=int, default=1000, help="sampled structures behind the RMSF (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of K-means and the samples (default 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    from atomvae.evaluate.analysis import AnalyzeConfig, analyze

    config = AnalyzeConfig(
        run=args.run_dir,
        out=args.output,
        states=args.states,
        particles=args.particles,
        latents=args.latents,
        map_resolution=args.map_resolution,
        traversal_steps=args.traversal_steps,
        n_rmsf_samples=args.rmsf_samples,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    summary = analyze(config)
    counts = ", ".join(f"{s['state']}: {s['count']}" for s in summary["states"])
    print(
        f"{summary['n_particles']} particles in {len(summary['states'])} states ({counts}); "
        f"wrote {args.output}/index.html"
    )
    return 0
