"""Dynamic domains of a structure and their rigid-body motions, from the structure alone.

Why: the searched pose route needs a reference near each state of the particles, and a protein's large
conformational changes are mostly its domains moving as bodies (adenylate kinase: its NMP and LID domains
turn ~55-60 degrees about the CORE between the open and the closed state; the base's domains, each moved
rigidly onto the closed state, come 1.7 A from it: BENCHMARKS.md, "Searched poses"). So the references
are the base with its domains moved, and the motions are what is fitted to the particles
(``atomvae.train.domain_references``).

Domains: k-means of the residues' motion in the slowest elastic-network modes (the idea of DynDom and of
normal-mode domain partitioning: residues that move together in the soft modes belong together). On
adenylate kinase 10 modes and 3 domains agree with the literature's CORE / NMP / LID for 97% of residues.

Motions: each domain d turns by the rotation vector w_d (radians) about its centroid c_d (of the base's
C-alphas) and moves by v_d (A): x -> c_d + R(w_d) (x - c_d) + v_d. Zero parameters give the base; scaling
(w, v) by t in [0, 1] walks from the base to the moved structure along a path that keeps each domain rigid.
"""

from __future__ import annotations

import numpy as np
import roma
import torch
from scipy.cluster.vq import kmeans2

from atomvae.structure.normal_modes import anm_modes


def dynamic_domains(
    ca_coords: np.ndarray, n_domains: int = 3, n_modes: int = 10, cutoff: float = 15.0, restarts: int = 10
) -> np.ndarray:
    """(R,) int domain of each residue (0..n_domains-1, 0 the largest) from C-alphas ca_coords (R, 3) A:
    the best of ``restarts`` k-means++ clusterings (fixed seeds: deterministic) of each residue's
    displacement in the ``n_modes`` slowest ANM modes (each mode scaled to 1 A RMSD)."""
    ca = np.asarray(ca_coords, dtype=np.float64)
    if n_domains < 1 or n_domains > len(ca):
        raise ValueError(f"n_domains must be in 1..{len(ca)}, got {n_domains}")
    if n_domains == 1:
        return np.zeros(len(ca), dtype=np.int64)
    modes = anm_modes(ca, n_modes, cutoff) * np.sqrt(len(ca))
    features = modes.transpose(1, 0, 2).reshape(len(ca), -1)
    best_labels, best_inertia = None, np.inf
    for seed in range(restarts):
        centroids, labels = kmeans2(features, n_domains, seed=seed, minit="++")
        inertia = float(((features - centroids[labels]) ** 2).sum())
        if inertia < best_inertia and len(np.unique(labels)) == n_domains:
            best_labels, best_inertia = labels, inertia
    if best_labels is None:
        raise ValueError(f"k-means found fewer than {n_domains} domains in the slowest modes")
    # 0 = the largest domain (the one held fixed when motions are fitted), then by size
    order = np.argsort(-np.bincount(best_labels, minlength=n_domains), kind="stable")
    return np.argsort(order)[best_labels].astype(np.int64)


def rigid_mode_parts(
    ca_coords: np.ndarray, labels: np.ndarray, n_modes: int, cutoff: float = 15.0
) -> np.ndarray:
    """(n_modes, D, 6) each domain's least-squares rigid part (w (3,) rad, v (3,) A) of each of the
    ``n_modes`` slowest ANM modes at 1 A RMSD: the small rigid motion about the domain's centroid whose
    displacements w x (x - c) + v come closest to the mode's on the domain's C-alphas."""
    ca = np.asarray(ca_coords, dtype=np.float64)
    modes = anm_modes(ca, n_modes, cutoff) * np.sqrt(len(ca))
    n_domains = int(labels.max()) + 1
    parts = np.zeros((n_modes, n_domains, 6))
    for d in range(n_domains):
        x = ca[labels == d]
        r = x - x.mean(axis=0)
        design = np.zeros((len(r), 3, 6))
        design[:, :, :3] = np.stack([np.cross(np.eye(3)[k], r) for k in range(3)], axis=-1)  # w x r
        design[:, :, 3:] = np.eye(3)
        for j in range(n_modes):
            parts[j, d] = np.linalg.lstsq(design.reshape(-1, 6), modes[j][labels == d].ravel(), rcond=None)[0]
    return parts


def domain_centres(ca_coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(D, 3) A the centroid of each domain's C-alphas."""
    ca = np.asarray(ca_coords, dtype=np.float64)
    return np.stack([ca[labels == d].mean(axis=0) for d in range(int(labels.max()) + 1)])


def move_domains(
    coords: torch.Tensor, atom_domain: torch.Tensor, centres: torch.Tensor, motions: torch.Tensor
) -> torch.Tensor:
    """coords (..., A, 3) A with each atom's domain (atom_domain (A,) long) moved rigidly: motions
    (..., D, 6) = (w rad, v A) per domain about centres (D, 3) A. Differentiable in coords and motions."""
    rotation = roma.rotvec_to_rotmat(motions[..., :3])  # (..., D, 3, 3)
    per_atom_rotation = rotation[..., atom_domain, :, :]  # (..., A, 3, 3)
    centre = centres[atom_domain].to(coords.dtype)  # (A, 3)
    turned = (per_atom_rotation @ (coords - centre)[..., None])[..., 0]
    return turned + centre + motions[..., atom_domain, 3:]


def motion_between(
    base_ca: np.ndarray, moved_ca: np.ndarray, labels: np.ndarray, centres: np.ndarray
) -> np.ndarray:
    """(D, 6) the rigid motion of each domain (about ``centres``) that best superposes base_ca's domain
    onto moved_ca's (R, 3) A: the inverse of ``move_domains`` for structures made by it."""
    from atomvae.geometry.superpose import kabsch

    motions = np.zeros((len(centres), 6))
    for d in range(len(centres)):
        m = labels == d
        rotation, translation = kabsch(
            torch.as_tensor(base_ca[m]).double(), torch.as_tensor(moved_ca[m]).double()
        )
        motions[d, :3] = roma.rotmat_to_rotvec(rotation).numpy()
        # R (x - c) + c + v = R x + t  ->  v = t + R c - c
        motions[d, 3:] = translation.numpy() + rotation.numpy() @ centres[d] - centres[d]
    return motions
