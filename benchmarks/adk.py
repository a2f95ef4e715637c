"""End-to-end benchmark on adenylate kinase: simulate, train (poses inferred and given), sample, evaluate.

Data: the DIMS open<->closed transition of E. coli adenylate kinase that MDAnalysisTests ships
(adk.psf + adk_dims.dcd: 98 frames, 214 residues, 1,656 heavy atoms; frame 0 is closed (0.5 A C-alpha
RMSD to adk_closed.pdb), frame 97 open (0.6 A to adk_open.pdb)).

Ground truth: a deliberately multi-modal distribution over the frames (``WEIGHTS``): 55% a Gaussian
bump of width 4 frames centred at frame 8 (closed), 30% centred at frame 88 (open), 15% uniform over
all frames (a thin spread of intermediates). The simulator draws each particle's frame from it, and an
independent evaluation ensemble of ``--gt-n`` frames (written as a DCD beside its topology).

Base structure: adk_open.pdb as a user would have it from a consensus refinement: docked into the
common frame of the particles (superposed on the C-alpha of the open end frame) — it is not one of the
trajectory's frames (0.6 A from frame 97).

Distances (paper figures 7-8 style): A:55:CA-A:169:CA spans the NMP-LID gap (13 A closed, 29 A open: it
is the clearest single coordinate of the closing motion) and A:127:CA-A:194:CA the LID-CORE hinge (31 A
closed, 39 A open). Cutoffs 21 A and 35 A split the closed and open modes.

Poses: "given" = the simulator's, fixed; "searched" = from the images and the base alone
(``atomvae.train.searched``): a search against the base, then (--rounds - 1) times a short run learns
conformations, each particle is searched again against the learnt states nearest its own decoded
conformation; the last round refines each pose against that conformation, starting from the better of the
new pose and the previous round's; the final model trains on the last poses (--final-poses given or
refine), continuing from the last learning run's weights (--final-start route). At 20,000 particles:
--rounds 3 --round-epochs 1 6 (the final training is then 6 + 6 epochs with the third search between).
"searched-v1" = the earlier route (search against the base and 4 learnt
states, C-alpha templates; recorded as "inferred" in the older results; kept to reproduce its numbers);
"inferred" = the paper's amortised pose encoder from scratch (``atomvae train --poses inferred``).

Run (everything, about two hours on 2 cores; see BENCHMARKS.md):
    .venv/bin/python benchmarks/adk.py --out benchmarks/out/adk
Pieces: --skip-simulate reuses OUT/sim; --modes given to train one mode; --config YAML overrides the
``cpu`` preset (the same file for every mode). Results: OUT/adk_results_<modes>.json and .md.

Not tuned to one data set (issue 10): --base closed starts from adk_closed.pdb (docked onto the closed end
frame) instead of the open structure; --bfactor adds to the simulator's atomic B-factor (20 A^2) without
the STAR file saying so; --snr; --pixel-size with --oversample changes the detector sampling (the box
keeps its 96 A). Samples are drawn from the particles' aggregate posterior (`atomvae sample --latents`);
the prior's samples (the paper's) are scored beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from atomvae.demo import (
    ADK_BOX,
    ADK_DISTANCES,
    ADK_PIXEL_SIZE,
    ADK_WEIGHTS,
    adk_inputs,
    docked_base,
    write_gt_ensemble,
)
from atomvae.errors import atomic_write_text
from atomvae.evaluate.evaluation import score_ensemble
from atomvae.evaluate.stereochemistry import stereochemistry_summary
from atomvae.structure.io import read_ensemble
from atomvae.train.metrics import METRICS_FILE, training_seconds
from atomvae.train.run import base_structure_path, seed_dir
from command_line import repository_command

WEIGHTS = ADK_WEIGHTS
DISTANCES = ADK_DISTANCES
BOX, PIXEL_SIZE = ADK_BOX, ADK_PIXEL_SIZE


def machine_reference(repeats: int = 5) -> float:
    """Batched matmul GFLOP/s of (256, 64, 1024) @ (256, 1024, 64) in float32: this machine's ceiling."""
    a, b = torch.randn(256, 64, 1024), torch.randn(256, 1024, 64)
    torch.bmm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.bmm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 256 * 64 * 64 * 1024 / best / 1e9


def run(cmd: list[str], log: Path) -> float:
    """Run an atomvae command, echo it, tee its output to ``log``; return wall seconds."""
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    print(f"  done in {seconds / 60:.1f} min", flush=True)
    return seconds


def atomvae_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "atomvae", *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/adk"))
    parser.add_argument("--particles", type=int, default=20000)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--gt-n", type=int, default=4096)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["searched", "given"],
        choices=["searched", "searched-v1", "inferred", "given"],
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", type=Path, help="YAML overriding the cpu preset")
    parser.add_argument("--n", type=int, default=2048, help="structures per side of the EMD-RMSD")
    parser.add_argument("--skip-simulate", action="store_true")
    parser.add_argument(
        "--em-epochs",
        type=int,
        default=6,
        help="inferred mode: stage-2 epochs of the run learning states between searches",
    )
    parser.add_argument(
        "--base",
        choices=("open", "closed"),
        default="open",
        help="base structure: adk_open.pdb (default) or adk_closed.pdb, docked",
    )
    parser.add_argument(
        "--bfactor",
        type=float,
        default=20.0,
        help="simulator's atomic B-factor, A^2 (default 20; not written to the STAR file)",
    )
    parser.add_argument("--pixel-size", type=float, default=PIXEL_SIZE, help="A (the box keeps 96 A)")
    parser.add_argument("--oversample", type=int, default=2, help="simulator's sub-pixel oversampling")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="searched modes: rounds of pose search (the first against the base or fitted references, "
        "the later ones against learnt states)",
    )
    parser.add_argument(
        "--n-references",
        type=int,
        default=4,
        help="searched modes: learnt states searched against in rounds 2, 3, ...",
    )
    parser.add_argument(
        "--round-epochs",
        type=int,
        nargs="+",
        default=[4],
        help="searched mode: stage-2 epochs of each learning run, one value or one per run, the last "
        "repeating (4 at 4,000 particles; 1 6 with --rounds 3 at 20,000: the last run's 6 epochs are the "
        "final training's first half, see --final-start)",
    )
    parser.add_argument(
        "--n-nearest",
        type=int,
        default=3,
        help="searched mode: references (nearest its own conformation) each particle may match",
    )
    parser.add_argument(
        "--fit-references",
        type=int,
        default=1,
        help="searched mode: references fitted to the particles in round 1 (rigid domain motions of base)",
    )
    parser.add_argument(
        "--path-points",
        type=int,
        default=2,
        help="searched mode: references on the rigid path from the base to each fitted one",
    )
    parser.add_argument(
        "--refine",
        choices=("every", "last", "none"),
        default="last",
        help="searched mode: rounds refined against each particle's own conformation",
    )
    parser.add_argument(
        "--final-start",
        choices=("route", "scratch"),
        default="route",
        help="searched mode: the final training continues from the route's last learning run (the preset's "
        "stage-2 epochs less that run's) or starts from scratch (all of them)",
    )
    parser.add_argument(
        "--final-poses",
        choices=("given", "refine"),
        default="given",
        help="searched mode: the final training keeps the searched poses fixed or refines them",
    )
    args = parser.parse_args(argv)

    inputs = adk_inputs()  # the benchmark's data: MDAnalysisTests (PyPI)
    DCD, PSF = str(inputs.trajectory), str(inputs.topology)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = repository_command() if argv is None else repository_command([__file__, *argv])
    print(f"command: {command}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    gflops = machine_reference()
    print(f"machine reference: batched matmul (256,64,1024)@(256,1024,64) float32 {gflops:.1f} GFLOP/s")
    box = round(BOX * PIXEL_SIZE / args.pixel_size)
    results: dict = {
        "command": command,
        "matmul_gflops": gflops,
        "weights": WEIGHTS,
        "snr": args.snr,
        "particles": args.particles,
        "box": box,
        "pixel_size": args.pixel_size,
        "base": args.base,
        "bfactor": args.bfactor,
        "oversample": args.oversample,
        "runs": [],
    }

    # One results file per set of modes, so modes can run as separate processes side by side.
    results_path = out / f"adk_results_{'-'.join(args.modes)}"
    sim = out / "sim"
    if not args.skip_simulate:
        results["simulate_s"] = run(
            atomvae_cmd(
                "simulate",
                DCD,
                "--topology",
                PSF,
                "-n",
                str(args.particles),
                "--box",
                str(box),
                "--pixel-size",
                str(args.pixel_size),
                "--snr",
                str(args.snr),
                "--weights",
                WEIGHTS,
                "--seed",
                "1",
                "--bfactor",
                str(args.bfactor),
                "--oversample",
                str(args.oversample),
                "--defocus-min",
                "10000",
                "--defocus-max",
                "25000",
                "--astigmatism",
                "500",
                "--gt-n",
                "16",
                "--overwrite",
                "--no-progress",
                "-o",
                str(sim),
            ),
            out / "simulate.log",
        )
    truth = np.load(sim / "truth.npz")

    # Evaluation ensemble: an independent draw of gt_n frames from the same weights, as a DCD.
    topology, frames = read_ensemble(DCD, PSF)
    gt_path, gt_topology = write_gt_ensemble(
        out / "gt_ensemble.dcd", topology, frames, truth["weights"], args.gt_n, seed=12345
    )
    if args.base == "open":
        base = docked_base(inputs.base_pdb, frames, len(frames) - 1, out / "base_open_docked.pdb")
    else:
        from MDAnalysisTests.datafiles import PDB_closed  # adk_closed.pdb

        base = docked_base(Path(PDB_closed), frames, 0, out / "base_closed_docked.pdb")
    center = ",".join(f"{c:.4f}" for c in truth["center"])

    for mode in args.modes:
        for seed in args.seeds:
            run_dir = out / f"run_{mode}_seed{seed}"
            pose_report: dict = {}
            if mode == "searched":
                train_s, particles, init, epochs = searched_route(out, sim, base, seed, args, pose_report)
                final = {"stage1": {"epochs": 0}} if args.final_poses == "refine" else None
                train_s += train(
                    particles,
                    base,
                    run_dir,
                    args.final_poses,
                    seed,
                    args,
                    center=None,
                    extra=final,
                    init=init,
                    epochs_stage2=epochs,
                )
                if args.final_poses == "refine":
                    pose_report["final_refined"] = refined_pose_accuracy(run_dir, particles, truth)
            elif mode == "searched-v1":
                # Poses found from the images: search against the base, learn states, search again.
                train_s, particles = searched_poses(out, sim, base, seed, args, pose_report)
                train_s += train(particles, base, run_dir, "given", seed, args, center=None)
            else:
                # "inferred": the paper's pose encoder learnt from scratch (stage 1 then 2);
                # "given": the simulator's poses, fixed.
                poses = mode
                train_s = train(sim / "particles.star", base, run_dir, poses, seed, args, center=center)
            samples = run_dir / "samples.dcd"  # coordinates only; the run's base.pdb is the topology
            sample_topology_path = base_structure_path(run_dir)
            latents = run_dir / "latents.npz"
            if not latents.exists():
                run(
                    atomvae_cmd("encode", str(run_dir), str(sim / "particles.star"), "-o", str(latents)),
                    run_dir.with_suffix(".encode.log"),
                )
            for path, extra in ((samples, ["--latents", str(latents)]), (run_dir / "samples_prior.dcd", [])):
                if not path.exists():
                    run(
                        atomvae_cmd(
                            "sample", str(run_dir), "-n", str(args.n), "-o", str(path), "--seed", "0", *extra
                        ),
                        run_dir.with_suffix(".sample.log"),
                    )
            eval_json = run_dir / "evaluation.json"
            eval_cmd = [
                "evaluate",
                str(samples),
                str(gt_path),
                "--pred-topology",
                str(sample_topology_path),
                "--gt-topology",
                str(gt_topology),
                "--base",
                str(base),
                "--n",
                str(args.n),
                "--atoms",
                "CA",
                "--json",
                str(eval_json),
                "-o",
                str(run_dir / "evaluation"),
                "--run",
                str(run_dir),
                "--truth",
                str(sim / "truth.npz"),
                "--ensemble-source",
                DCD,
                "--ensemble-source-topology",
                PSF,
            ]
            for spec, cutoff in DISTANCES:
                eval_cmd += ["--distance", spec, "--cutoff", str(cutoff)]
            run(atomvae_cmd(*eval_cmd), run_dir.with_suffix(".evaluate.log"))
            evaluation = json.loads(eval_json.read_text())
            prior = score_ensemble(
                run_dir / "samples_prior.dcd", sample_topology_path, gt_path, gt_topology, base, args.n
            )
            sample_topology, sample_coords = read_ensemble(samples, sample_topology_path)
            stereo = stereochemistry_summary(sample_coords, sample_topology).as_dict()
            # Issue 10's check of the image model: with true poses, is the truth likelier than the decoding?
            if mode == "given":
                from latent_oracle import truth_minus_decoded  # benchmarks/ is first on sys.path

                truth_gap = truth_minus_decoded(run_dir, sim)
            else:
                truth_gap = None
            results["runs"].append(
                {
                    "mode": mode,
                    "seed": seed,
                    "train_minutes": train_s / 60,
                    "evaluation": evaluation,
                    "prior_samples": prior,
                    "stereochemistry_all_samples": stereo,
                    "truth_minus_decoded": truth_gap,
                    "pose_search": pose_report,
                }
            )
            atomic_write_text(results_path.with_suffix(".json"), json.dumps(results, indent=2, default=float))

    print(markdown_table(results))
    atomic_write_text(results_path.with_suffix(".md"), markdown_table(results))
    return 0


def train(
    particles: Path,
    base: Path,
    run_dir: Path,
    poses: str,
    seed: int,
    args,
    center: str | None,
    epochs_stage2: int | None = None,
    init: Path | None = None,
    extra: dict | None = None,
) -> float:
    """``atomvae train`` with the cpu preset (resumed if run_dir exists; weights started from ``init``'s
    best checkpoint when given; ``extra`` config overrides on top of --config); returns wall seconds, those
    of the earlier processes of a resumed run included (the metrics' training clock)."""
    cmd = [
        "train",
        str(particles),
        str(base),
        "-o",
        str(run_dir),
        "--preset",
        "cpu",
        "--poses",
        poses,
        "--seed",
        str(seed),
        "--no-progress",
    ]
    if center is not None:
        cmd += ["--pose-center", center]
    if epochs_stage2 is not None:
        cmd += ["--epochs-stage2", str(epochs_stage2)]
    if extra:
        import yaml

        overrides = yaml.safe_load(args.config.read_text()) if args.config else {}
        for key, value in extra.items():
            overrides[key] = {**overrides.get(key, {}), **value}
        config_path = run_dir.with_suffix(".config.yaml")
        atomic_write_text(config_path, yaml.safe_dump(overrides))
        cmd += ["--config", str(config_path)]
    elif args.config:
        cmd += ["--config", str(args.config)]
    if init is not None:
        cmd += ["--init", str(init)]
    if run_dir.exists():
        cmd.append("--resume")
    wall_s = run(atomvae_cmd(*cmd), run_dir.with_suffix(".train.log"))
    logged_s = training_seconds(seed_dir(run_dir, seed) / METRICS_FILE)
    return max(wall_s, logged_s or 0.0)


# Particles grouped by their true trajectory frame for pose diagnostics: [lo, hi).
FRAME_GROUPS = {"closed": (0, 30), "intermediate": (30, 70), "open": (70, 10**6)}


def pose_errors_by_group(rotation: torch.Tensor, rows: np.ndarray, truth: dict) -> dict[str, np.ndarray]:
    """Angles (deg) between found rotations (N, 3, 3) of particles ``rows`` and the true ones, per
    ``FRAME_GROUPS`` group and "all" (a diagnostic on simulated data only: nothing is tuned on it)."""
    from atomvae.train.pose_search import pose_errors_deg

    errors = pose_errors_deg(rotation, torch.as_tensor(truth["rotation"][rows]))
    frames = truth["frame"][rows]
    groups = {name: errors[(frames >= lo) & (frames < hi)] for name, (lo, hi) in FRAME_GROUPS.items()}
    return {"all": errors, **groups}


def pose_accuracy(search_npz: Path, truth: dict) -> dict:
    """Median error and fraction within 10 degrees of a search's poses, overall and per frame group."""
    found = np.load(search_npz)
    errors = pose_errors_by_group(torch.as_tensor(found["rotation"]), found["index"], truth)
    report = {
        "median_error_deg": float(np.median(errors["all"])),
        "within_10_deg": float((errors["all"] < 10).mean()),
        "particles_per_reference": np.bincount(found["reference"]).tolist(),
    }
    for name in FRAME_GROUPS:
        report[f"within_10_deg_{name}"] = float((errors[name] < 10).mean())
    return report


def searched_poses(out: Path, sim: Path, base: Path, seed: int, args, report: dict) -> tuple[float, Path]:
    """Round 1: search against the base. Then, ``--rounds`` - 1 times: a short run (``--em-epochs``) learns
    states from the latest poses (started from the previous round's run), and the particles are searched
    again against the base and ``--n-references`` learnt states. Returns (wall seconds, last round's STAR)."""
    truth = dict(np.load(sim / "truth.npz"))
    folder = out / f"poses_inferred_seed{seed}"
    folder.mkdir(exist_ok=True)
    seconds = 0.0
    poses = folder / "round1.star"
    if not poses.exists():
        seconds += run(
            atomvae_cmd(
                "search-poses", str(sim / "particles.star"), str(base), "-o", str(poses), "--no-progress"
            ),
            folder / "round1.log",
        )
    report["round1"] = pose_accuracy(poses.with_suffix(".npz"), truth)
    previous_run: Path | None = None
    for round_index in range(1, args.rounds):
        learn_run = folder / f"run_round{round_index}"
        seconds += train(
            poses,
            base,
            learn_run,
            "given",
            seed,
            args,
            center=None,
            epochs_stage2=args.em_epochs,
            init=previous_run,
        )
        poses = folder / f"round{round_index + 1}.star"
        if not poses.exists():
            seconds += run(
                atomvae_cmd(
                    "search-poses",
                    str(sim / "particles.star"),
                    str(base),
                    "-o",
                    str(poses),
                    "--references-from",
                    str(learn_run),
                    "--n-references",
                    str(args.n_references),
                    "--no-progress",
                ),
                folder / f"round{round_index + 1}.log",
            )
        report[f"round{round_index + 1}"] = pose_accuracy(poses.with_suffix(".npz"), truth)
        previous_run = learn_run
        print(f"  pose search: {json.dumps(report)}", flush=True)
    return seconds, poses


def searched_route(
    out: Path, sim: Path, base: Path, seed: int, args, report: dict
) -> tuple[float, Path, Path | None, int | None]:
    """The searched route (``atomvae.train.searched``) in OUT/poses_searched_seed<seed>; pose accuracy of
    every round into ``report``. Returns (wall seconds, last round's STAR, the run the final training
    starts from and its stage-2 epochs: with --final-start route the last learning run and the preset's
    epochs less that run's, else None, None)."""
    import dataclasses

    from atomvae.train.config import PRESETS, load_config
    from atomvae.train.domain_references import DomainFitConfig
    from atomvae.train.searched import SearchedRouteConfig, last_learning_run
    from atomvae.train.searched import searched_poses as route_poses

    truth = dict(np.load(sim / "truth.npz"))
    config = load_config(args.config, preset="cpu") if args.config else PRESETS["cpu"]
    config = dataclasses.replace(config, seed=seed)
    route = SearchedRouteConfig(
        rounds=args.rounds,
        round_epochs=tuple(args.round_epochs),
        n_references=args.n_references,
        n_nearest=args.n_nearest,
        refine=args.refine,
        fit=DomainFitConfig(n_fitted=args.fit_references, path_points=args.path_points),
    )
    report["route"] = dataclasses.asdict(route)

    def on_round(name: str, npz: Path) -> None:
        report[name] = pose_accuracy(npz, truth)
        print(f"  {name}: {json.dumps(report[name])}", flush=True)

    start = time.perf_counter()
    star, seconds = route_poses(
        sim / "particles.star", base, out / f"poses_searched_seed{seed}", config, route, on_round=on_round
    )
    report["seconds"] = seconds
    init = last_learning_run(out / f"poses_searched_seed{seed}", route)
    if args.final_start == "scratch" or init is None:
        return time.perf_counter() - start, star, None, None
    remaining = max(config.stage2.epochs - route.epochs_of_run(route.rounds - 1), 1)
    return time.perf_counter() - start, star, init, remaining


def refined_pose_accuracy(run_dir: Path, particles: Path, truth: dict) -> dict:
    """Pose accuracy of a run trained with --poses refine: the poses its encoder returns."""
    from atomvae.train.inference import encode_particles
    from atomvae.train.run import load_run

    encoded = encode_particles(load_run(run_dir), particles)
    errors = pose_errors_by_group(torch.as_tensor(encoded["rotation"]), encoded["index"], truth)
    report = {
        "median_error_deg": float(np.median(errors["all"])),
        "within_10_deg": float((errors["all"] < 10).mean()),
    }
    for name in FRAME_GROUPS:
        report[f"within_10_deg_{name}"] = float((errors[name] < 10).mean())
    return report


def markdown_table(results: dict) -> str:
    lines = [
        "| poses | seed | train min | EMD-RMSD (A) | base-only | floor | recovered "
        "| recovered (prior) | "
        + " | ".join(f"{spec} W1 / mode% pred vs gt" for spec, _ in DISTANCES)
        + " | plausible | truth - decoded, closed / intermediate / open (nats/image; own side chains) |",
        "|" + "---|" * (10 + len(DISTANCES)),
    ]
    for r in results["runs"]:
        e = r["evaluation"]
        emd = e.get("emd_rmsd", float("nan"))
        cells = [
            r["mode"],
            str(r["seed"]),
            f"{r['train_minutes']:.0f}",
            f"{emd:.2f}",
            f"{e.get('base_only', float('nan')):.2f}",
            f"{e.get('floor', float('nan')):.2f}",
            f"{e.get('recovered_fraction', float('nan')):.2f}",
            f"{(r.get('prior_samples') or {}).get('recovered_fraction', float('nan')):.2f}",
        ]
        for m in e.get("distances", []):
            cells.append(
                f"{m.get('wasserstein_1', float('nan')):.2f} A / "
                f"{100 * m.get('pred_below', float('nan')):.0f}% vs "
                f"{100 * m.get('gt_below', float('nan')):.0f}%"
            )
        cells.append(f"{100 * r['stereochemistry_all_samples']['fraction_ok']:.1f}%")
        gap = r.get("truth_minus_decoded")
        cells.append(
            " / ".join(f"{g['own_side_chains']:+.1f}" for g in gap.values())
            + " (base side chains: "
            + " / ".join(f"{g['base_side_chains']:+.1f}" for g in gap.values())
            + ")"
            if gap
            else "-"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
