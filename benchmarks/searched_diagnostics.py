"""Why the searched route cannot pose the closed particles of the adk benchmark: diagnostics that use the
simulation's truth (nothing of the route is tuned on them).

    resolution  search evenly spread particles against the open base (residue pseudo-atoms) at several
                low-pass limits: fraction within 10 / 20 deg per state
    rank        for closed particles (frames < 30), where the true view ranks in the global grid search
                against the base (is it among the top K candidates?)
    anm         frame 8 (closed) projected onto the k slowest elastic-network modes of the base: how far
                that reference is from the closed frame and how many closed particles it poses
    domains     the base's three domains each superposed rigidly onto frame 8: how far that reference is
                and how many closed particles it poses
    hinges      how few parameters of rigid domain motion reach frame 8: domains moved rigidly along the
                slowest modes, mobile domains turned about their hinges, domains found by k-means
    extrapolate decode a learning run's latent along its first principal axis, far beyond the data:
                how near the closed frame the decoder gets
    oracle      each particle searched against its own true frame (the search's ceiling at this SNR):
                fraction within 10 / 20 deg per state

Run from the repository root after `benchmarks/adk.py --out OUT --particles 4000 ... --modes searched`:

    .venv/bin/python benchmarks/searched_diagnostics.py OUT resolution --particles 400
    .venv/bin/python benchmarks/searched_diagnostics.py OUT rank
    .venv/bin/python benchmarks/searched_diagnostics.py OUT anm
    .venv/bin/python benchmarks/searched_diagnostics.py OUT domains
    .venv/bin/python benchmarks/searched_diagnostics.py OUT hinges
    .venv/bin/python benchmarks/searched_diagnostics.py OUT extrapolate
    .venv/bin/python benchmarks/searched_diagnostics.py OUT oracle --particles 600
"""

from __future__ import annotations

import argparse
import itertools
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
    return superposed_by(mobile, np.ones(len(mobile), dtype=bool), target)


def superposed_by(mobile: np.ndarray, subset: np.ndarray, target: np.ndarray) -> np.ndarray:
    """mobile (R, 3) moved by the rigid motion that superposes its subset rows onto target's."""
    rot, trans = kabsch(torch.as_tensor(mobile[subset]).double(), torch.as_tensor(target[subset]).double())
    return (torch.as_tensor(mobile).double() @ rot.T + trans).numpy()


def adk_domain_labels(n_residues: int) -> np.ndarray:
    """(R,) index of each residue's domain in ``ADK_DOMAINS`` (0 CORE, 1 NMP, 2 LID)."""
    labels = np.zeros(n_residues, dtype=np.int64)
    for k, ranges in enumerate(ADK_DOMAINS.values()):
        for lo, hi in ranges:
            labels[lo - 1 : hi] = k
    return labels


def rmsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((superposed(a, b) - b) ** 2).sum(-1).mean()))


def _rigid_motion_fit(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares small rigid motion (rotation vector w, translation v) of points x (N, 3) about their
    centroid that best gives displacements u (N, 3): u_i ~ w x (x_i - c) + v."""
    r = x - x.mean(axis=0)
    design = np.zeros((len(r), 3, 6))
    design[:, :, :3] = np.stack([np.cross(np.eye(3)[k], r) for k in range(3)], axis=-1)  # w x r, by w_k
    design[:, :, 3:] = np.eye(3)
    solution = np.linalg.lstsq(design.reshape(-1, 6), u.ravel(), rcond=None)[0]
    return solution[:3], solution[3:]


def hinge_diagnostics(ca: np.ndarray, closed: np.ndarray) -> None:
    """How few parameters of rigid domain motion reach the closed frame (C-alpha RMSDs, A)."""
    from scipy.cluster.vq import kmeans2
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    labels = adk_domain_labels(len(ca))
    modes = anm_modes(ca, 10) * np.sqrt(len(ca))  # a unit amplitude moves by 1 A RMSD

    def rigid_along_modes(amplitudes: np.ndarray) -> np.ndarray:
        out = ca.copy()
        for d in range(len(ADK_DOMAINS)):
            m = labels == d
            fits = [_rigid_motion_fit(ca[m], modes[j][m]) for j in range(len(amplitudes))]
            w = sum(a * f[0] for a, f in zip(amplitudes, fits, strict=True))
            v = sum(a * f[1] for a, f in zip(amplitudes, fits, strict=True))
            centre = ca[m].mean(axis=0)
            out[m] = (ca[m] - centre) @ Rotation.from_rotvec(w).as_matrix().T + centre + v
        return out

    def linear_along_modes(amplitudes: np.ndarray) -> np.ndarray:
        return ca + np.tensordot(amplitudes, modes[: len(amplitudes)], axes=1)

    for k in (1, 2, 3, 5):
        starts = [np.zeros(k)] + [np.random.default_rng(s).normal(0.0, 4.0, k) for s in range(6)]
        best = {
            name: min(
                minimize(lambda a, f=motion: rmsd(f(a), closed), x0, method="Nelder-Mead").fun
                for x0 in starts
            )
            for name, motion in (("rigid", rigid_along_modes), ("linear", linear_along_modes))
        }
        print(
            f"{k} slowest modes, best amplitudes: domains moved rigidly {best['rigid']:.2f} A, "
            f"linearly {best['linear']:.2f} A"
        )
    # each mobile domain turned about its hinge (the mean of its C-alphas bonded to another domain), in
    # the frame where the CORE domains superpose
    core = labels == 0
    on_core = superposed_by(closed, core, ca)
    turned = ca.copy()
    for d, name in ((1, "NMP"), (2, "LID")):
        m = labels == d
        ends = [i for i in np.flatnonzero(m) if not m[max(i - 1, 0)] or not m[min(i + 1, len(m) - 1)]]
        pivot = ca[ends].mean(axis=0)

        def error(rotvec: np.ndarray, m: np.ndarray = m, pivot: np.ndarray = pivot) -> float:
            moved = (ca[m] - pivot) @ Rotation.from_rotvec(rotvec).as_matrix().T + pivot
            return float(np.sqrt(((moved - on_core[m]) ** 2).sum(-1).mean()))

        free = min(
            (
                minimize(error, x0, method="Nelder-Mead")
                for x0 in np.random.default_rng(0).normal(0, 0.5, (6, 3))
            ),
            key=lambda r: r.fun,
        )
        turned[m] = (ca[m] - pivot) @ Rotation.from_rotvec(free.x).as_matrix().T + pivot
        w, _ = _rigid_motion_fit(ca[m], modes[0][m])
        w = w - _rigid_motion_fit(ca[core], modes[0][core])[0]
        axis = w / np.linalg.norm(w)
        along = min(
            (
                minimize(lambda a, axis=axis: error(a[0] * axis), [x0], method="Nelder-Mead")
                for x0 in (-1.0, -0.5, 0.5, 1.0)
            ),
            key=lambda r: r.fun,
        )
        tilt = np.degrees(np.arccos(abs(axis @ free.x) / np.linalg.norm(free.x)))
        print(
            f"{name}: turned {np.degrees(np.linalg.norm(free.x)):.0f} deg about its hinge -> "
            f"{free.fun:.2f} A "
            f"from the closed frame's; about mode 1's axis ({tilt:.0f} deg from that rotation's) -> "
            f"{along.fun:.2f} A"
        )
    print(
        f"whole: mobile domains turned about their hinges {rmsd(turned, closed):.2f} A from the closed frame"
    )
    for n_modes in (3, 10):
        features = modes[:n_modes].transpose(1, 0, 2).reshape(len(ca), -1)
        found = min(
            (kmeans2(features, 3, seed=s, minit="++") for s in range(10)),
            key=lambda cl: float(((features - cl[0][cl[1]]) ** 2).sum()),
        )[1]
        agreement = max(
            np.mean(np.asarray(order)[found] == labels) for order in itertools.permutations(range(3))
        )
        print(
            f"k-means (3) of the residues' motion in {n_modes} modes: {agreement:.2f} as the literature's "
            "domains"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the adk.py --out folder (sim/, base_open_docked.pdb)")
    parser.add_argument(
        "what", choices=("resolution", "rank", "anm", "domains", "hinges", "extrapolate", "oracle")
    )
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
        labels = adk_domain_labels(len(ca_base))
        frame8 = superposed(frames[8][ca_traj], ca_base)
        moved = centred.copy()
        assembled = ca_base.copy()
        for k, name in enumerate(ADK_DOMAINS):
            in_domain = labels == k
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
    elif args.what == "oracle":
        # every particle against its own frame only (references centred like the base: on its centre)
        rows = np.linspace(0, len(dataset) - 1, args.particles).round().astype(np.int64)
        frame = truth["frame"][rows]
        used = np.unique(frame)
        centre = base.coords.mean(axis=0)
        refs, ref_masses = zip(
            *(render_atoms_of_base(frames[f] - centre, topology) for f in used), strict=True
        )
        allowed = torch.as_tensor(frame[:, None] == used[None, :])
        for resolution in (float(r) for r in args.resolutions.split(",")):
            config = PoseSearchConfig(resolution=resolution, sigma=1.5)
            result = search_poses(
                dataset,
                torch.stack(refs),
                config,
                progress=False,
                masses=ref_masses[0],
                indices=rows,
                allowed=allowed,
            )
            errors = pose_errors_deg(result.rotation, torch.as_tensor(truth["rotation"][rows]))
            cells = []
            for name, (lo, hi) in GROUPS.items():
                e = errors[(frame >= lo) & (frame < hi)]
                cells.append(f"{name} <10 {np.mean(e < 10):.2f} <20 {np.mean(e < 20):.2f} ({len(e)})")
            print(f"own true frame, resolution {resolution} A: " + " | ".join(cells), flush=True)
    elif args.what == "hinges":
        hinge_diagnostics(ca_base, superposed(frames[8][ca_traj], ca_base))
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
