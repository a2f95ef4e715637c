"""Residue-level density for the model's image formation: a few weighted pseudo-atoms per residue.

At the resolution of typical particle images (2-4 A pixels, SNR << 1) a residue's density is a few
blobs: its backbone (N, CA, C, O) and one or two side-chain lobes. A C-alpha alone misplaces that
mass by 1-3 A towards the side chain, which biases every structure fitted to real images (BENCHMARKS.md,
image-model oracle); every heavy atom costs ~8x the renders. Pseudo-atoms sit at the scattering-weighted
centroid of their atoms, carry their summed forward scattering factor as mass, and move rigidly with
their residue's frame like every other atom of the model.

Groups, by IUPAC remoteness letter of the side-chain atom names (CB = beta, CG1 = gamma, ...):
backbone (N, CA, C, O, OXT); proximal side chain (beta, gamma, delta); distal side chain (epsilon,
zeta, eta). Glycine has one group, alanine two, lysine, arginine or the aromatics three.
"""

from __future__ import annotations

import numpy as np

from atomvae.physics.scattering import scattering_parameters
from atomvae.structure.topology import Topology
from atomvae.structure.torsions import REMOTENESS, remoteness

# Not structure.torsions.BACKBONE_NAMES: CHARMM's terminal OT1/OT2 stay a group of their own here, as they
# were when the checkpoints' render atoms were laid out (one pseudo-atom more for adenylate kinase).
BACKBONE_NAMES = ("N", "CA", "C", "O", "OXT")
_FIRST_DISTAL = REMOTENESS.index("E")  # epsilon, zeta and eta atoms form the distal group


def forward_scattering(elements) -> np.ndarray:
    """Electron forward scattering factor ``f(0) = sum_i a_i`` (Peng 1996) per atom: ``(A,)`` in A.

    The low-resolution mass of an atom in a cryo-EM image: C 2.51, N 2.21, O 1.98, S 5.16 A.
    """
    a, _b = scattering_parameters(elements)
    return a.sum(dim=-1).numpy()


def _group_keys(topology: Topology) -> np.ndarray:
    """residue * 3 + kind of every atom: ``(A,)`` int (kind 0 backbone, 1 proximal, 2 distal)."""
    kind = np.empty(topology.n_atoms, dtype=np.int64)
    for i, (name, element) in enumerate(zip(topology.atom_name, topology.element, strict=True)):
        if name in BACKBONE_NAMES:
            kind[i] = 0
            continue
        kind[i] = 2 if remoteness(name, element) >= _FIRST_DISTAL else 1
    return topology.residue_index * 3 + kind


def residue_groups(topology: Topology) -> np.ndarray:
    """Pseudo-atom index of every atom: ``(A,)`` int, groups numbered 0..G-1 residue by residue
    (backbone, then proximal, then distal side chain; empty groups are skipped)."""
    _unique, group = np.unique(_group_keys(topology), return_inverse=True)  # residue order, then kind
    return group.astype(np.int64)


def group_kinds(topology: Topology) -> np.ndarray:
    """Kind of every pseudo-atom, in ``residue_groups`` order: ``(G,)`` int, 0 backbone, 1 proximal and
    2 distal side chain."""
    return (np.unique(_group_keys(topology)) % 3).astype(np.int64)


def group_residues(topology: Topology) -> np.ndarray:
    """Residue of every pseudo-atom, in ``residue_groups`` order: ``(G,)`` int."""
    return (np.unique(_group_keys(topology)) // 3).astype(np.int64)


def coarse_grained_density(
    local: np.ndarray, topology: Topology
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-atoms of a structure whose atoms are given in their residue frames.

    local: (A, 3) A, each atom in its residue's frame (``structure.frames.local_coordinates``).
    Returns ``positions (G, 3)`` A (residue frame; scattering-weighted centroids), ``residue (G,)`` the
    residue of each, and ``mass (G,)`` A (summed forward scattering factors).
    """
    local = np.asarray(local, dtype=np.float64)
    group = residue_groups(topology)
    n_groups = int(group.max()) + 1 if group.size else 0
    atom_mass = forward_scattering(topology.element)
    mass = np.bincount(group, weights=atom_mass, minlength=n_groups)
    positions = (
        np.stack(
            [np.bincount(group, weights=atom_mass * local[:, k], minlength=n_groups) for k in range(3)],
            axis=-1,
        )
        / mass[:, None]
    )
    residue = np.zeros(n_groups, dtype=np.int64)
    residue[group] = topology.residue_index
    return positions, residue, mass
