"""Why the searched route cannot pose the closed particles of the adk benchmark: diagnostics that use the
simulation's truth (nothing of the route is tuned on them).

    resolution  search evenly spread particles against the open base (residue pseudo-atoms) at several
                low-pass limits: fraction within 10 / 20 deg per state
    rank        for closed particles (frames < 30), where the true view ranks in the global grid search
                against the base (is it among the top K candidates?)
    anm         frame 8 (closed) projected onto the k slowest elastic-network modes of the base: how far
                that reference is from the closed frame and how many closed particles it poses
    extrapolate decode a learning run's latent along its first principal axis, far beyond the data:
                how near the closed frame the decoder gets

Run from the repository root after `benchmarks/adk.py --out OUT --particles 4000 ... --modes searched`:

    .venv/bin/python benchmarks/searched_diagnostics.py OUT resolution --particles 400
    .venv/bin/python benchmarks/searched_diagnostics.py OUT rank
    .venv/bin/python benchmarks/searched_diagnostics.py OUT anm
    .venv/bin/python benchmarks/searched_diagnostics.py OUT domains
    .venv/bin/python benchmarks/searched_diagnostics.py OUT extrapolate
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from atomvae.data.dataset import ParticleDataset, fourier_crop
from atomvae.data.metadata import read_particles
from atomvae.demo import adk_inputs
from atomvae.geometry.superpose import kabsch
from atomvae.physics.render import render_projections
from atomvae.structure.io import read_ensemble, read_structure
from atomvae.structure.normal_modes import anm_modes
from atomvae.train.pose_search import (
    PoseSearchConfig,
    _Scorer,
    pose_errors_deg,
    rotation_angle_deg,
    search_poses,
    super_fibonacci_rotations,
)
from atomvae.train.searched import render_atoms_of_base

GROUPS = {"closed": (0, 30), "intermediate": (30, 70), "open": (70, 10**6)}
# Adenylate kinase's domains (1-based residue ranges, as in the adk literature): diagnostics only.
ADK_DOMAINS = {"CORE": ((1, 29), (60, 121), (160, 214)), "NMP": ((30, 59),), "LID": ((122, 159),)}


def superposed(mobile: np.ndarray, target: np.ndarray) -> np.ndarray:
    """mobile (R, 3) superposed onto target (R, 3)."""
    a, b = torch.as_tensor(mobile).double(), torch.as_tensor(target).double()
    rot, trans = kabsch(a, b)
    return (a @ rot.T + trans).numpy()


def rmsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((superposed(a, b) - b) ** 2).sum(-1).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the adk.py --out folder (sim/, base_open_docked.pdb)")
    parser.add_argument("what", choices=("resolution", "rank", "anm", "domains", "extrapolate"))
    parser.add_argument("--particles", type=int, default=400)
    parser.add_argument("--resolutions", default="8,12,16,24")
    parser.add_argument("--run", type=Path, help="extrapolate: the learning run (default round 1's)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # MDAnalysis chatter

    sim = args.out / "sim"
    truth = dict(np.load(sim / "truth.npz"))
    metadata = read_particles(sim / "particles.star")
    dataset = ParticleDataset(metadata, downsample_to=64)
    base = read_structure(args.out / "base_open_docked.pdb")
    centred = base.coords - base.coords.mean(axis=0)
    reference, masses = render_atoms_of_base(centred, base.topology)
    inputs = adk_inputs()
    topology, frames = read_ensemble(inputs.trajectory, inputs.topology)
    ca_traj = topology.select("CA")
    ca_base = centred[base.topology.select("CA")]
    closed = np.where(truth["frame"] < 30)[0][:200]

    if args.what == "resolution":
        rows = np.linspace(0, len(dataset) - 1, args.particles).round().astype(np.int64)
        frame = truth["frame"][rows]
        for resolution in (float(r) for r in args.resolutions.split(",")):
            config = PoseSearchConfig(resolution=resolution, sigma=1.5)
            result = search_poses(dataset, reference, config, progress=False, masses=masses, indices=rows)
            errors = pose_errors_deg(result.rotation, torch.as_tensor(truth["rotation"][rows]))
            cells = []
            for name, (lo, hi) in GROUPS.items():
                e = errors[(frame >= lo) & (frame < hi)]
                cells.append(
                    f"{name} <10 {np.mean(e < 10):.2f} <20 {np.mean(e < 20):.2f} med {np.median(e):.0f}"
                )
            print(f"resolution {resolution} A: " + " | ".join(cells), flush=True)
    elif args.what == "rank":
        grid = super_fibonacci_rotations(5000, torch.float32)
        coarse = _Scorer(24, 1.5 * 64 / 24, 8.0)
        templates = torch.cat(
            [
                fourier_crop(
                    render_projections(reference, grid[i : i + 1024], torch.zeros(2), 64, 1.5, 1.5, masses),
                    24,
                )
                for i in range(0, len(grid), 1024)
            ]
        )
        power = torch.fft.rfft2(templates).abs().square().flatten(1)
        batch = dataset.__getitems__(closed.tolist())
        filtered, ctf_power = coarse.filtered_images(fourier_crop(batch["image"].float(), 24), batch["ctf"])
        scores = coarse.global_scores(filtered, ctf_power, templates.flatten(1), power)
        true_rotation = torch.as_tensor(truth["rotation"][closed]).double()
        near = rotation_angle_deg(grid[None].double(), true_rotation[:, None]) < 12.0  # (B, G)
        order = scores.argsort(dim=1, descending=True)
        ranks = np.array([int(near[i][order[i]].nonzero()[0]) for i in range(len(closed))])
        for k in (1, 8, 32, 100, 300):
            print(
                f"closed: a grid view within 12 deg of the truth among the top {k}: {np.mean(ranks < k):.2f}"
            )
    elif args.what == "anm":
        target = superposed(frames[8][ca_traj], ca_base)
        modes = anm_modes(ca_base, 10)
        for k in (1, 3, 5, 10):
            flat = modes[:k].reshape(k, -1)
            displacement = ((flat @ (target - ca_base).ravel()) @ flat).reshape(-1, 3)
            coords = centred + displacement[base.topology.residue_index]
            ref, ref_masses = render_atoms_of_base(coords, base.topology)
            config = PoseSearchConfig(resolution=8.0, sigma=1.5)
            result = search_poses(dataset, ref, config, progress=False, masses=ref_masses, indices=closed)
            errors = pose_errors_deg(result.rotation, torch.as_tensor(truth["rotation"][closed]))
            distance = rmsd(ca_base + displacement, frames[8][ca_traj])
            print(
                f"{k} modes: reference {distance:.2f} A from frame 8; closed within 10 deg "
                f"{np.mean(errors < 10):.2f}, within 20 deg {np.mean(errors < 20):.2f}",
                flush=True,
            )
    elif args.what == "domains":
        # The base's three domains (CORE, NMP, LID; residue ranges of the adk literature) each superposed
        # rigidly onto frame 8: how close a reference made of rigidly moved domains can come to the closed
        # state, and how well it poses the closed particles.
        residue_of_ca = base.topology.residue_index[base.topology.select("CA")]
        frame8 = superposed(frames[8][ca_traj], ca_base)
        moved = centred.copy()
        assembled = ca_base.copy()
        for name, ranges in ADK_DOMAINS.items():
            in_domain = np.zeros(len(ca_base), dtype=bool)
            for lo, hi in ranges:
                in_domain |= (residue_of_ca >= lo - 1) & (residue_of_ca <= hi - 1)
            rotation, shift = (
                t.numpy()
                for t in kabsch(torch.as_tensor(ca_base[in_domain]), torch.as_tensor(frame8[in_domain]))
            )
            assembled[in_domain] = ca_base[in_domain] @ rotation.T + shift
            atoms = np.isin(base.topology.residue_index, residue_of_ca[in_domain])
            moved[atoms] = centred[atoms] @ rotation.T + shift
            print(f"{name}: base {rmsd(ca_base[in_domain], frame8[in_domain]):.2f} A from frame 8 in place")
        print(
            f"base {rmsd(ca_base, frame8):.2f} A from frame 8; rigidly moved domains "
            f"{rmsd(assembled, frame8):.2f} A",
            flush=True,
        )
        ref, ref_masses = render_atoms_of_base(moved, base.topology)
        config = PoseSearchConfig(resolution=8.0, sigma=1.5)
        result = search_poses(dataset, ref, config, progress=False, masses=ref_masses, indices=closed)
        errors = pose_errors_deg(result.rotation, torch.as_tensor(truth["rotation"][closed]))
        print(f"closed within 10 deg {np.mean(errors < 10):.2f}, within 20 deg {np.mean(errors < 20):.2f}")
    else:
        from atomvae.train.inference import encode_particles
        from atomvae.train.run import load_run

        run_dir = args.run or args.out / "poses_searched_seed0" / "run_round1"
        run = load_run(run_dir)
        mu = torch.as_tensor(encode_particles(run, sim / "particles.star")["mu"])
        mean = mu.mean(0)
        _u, _s, v = torch.pca_lowrank(mu - mean, q=3)
        axis = v[:, 0]
        spread = float(((mu - mean) @ axis).std())
        ca = run.topology.select("CA")
        with torch.no_grad():
            for t in (-12, -4, -1, 0, 1, 4, 12):
                x = run.model.decode((mean + t * spread * axis)[None], "all")[0][ca].double().numpy()
                gap = np.linalg.norm(x[54] - x[168])  # A:55:CA-A:169:CA
                print(
                    f"t {t:+d} std: NMP-LID gap {gap:.1f} A, {rmsd(x, frames[8][ca_traj]):.2f} A from "
                    f"frame 8, {rmsd(x, frames[97][ca_traj]):.2f} A from frame 97"
                )


if __name__ == "__main__":
    main()
