"""Compare a predicted ensemble with the ground truth: EMD-RMSD, distance marginals, a report.

EMD-RMSD (paper section 4): --n structures drawn without replacement from each ensemble, RMSD after
optimal rigid superposition for all pairs, optimal one-to-one assignment, mean RMSD of the assigned
pairs (A). Atoms (--atoms CA|backbone|heavy) are matched between the inputs by chain, residue number,
insertion code and atom name; only atoms present in all inputs are compared.

On the same draws: CryoSTAR-style coverage and matching (COV-R / MAT-R, COV-P / MAT-P at
--cov-threshold A), per-residue C-alpha RMSF of both ensembles, and the physical plausibility of the
structures (peptide bonds, clashes, backbone angles, Ramachandran outliers).

With --base, also the base-structure-only reference; when GT holds at least 2N structures, the
finite-sample floor (two disjoint GT draws) and the recovered fraction (base - model) / (base - floor).
--distance CHAIN:RES:ATOM,CHAIN:RES:ATOM (repeatable) compares distance marginals (W1, histograms, a
scatter for two distances); --cutoff (one per distance, in order) gives mode proportions.
With --run, the report adds the run's training curves, its latent space (--latents, default
RUN/latents.npz from `atomvae encode`), and with --truth and --ensemble-source the conditional accuracy.

Writes OUT/report.html (self-contained), OUT/*.png and OUT/summary.json; prints a short summary.

Examples:
  atomvae evaluate samples.pdb truth_ensemble.pdb
  atomvae evaluate samples.dcd adk_dims.dcd --pred-topology samples_topology.pdb --gt-topology adk.psf \\
      --base base.pdb --n 1024 --json emd.json
  atomvae evaluate samples.pdb md.dcd --gt-topology md.psf --atoms backbone \\
      --distance A:284:CA,A:225:CA --cutoff 37 --distance A:288:CA,A:255:CZ --cutoff 6.5 -o eval/
  atomvae evaluate samples.pdb md.dcd --gt-topology md.psf --run run/ --latents latents.npz \\
      --truth truth.npz --ensemble-source md.dcd --ensemble-source-topology md.psf \\
      --distance A:284:CA,A:225:CA
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atomvae.errors import InputError, check_output_file, check_writable_folder
from atomvae.evaluate.evaluation import EvaluateConfig, evaluate
from atomvae.evaluate.report import summary_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", type=Path, help="predicted ensemble: multi-model PDB/mmCIF or trajectory")
    parser.add_argument("gt", type=Path, help="ground-truth ensemble: multi-model PDB/mmCIF or trajectory")
    parser.add_argument("--pred-topology", type=Path, help="topology for a PRED trajectory (.pdb, .psf, ...)")
    parser.add_argument("--gt-topology", type=Path, help="topology for a GT trajectory (.pdb, .psf, ...)")
    parser.add_argument(
        "--n", type=int, default=2048, help="structures drawn from each ensemble (default 2048)"
    )
    parser.add_argument(
        "--atoms",
        choices=("CA", "backbone", "heavy"),
        default="CA",
        help="atoms compared by EMD-RMSD (default CA)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument(
        "--cov-threshold",
        type=float,
        default=2.0,
        metavar="ANGSTROM",
        help="RMSD threshold of the coverage metrics COV-R / COV-P (default 2)",
    )
    parser.add_argument("--base", type=Path, help="base structure (PDB/mmCIF) for the base-only reference")
    parser.add_argument(
        "--distance",
        action="append",
        default=[],
        metavar="A:284:CA,A:225:CA",
        help="a distance between two atoms (repeatable)",
    )
    parser.add_argument(
        "--cutoff",
        action="append",
        type=float,
        default=[],
        metavar="ANGSTROM",
        help="cutoff for the i-th --distance (repeatable, in order)",
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the summary JSON here")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("evaluation"),
        help="folder for report.html, PNGs and summary.json (default ./evaluation)",
    )
    parser.add_argument("--run", type=Path, help="a run folder: training curves, latent space, conditional")
    parser.add_argument(
        "--latents", type=Path, help="latents.npz from atomvae encode (default RUN/latents.npz)"
    )
    parser.add_argument(
        "--particles", type=Path, help="particles.star the latents were encoded from (recorded in the report)"
    )
    parser.add_argument(
        "--truth", type=Path, help="truth.npz from atomvae simulate (true structure per particle)"
    )
    parser.add_argument("--ensemble-source", type=Path, help="the ensemble the simulation drew from")
    parser.add_argument("--ensemble-source-topology", type=Path, help="topology for a trajectory ENSEMBLE")
    parser.add_argument(
        "--posterior-samples",
        type=int,
        default=16,
        help="posterior samples per particle for the conditional accuracy (default 16)",
    )
    parser.add_argument(
        "--conditional-particles",
        type=int,
        default=2048,
        help="particles (a random subset) decoded for conditional accuracy (default 2048)",
    )
    parser.add_argument(
        "--device", default="cpu", help="device for decoding posterior samples (cpu, cuda, auto)"
    )
    parser.add_argument(
        "--allow-missing-atoms",
        action="store_true",
        help="score on the atoms PRED and GT share when one lacks some (default: an error)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing report in -o and an existing --json file",
    )


# Files the report may write into -o (report.write_report and the figures of evaluation.py).
REPORT_FILES = (
    "report.html",
    "summary.json",
    "emd_rmsd.png",
    "distance_histograms.png",
    "distance_scatter.png",
    "latent_pca.png",
    "training_curves.png",
)


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: -o must be a folder (or not exist) without a previous report, --json a new file
    (unless --overwrite), and no input may be among the files written."""
    inputs = [
        args.pred,
        args.gt,
        args.pred_topology,
        args.gt_topology,
        args.base,
        args.latents,
        args.particles,
        args.truth,
        args.ensemble_source,
        args.ensemble_source_topology,
    ]
    if args.out.exists() and not args.out.is_dir():
        raise InputError(args.out, "exists and is not a folder; -o names the report folder")
    written = [args.out / name for name in REPORT_FILES] + sorted(args.out.glob("conditional_d*.png"))
    for path in written:
        if path.exists() or any(p is not None and path.resolve() == p.resolve() for p in inputs):
            check_output_file(path, args.overwrite, inputs)
    check_writable_folder(args.out)
    if args.json_path is not None:
        check_output_file(args.json_path, args.overwrite, inputs)


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    config = EvaluateConfig(
        pred=args.pred,
        gt=args.gt,
        pred_topology=args.pred_topology,
        gt_topology=args.gt_topology,
        n=args.n,
        atoms=args.atoms,
        seed=args.seed,
        cov_threshold=args.cov_threshold,
        base=args.base,
        distances=tuple(args.distance),
        cutoffs=tuple(args.cutoff),
        out_dir=args.out,
        json_path=args.json_path,
        run=args.run,
        latents=args.latents,
        particles=args.particles,
        truth=args.truth,
        ensemble_source=args.ensemble_source,
        ensemble_source_topology=args.ensemble_source_topology,
        posterior_samples=args.posterior_samples,
        conditional_particles=args.conditional_particles,
        device=args.device,
        allow_missing_atoms=args.allow_missing_atoms,
    )
    summary = evaluate(config)
    print(summary_text(summary))
    if "report" in summary:
        print(f"report: {summary['report']}")
    return 0
