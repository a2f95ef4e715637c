"""The demo: the whole pipeline on the bundled default (adenylate kinase), in minutes on a laptop CPU.

Data: the DIMS open<->closed transition of E. coli adenylate kinase that the MDAnalysisTests package
ships (adk.psf + adk_dims.dcd: 98 frames, 214 residues, 1,656 heavy atoms; frame 0 is closed, frame 97
open). The ground truth is a deliberately multi-modal distribution over the frames (``ADK_WEIGHTS``:
55% near the closed end, 30% near the open end, 15% spread over all frames). The base structure is
adk_open.pdb docked into the particles' common frame, as a user would have it after a consensus
refinement. The same inputs serve ``benchmarks/adk.py`` (the full-size benchmark).

The demo is the benchmark shrunk (fewer particles, fewer epochs): simulate -> train -> sample -> encode
-> evaluate, writing one folder. Running it again in the same folder reuses the simulated particles and
resumes training from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from atomvae.train.domain_references import DomainFitConfig

from atomvae.errors import InputError, atomic_write_text
from atomvae.geometry.superpose import kabsch
from atomvae.structure.io import read_ensemble, read_structure, write_ensemble

# 55% a Gaussian bump (width 4 frames) at frame 8 (closed), 30% at frame 88 (open), 15% uniform.
ADK_WEIGHTS = "mix:0.55@8:4,0.30@88:4,0.15@uniform"
# NMP-LID gap (13 A closed, 29 A open) and LID-CORE hinge (31 A closed, 39 A open), with cutoffs that
# split the closed and open modes.
ADK_DISTANCES = (("A:55:CA,A:169:CA", 21.0), ("A:127:CA,A:194:CA", 35.0))
ADK_BOX, ADK_PIXEL_SIZE = 64, 1.5  # a 96 A box: the protein's largest radius is 36 A


@dataclass(frozen=True)
class AdkInputs:
    trajectory: Path  # adk_dims.dcd
    topology: Path  # adk.psf
    base_pdb: Path  # adk_open.pdb


def adk_inputs() -> AdkInputs:
    """Paths of the adenylate-kinase files shipped by MDAnalysisTests (InputError if not installed)."""
    try:
        from MDAnalysisTests import datafiles
    except ImportError:
        raise InputError(
            "MDAnalysisTests",
            "the demo's data come from the MDAnalysisTests package; install "
            "it with: pip install 'atomvae[md]'",
        ) from None
    return AdkInputs(Path(datafiles.DCD), Path(datafiles.PSF), Path(datafiles.PDB_small))


def docked_base(base_pdb: Path, frames: np.ndarray, frame: int, out: Path) -> Path:
    """The base structure superposed (C-alpha) onto ``frames[frame]`` (M, A, 3), written to ``out``.

    A consensus refinement leaves the user's model docked in the particles' common frame; the
    simulated particles' frame is the trajectory's, so the base is placed there the same way.
    """
    base = read_structure(base_pdb)
    ca = base.topology.select("CA")
    rot, trans = kabsch(torch.as_tensor(base.coords[ca]), torch.as_tensor(frames[frame][ca]))
    write_ensemble(out, base.topology, (base.coords @ rot.numpy().T + trans.numpy())[None])
    return out


def write_gt_ensemble(
    out_dcd: Path, topology, frames: np.ndarray, weights: np.ndarray, n: int, seed: int
) -> tuple[Path, Path]:
    """An evaluation ensemble of ``n`` frames drawn from ``weights`` (independently of the particles), as
    a DCD (compact: 12 bytes per atom). Returns the DCD and the topology PDB written beside it."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(frames), size=n, p=np.asarray(weights, dtype=np.float64))
    dcd, topology_pdb = write_ensemble(out_dcd, topology, frames[chosen])
    return dcd, topology_pdb


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("atomvae-demo")
    n_particles: int = 4000
    snr: float = 0.1
    poses: str = "given"  # "given" | "inferred" | "refine" | "searched" (atomvae.train.searched)
    # Given poses (a consensus refinement's) by default: the conformation path is what the demo shows,
    # and pose inference from scratch needs far more than a demo's minutes (see BENCHMARKS.md).
    epochs_stage1: int = 2  # used only when poses are inferred or refined
    epochs_stage2: int = 12
    gt_n: int = 1024  # the floor needs 2 x n_eval ground-truth structures
    n_eval: int = 512
    seed: int = 0
    progress: bool = True
    # poses "searched" only: pose searches (the first against the base) and the stage-2 epochs of the
    # short learning run between two searches (atomvae.train.searched.SearchedRouteConfig)
    search_rounds: int = 2
    search_round_epochs: int = 4
    # poses "searched" only: the fit of round 1's references (None: DomainFitConfig's defaults)
    search_fit: DomainFitConfig | None = None


def run_demo(config: DemoConfig) -> dict:
    """simulate -> train -> sample -> encode -> evaluate in ``config.out``; returns the evaluation summary."""
    from atomvae.evaluate.evaluation import EvaluateConfig, evaluate, score_ensemble
    from atomvae.simulate import SimulationConfig, simulate
    from atomvae.train.config import PRESETS
    from atomvae.train.inference import encode_to_file, read_posteriors, sample_structures
    from atomvae.train.loop import train
    from atomvae.train.run import base_structure_path, load_run

    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    inputs = adk_inputs()
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = time.perf_counter()
        print(f"[demo] {name}", flush=True)

    sim = out / "particles"
    step("simulate")
    if not (sim / "truth.npz").is_file():  # simulate writes its folder atomically: present = complete
        simulate(
            SimulationConfig(
                ensemble=inputs.trajectory,
                topology=inputs.topology,
                output=sim,
                n_particles=config.n_particles,
                box=ADK_BOX,
                pixel_size=ADK_PIXEL_SIZE,
                snr=config.snr,
                weights=ADK_WEIGHTS,
                seed=config.seed + 1,
                gt_n=16,
                overwrite=False,
                progress=config.progress,
            )
        )
    truth = np.load(sim / "truth.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MDAnalysis chatter about DCD readers
        topology, frames = read_ensemble(inputs.trajectory, inputs.topology)
    gt_dcd, gt_top = write_gt_ensemble(
        out / "gt_ensemble.dcd", topology, frames, truth["weights"], config.gt_n, seed=config.seed + 2
    )
    base = docked_base(inputs.base_pdb, frames, len(frames) - 1, out / "base_open_docked.pdb")

    run_dir = out / "run"
    train_config = PRESETS["cpu"]
    particles = sim / "particles.star"
    # The simulator's poses turn the structure about the simulation's centre; searched poses turn the
    # base about its own centre of atoms (the default).
    pose_center: tuple[float, ...] | None = tuple(float(c) for c in truth["center"])
    pose_mode = config.poses
    if config.poses == "searched":
        from atomvae.train.domain_references import DomainFitConfig
        from atomvae.train.searched import SearchedRouteConfig, searched_poses

        step("search poses")
        route = SearchedRouteConfig(
            rounds=config.search_rounds,
            round_epochs=config.search_round_epochs,
            fit=config.search_fit or DomainFitConfig(),
        )
        route_config = dataclasses.replace(train_config, seed=config.seed)
        particles, _seconds = searched_poses(
            particles, base, out / "poses", route_config, route, progress=config.progress
        )
        pose_center, pose_mode = None, "given"
    step("train")
    train_config = dataclasses.replace(
        train_config,
        pose_mode=pose_mode,
        seed=config.seed,
        stage1=train_config.stage1.with_epochs(config.epochs_stage1),
        stage2=train_config.stage2.with_epochs(config.epochs_stage2),
        data=dataclasses.replace(train_config.data, pose_center=pose_center),
    )
    resume = (run_dir / "config.yaml").is_file()
    train(
        train_config,
        particles,
        base,
        run_dir,
        resume=resume,
        show_progress=config.progress,
        argv=["atomvae", "demo"],
    )

    step("encode")
    encode_to_file(run_dir, sim / "particles.star", run_dir / "latents.npz", overwrite=True)  # rerun: redo

    step("sample")
    # From the particles' aggregate posterior (what `atomvae sample --latents` does); the prior's samples
    # (the paper's) are scored beside them below.
    run = load_run(run_dir)
    posterior = read_posteriors(run_dir / "latents.npz", run.model.config.latent_conf)
    samples = run.model.to_base_frame(
        sample_structures(run, config.n_eval, seed=config.seed, posterior=posterior)
    )
    samples = samples.detach().double().numpy()
    write_ensemble(out / "samples.dcd", run.topology, samples)  # all samples, compact, for evaluation
    write_ensemble(out / "samples.pdb", run.topology, samples[:64])  # a viewable subset
    prior_samples = run.model.to_base_frame(sample_structures(run, config.n_eval, seed=config.seed))
    write_ensemble(out / "samples_prior.dcd", run.topology, prior_samples.detach().double().numpy())

    step("evaluate")
    distances = tuple(spec for spec, _ in ADK_DISTANCES)
    cutoffs = tuple(cutoff for _, cutoff in ADK_DISTANCES)
    summary = evaluate(
        EvaluateConfig(
            pred=out / "samples.dcd",
            pred_topology=base_structure_path(run_dir),
            gt=gt_dcd,
            gt_topology=gt_top,
            n=config.n_eval,
            atoms="CA",
            seed=config.seed,
            base=base,
            distances=distances,
            cutoffs=cutoffs,
            out_dir=out / "evaluation",
            json_path=out / "evaluation.json",
            run=run_dir,
            truth=sim / "truth.npz",
            ensemble_source=inputs.trajectory,
            ensemble_source_topology=inputs.topology,
            notes=(
                f"atomvae demo: {config.n_particles} simulated particles (SNR {config.snr}), poses "
                f"{config.poses}, cpu preset with {config.epochs_stage2} stage-2 epochs.",
            ),
        )
    )
    summary["prior_samples"] = score_ensemble(
        out / "samples_prior.dcd",
        out / "samples_prior_topology.pdb",
        gt_dcd,
        gt_top,
        base,
        config.n_eval,
        config.seed,
    )
    timings["end"] = time.perf_counter()
    names = list(timings)
    minutes = {a: (timings[b] - timings[a]) / 60 for a, b in zip(names, names[1:], strict=False)}
    atomic_write_text(
        out / "demo.json",
        json.dumps(
            {
                "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
                "minutes": minutes,
                "evaluation": summary,
            },
            indent=2,
            default=float,
        ),
    )
    summary["minutes"] = minutes
    return summary
