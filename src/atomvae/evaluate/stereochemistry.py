"""Physical plausibility of sampled structures: peptide bonds and steric clashes.

The end-to-end targets ask that sampled structures keep every C(i)-N(i+1) peptide bond near 1.33 A and
have no heavy-atom pair closer than 2.0 A between residues that are not sequence neighbours. Both checks
work on any ensemble (model samples or ground truth) with its Topology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from atomvae.structure.topology import Topology

PEPTIDE_BOND_LENGTH = 1.33  # A, ideal C(i)-N(i+1)


def peptide_bond_lengths(coords: np.ndarray, topology: Topology) -> np.ndarray:
    """C(i)-N(i+1) distances in A for every residue pair bonded in the topology.

    coords: (M, A, 3) in A. Returns (M, P) with P = number of True entries of ``topology.bonded_to_next``
    (chain ends, breaks and sequence gaps are never counted as bonds).
    """
    coords = np.asarray(coords, dtype=np.float64)
    c_index = topology.atom_index("C")
    n_index = topology.atom_index("N")
    bonded = np.nonzero(topology.bonded_to_next)[0]
    return np.linalg.norm(coords[:, c_index[bonded]] - coords[:, n_index[bonded + 1]], axis=-1)


def clash_counts(coords: np.ndarray, topology: Topology, min_distance: float = 2.0) -> np.ndarray:
    """Number of atom pairs closer than ``min_distance`` A between residues that are not sequence neighbours.

    Sequence neighbours are the same residue or residues i, i+1 joined by a peptide bond; atoms of
    different chains, or across a gap, always count. coords: (M, A, 3) in A. Returns (M,) int.
    """
    coords = np.asarray(coords, dtype=np.float64)
    residue = topology.residue_index
    bonded = topology.bonded_to_next
    counts = np.zeros(len(coords), dtype=np.int64)
    for m, xyz in enumerate(coords):
        pairs = cKDTree(xyz).query_pairs(min_distance, output_type="ndarray")
        if len(pairs) == 0:
            continue
        ri, rj = residue[pairs[:, 0]], residue[pairs[:, 1]]
        lo, hi = np.minimum(ri, rj), np.maximum(ri, rj)
        neighbours = (lo == hi) | ((hi - lo == 1) & bonded[lo])
        counts[m] = int(np.count_nonzero(~neighbours))
    return counts


@dataclass(frozen=True)
class StereochemistrySummary:
    n_structures: int
    fraction_bonds_ok: float  # every peptide bond within tolerance
    fraction_no_clash: float
    fraction_ok: float  # both
    bond_length_mean: float
    bond_length_rms_deviation: float  # A, from the ideal 1.33
    worst_bond_deviation: float
    bond_tolerance: float
    clash_distance: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def stereochemistry_summary(
    coords: np.ndarray, topology: Topology, bond_tolerance: float = 0.2, clash_distance: float = 2.0
) -> StereochemistrySummary:
    """Fractions of structures (coords: (M, A, 3) in A, all-atom) passing the bond and clash checks."""
    lengths = peptide_bond_lengths(coords, topology)
    deviation = np.abs(lengths - PEPTIDE_BOND_LENGTH)
    bonds_ok = (deviation <= bond_tolerance).all(axis=1) if lengths.shape[1] else np.ones(len(coords), bool)
    no_clash = clash_counts(coords, topology, clash_distance) == 0
    return StereochemistrySummary(
        n_structures=len(coords),
        fraction_bonds_ok=float(bonds_ok.mean()),
        fraction_no_clash=float(no_clash.mean()),
        fraction_ok=float((bonds_ok & no_clash).mean()),
        bond_length_mean=float(lengths.mean()) if lengths.size else float("nan"),
        bond_length_rms_deviation=float(np.sqrt(np.mean(deviation**2))) if lengths.size else float("nan"),
        worst_bond_deviation=float(deviation.max()) if lengths.size else float("nan"),
        bond_tolerance=bond_tolerance,
        clash_distance=clash_distance,
    )
