"""Physical plausibility of sampled structures: peptide bonds, steric clashes, backbone angles, Ramachandran.

The end-to-end targets ask that sampled structures keep every C(i)-N(i+1) peptide bond near 1.33 A and
have no heavy-atom pair closer than 2.0 A between residues that are not sequence neighbours (together:
``fraction_ok``). Reported beside them: the backbone bond angles N-CA-C, CA-C-N(+1) and C-N(+1)-CA(+1)
against Engh & Huber (1991) (outliers beyond 4 standard deviations, MolProbity's cut), and Ramachandran
outliers: non-glycine residues whose (phi, psi) fall outside the "allowed" region holding 99.8% of the
Top500 reference set (Lovell et al. 2003, MolProbity's allowed contour), taken from MDAnalysis's
``Rama_ref`` histogram (4 degree bins of all residues of the set) smoothed by a Gaussian of 1.5 bins
(500 structures leave single empty bins inside populated regions); the region is the densest bins that
hold 99.8% of the smoothed mass. Its glycines make it lenient in glycine-only regions (phi > 0): it
catches backbones no residue adopts (uniformly random phi, psi: 39% outliers; an all-atom MD trajectory
of adenylate kinase: 1%). That reference comes with MDAnalysis (the ``md`` extra); without it the
Ramachandran fields are NaN.
All checks work on any ensemble (model samples or ground truth) with its Topology.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from atomvae.structure.topology import Topology

PEPTIDE_BOND_LENGTH = 1.33  # A, ideal C(i)-N(i+1)
# Backbone bond angles (degrees): mean and standard deviation, Engh & Huber (1991), non-Gly/Pro values.
BACKBONE_ANGLES = {"N-CA-C": (111.2, 2.8), "CA-C-N": (116.2, 2.0), "C-N-CA": (121.7, 1.8)}
ANGLE_OUTLIER_SIGMAS = 4.0
RAMACHANDRAN_ALLOWED_MASS = 0.998  # the allowed region holds this fraction of the reference
RAMACHANDRAN_SMOOTHING_BINS = 1.5  # Gaussian sigma (4 degree bins) applied to the reference histogram


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


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Angle a-b-c in degrees for points (..., 3)."""
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _dihedral(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """Dihedral p0-p1-p2-p3 in degrees (-180, 180], IUPAC sign, for points (..., 3)."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1).sum(-1, keepdims=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdims=True) * b1
    x = (v * w).sum(-1)
    y = (np.cross(b1, v) * w).sum(-1)
    return np.degrees(np.arctan2(y, x))


def backbone_angles(coords: np.ndarray, topology: Topology) -> dict[str, np.ndarray]:
    """Backbone bond angles in degrees: ``{"N-CA-C": (M, R), "CA-C-N": (M, P), "C-N-CA": (M, P)}`` with
    P the residue pairs bonded in the topology (the last two span the peptide bond i -> i+1)."""
    coords = np.asarray(coords, dtype=np.float64)
    n, ca, c = (topology.atom_index(name) for name in ("N", "CA", "C"))
    bonded = np.nonzero(topology.bonded_to_next)[0]
    return {
        "N-CA-C": _angle(coords[:, n], coords[:, ca], coords[:, c]),
        "CA-C-N": _angle(coords[:, ca[bonded]], coords[:, c[bonded]], coords[:, n[bonded + 1]]),
        "C-N-CA": _angle(coords[:, c[bonded]], coords[:, n[bonded + 1]], coords[:, ca[bonded + 1]]),
    }


def phi_psi(coords: np.ndarray, topology: Topology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phi (M, P), psi (M, P), residues (P,)) in degrees for the residues bonded to both neighbours."""
    coords = np.asarray(coords, dtype=np.float64)
    n, ca, c = (topology.atom_index(name) for name in ("N", "CA", "C"))
    bonded = np.asarray(topology.bonded_to_next, dtype=bool)
    inner = np.nonzero(np.r_[False, bonded[:-1]] & bonded)[0]  # residue i with i-1 -> i and i -> i+1
    phi = _dihedral(coords[:, c[inner - 1]], coords[:, n[inner]], coords[:, ca[inner]], coords[:, c[inner]])
    psi = _dihedral(coords[:, n[inner]], coords[:, ca[inner]], coords[:, c[inner]], coords[:, n[inner + 1]])
    return phi, psi, inner


@functools.cache
def _ramachandran_allowed() -> np.ndarray | None:
    """(90, 90) bool, rows psi and columns phi from -180 in 4 degree steps: the allowed region built from
    MDAnalysis's Rama_ref (see the module docstring); None without MDAnalysis."""
    try:
        from MDAnalysis.analysis.data.filenames import Rama_ref
    except ImportError:
        return None
    from scipy.ndimage import gaussian_filter

    density = gaussian_filter(np.load(Rama_ref).astype(np.float64), RAMACHANDRAN_SMOOTHING_BINS, mode="wrap")
    ordered = np.sort(density.ravel())[::-1]
    cumulative = np.cumsum(ordered) / ordered.sum()
    threshold = ordered[np.searchsorted(cumulative, RAMACHANDRAN_ALLOWED_MASS)]
    return density >= threshold


def ramachandran_outliers(phi: np.ndarray, psi: np.ndarray) -> np.ndarray | None:
    """Boolean array like ``phi``: True where (phi, psi) (degrees) lies outside the allowed region of the
    reference (module docstring); None when the reference (MDAnalysis) is not installed."""
    allowed = _ramachandran_allowed()
    if allowed is None:
        return None
    column = np.floor((np.asarray(phi) + 180.0) / 4.0).astype(np.int64) % 90
    row = np.floor((np.asarray(psi) + 180.0) / 4.0).astype(np.int64) % 90
    return ~allowed[row, column]


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
    # backbone angles (not part of fraction_ok): RMS deviation in degrees from Engh & Huber, the fraction
    # of angles beyond ANGLE_OUTLIER_SIGMAS, and of structures with no such angle
    angle_rms_deviation: float = float("nan")
    angle_outlier_fraction: float = float("nan")
    fraction_no_angle_outlier: float = float("nan")
    # Ramachandran (not part of fraction_ok): the fraction of checked (non-glycine, inner) residues that
    # are outliers, and of structures with none; NaN without MDAnalysis or without such residues
    ramachandran_outlier_fraction: float = float("nan")
    fraction_no_ramachandran_outlier: float = float("nan")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def stereochemistry_summary(
    coords: np.ndarray, topology: Topology, bond_tolerance: float = 0.2, clash_distance: float = 2.0
) -> StereochemistrySummary:
    """Fractions of structures (coords: (M, A, 3) in A, all-atom) passing the bond and clash checks
    (``fraction_ok``), with the backbone-angle and Ramachandran statistics beside them."""
    lengths = peptide_bond_lengths(coords, topology)
    deviation = np.abs(lengths - PEPTIDE_BOND_LENGTH)
    bonds_ok = (deviation <= bond_tolerance).all(axis=1) if lengths.shape[1] else np.ones(len(coords), bool)
    no_clash = clash_counts(coords, topology, clash_distance) == 0
    angles = backbone_angles(coords, topology)
    z_scores = np.concatenate(
        [(values - BACKBONE_ANGLES[name][0]) / BACKBONE_ANGLES[name][1] for name, values in angles.items()],
        axis=1,
    )
    deviations = np.concatenate(
        [values - BACKBONE_ANGLES[name][0] for name, values in angles.items()], axis=1
    )
    angle_outliers = np.abs(z_scores) > ANGLE_OUTLIER_SIGMAS
    phi, psi, residues = phi_psi(coords, topology)
    checked = np.asarray(topology.res_name)[residues] != "GLY"
    rama = ramachandran_outliers(phi[:, checked], psi[:, checked])
    rama_fraction = rama_clean = float("nan")
    if rama is not None and rama.shape[1]:
        rama_fraction, rama_clean = float(rama.mean()), float((~rama.any(axis=1)).mean())
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
        angle_rms_deviation=float(np.sqrt(np.mean(deviations**2))) if deviations.size else float("nan"),
        angle_outlier_fraction=float(angle_outliers.mean()) if angle_outliers.size else float("nan"),
        fraction_no_angle_outlier=float((~angle_outliers.any(axis=1)).mean()),
        ramachandran_outlier_fraction=rama_fraction,
        fraction_no_ramachandran_outlier=rama_clean,
    )
