"""Which references let projection matching pose the adk benchmark's particles? A diagnostic (uses the truth).

On an evenly spread subset of the particles simulated by ``benchmarks/adk.py`` (run that first), searches
poses against (1) the base alone, (2) the base and elastic-network copies of it (``--modes``/``--amplitudes``,
what ``atomvae search-poses --modes`` does), (3) the true closed structure (trajectory frame 8) alone and
with the base: an oracle no user has, which shows whether the search or the reference limits pose accuracy.
With ``--runs``, also describes the states each learning run of the inferred pipeline offers as references
(d1/d2 distances, C-alpha RMSD to the closed frame 8 and the nearest trajectory frame). Prints, by the
particles' true frame (closed < 30 <= intermediate < 70 <= open), the fraction of poses
within 10 degrees of the truth and the median error.

    .venv/bin/python benchmarks/pose_search_references.py --out benchmarks/out/adk --particles 1500 \
        --runs benchmarks/out/adk/poses_inferred_seed0/run_round{1,2}
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from adk import FRAME_GROUPS, machine_reference, pose_errors_by_group  # benchmarks/ is first on sys.path
from atomvae.data.dataset import ParticleDataset
from atomvae.data.metadata import read_particles
from atomvae.demo import adk_inputs
from atomvae.structure.io import read_ensemble, read_structure
from atomvae.structure.normal_modes import anm_modes
from atomvae.train.pose_search import PoseSearchConfig, base_references, search_poses
from command_line import repository_command


def report(name: str, result, truth: dict, rows: np.ndarray, seconds: float) -> None:
    errors = pose_errors_by_group(result.rotation, rows, truth)
    cells = [
        f"{group} {100 * (errors[group] < 10).mean():.0f}% (median {np.median(errors[group]):.1f})"
        for group in FRAME_GROUPS
    ]
    print(f"{name:<34} {seconds:5.0f} s  within 10 deg: " + ", ".join(cells), flush=True)


def describe_learnt_states(run_dir: Path, out: Path, frames_ca: np.ndarray, config: PoseSearchConfig) -> None:
    """d1, d2 and C-alpha RMSDs of the base + learnt states that ``run_references`` would search against."""
    from atomvae.demo import ADK_DISTANCES
    from atomvae.geometry.superpose import rmsd
    from atomvae.structure.select import parse_atom_selection
    from atomvae.train.pose_search import run_references
    from atomvae.train.run import load_run

    topology = load_run(run_dir).topology
    position = {atom: k for k, atom in enumerate(topology.select("CA"))}  # CA references: CA order
    pairs = [
        [position[parse_atom_selection(atom, topology)] for atom in spec.split(",")]
        for spec, _ in ADK_DISTANCES
    ]
    states = run_references(run_dir, out / "sim" / "particles.star", 4, config).double()
    print(f"states learnt by {run_dir} (the first is the base):")
    for state in states:
        d = [float((state[i] - state[j]).norm()) for i, j in pairs]
        to_frames = rmsd(state[None].expand(len(frames_ca), -1, -1), torch.as_tensor(frames_ca)).numpy()
        print(
            f"  d1 {d[0]:.1f} A, d2 {d[1]:.1f} A; C-alpha RMSD to closed frame 8 {to_frames[8]:.2f} A; "
            f"nearest frame {to_frames.argmin()} at {to_frames.min():.2f} A",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/adk"))
    parser.add_argument("--particles", type=int, default=1500)
    parser.add_argument(
        "--mode-sets",
        nargs="*",
        default=["2:3,6", "1:3,5,7"],
        help="elastic-network references to try, each N_MODES:AMPLITUDES (A)",
    )
    parser.add_argument(
        "--runs",
        nargs="*",
        type=Path,
        default=[],
        help="learning runs whose learnt states (search-poses --references-from) to describe",
    )
    args = parser.parse_args(argv)
    print("command:", repository_command() if argv is None else repository_command([__file__, *argv]))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; machine reference: batched matmul "
        f"(256,64,1024)@(256,1024,64) float32 {machine_reference():.1f} GFLOP/s"
    )

    metadata = read_particles(args.out / "sim" / "particles.star")
    rows = np.linspace(0, len(metadata) - 1, args.particles).round().astype(np.int64)
    dataset = ParticleDataset(metadata.subset(rows), downsample_to=64)
    truth = dict(np.load(args.out / "sim" / "truth.npz"))
    base = read_structure(args.out / "base_open_docked.pdb")
    config = PoseSearchConfig()

    def run(name: str, references: torch.Tensor) -> None:
        start = time.perf_counter()
        result = search_poses(dataset, references, config, progress=False)
        report(name, result, truth, rows, time.perf_counter() - start)

    inputs = adk_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        topology, frames = read_ensemble(inputs.trajectory, inputs.topology)
    frames_ca = frames[:, topology.select("CA")]
    closing = frames_ca[8] - frames_ca[-1]
    mode1 = anm_modes(frames_ca[-1], 1)[0]
    print(
        f"open->closed (frame 97 -> 8) C-alpha RMSD {np.sqrt((closing**2).sum(-1).mean()):.2f} A, "
        f"of which ANM mode 1 of frame 97 carries {(closing * mode1).sum() / np.sqrt(len(mode1)):.2f} A"
    )
    for run_dir in args.runs:
        describe_learnt_states(run_dir, args.out, frames_ca, config)

    base_only = base_references(base, config)  # (1, A_CA, 3), centred on the base's centre of atoms
    run("base", base_only)
    for spec in args.mode_sets:
        n_modes, amplitudes = spec.split(":")
        amps = tuple(float(a) for a in amplitudes.split(","))
        references = base_references(base, config, int(n_modes), amps)
        run(f"base + {n_modes} ANM modes at {amplitudes} A", references)
    # the oracle: the true closed end state, in the base's centred frame (rotation centre of the search)
    closed = frames_ca[8] - base.coords.mean(axis=0)
    closed = torch.as_tensor(closed[None], dtype=torch.float32)
    run("true closed frame only (oracle)", closed)
    run("base + true closed frame (oracle)", torch.cat([base_only, closed]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
