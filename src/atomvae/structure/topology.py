"""Protein topology: which atoms exist, in which residues and chains (numpy arrays, no coordinates).

Atoms are stored residue by residue (the atoms of residue r are ``residue_start[r]:residue_start[r+1]``),
so per-residue work is a gather, never a Python loop over residues.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BACKBONE_ATOMS = ("N", "CA", "C", "O")

# Residue names that are protein amino acids besides those gemmi tabulates: force-field variants of
# protonation states (CHARMM, AMBER, GROMACS) that MD topologies and the PDBs written from them use.
MD_AMINO_ACID_NAMES = frozenset(
    {
        "HSD",
        "HSE",
        "HSP",
        "HID",
        "HIE",
        "HIP",
        "HISA",
        "HISB",
        "HISD",
        "HISE",
        "HISH",
        "HISP",
        "HIS1",
        "HIS2",
        "CYX",
        "CYM",
        "CYS1",
        "CYS2",
        "CYSH",
        "ASH",
        "ASPH",
        "GLH",
        "GLUH",
        "LYN",
        "LSN",
        "LYSH",
        "LYSN",
        "ARN",
        "ARGN",
        "TYM",
    }
)


@dataclass(frozen=True, eq=False)
class Topology:
    """Atoms and residues of a protein, all as numpy arrays.

    Per atom (A,): ``atom_name`` (str), ``element`` (str, e.g. "C", "Se"), ``residue_index`` (int, 0..R-1,
    non-decreasing). Per residue (R,): ``res_name``, ``res_seq`` (int), ``ins_code`` (str, "" if none),
    ``chain_id`` (str), ``bonded_to_next`` (bool: residue r is peptide-bonded to r+1; False at chain
    ends, sequence gaps and chain breaks, so the backbone loss only uses True pairs).
    ``residue_start`` (R+1,) is derived: atoms of residue r are ``residue_start[r]:residue_start[r+1]``.
    """

    atom_name: np.ndarray
    element: np.ndarray
    residue_index: np.ndarray
    res_name: np.ndarray
    res_seq: np.ndarray
    ins_code: np.ndarray
    chain_id: np.ndarray
    bonded_to_next: np.ndarray
    residue_start: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        arrays = {
            "atom_name": np.asarray(self.atom_name, dtype=str),
            "element": np.asarray(self.element, dtype=str),
            "residue_index": np.asarray(self.residue_index, dtype=np.int64),
            "res_name": np.asarray(self.res_name, dtype=str),
            "res_seq": np.asarray(self.res_seq, dtype=np.int64),
            "ins_code": np.asarray(self.ins_code, dtype=str),
            "chain_id": np.asarray(self.chain_id, dtype=str),
            "bonded_to_next": np.asarray(self.bonded_to_next, dtype=bool),
        }
        # Arrays stay writable (torch.as_tensor warns on read-only numpy arrays); treat them as read-only.
        for name, value in arrays.items():
            object.__setattr__(self, name, value)
        n_atoms, n_res = len(self.atom_name), len(self.res_name)
        for name in ("element", "residue_index"):
            if len(arrays[name]) != n_atoms:
                raise ValueError(f"Topology.{name} has {len(arrays[name])} entries, expected {n_atoms} atoms")
        for name in ("res_seq", "ins_code", "chain_id", "bonded_to_next"):
            if len(arrays[name]) != n_res:
                raise ValueError(f"Topology.{name} has {len(arrays[name])} entries, expected {n_res}")
        ri = self.residue_index
        if n_atoms and (np.any(np.diff(ri) < 0) or ri[0] < 0 or ri[-1] >= n_res):
            raise ValueError("Topology.residue_index must be non-decreasing in 0..R-1 (grouped by residue)")
        counts = np.bincount(ri, minlength=n_res)
        if n_res and np.any(counts == 0):
            raise ValueError(f"Topology residue {int(np.argmin(counts))} has no atoms")
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        object.__setattr__(self, "residue_start", start)

    @property
    def n_atoms(self) -> int:
        return len(self.atom_name)

    @property
    def n_residues(self) -> int:
        return len(self.res_name)

    def residue_label(self, r: int) -> str:
        """Human-readable name of residue r, e.g. ``A:GLY:52B``."""
        return f"{self.chain_id[r]}:{self.res_name[r]}:{self.res_seq[r]}{self.ins_code[r]}"

    def atom_index(self, name: str) -> np.ndarray:
        """Per residue (R,) the index of the atom called ``name`` (e.g. "N", "CA", "C"); -1 where absent."""
        hit = np.nonzero(self.atom_name == name)[0]
        out = np.full(self.n_residues, -1, dtype=np.int64)
        # If a residue has the name twice (should not happen), the first one wins.
        out[self.residue_index[hit[::-1]]] = hit[::-1]
        return out

    def select(self, kind: str) -> np.ndarray:
        """Atom indices (sorted) for ``"CA"``, ``"backbone"`` (N, CA, C, O) or ``"heavy"`` (all stored atoms,
        which are the heavy atoms: hydrogens are never stored)."""
        if kind == "CA":
            mask = self.atom_name == "CA"
        elif kind == "backbone":
            mask = np.isin(self.atom_name, BACKBONE_ATOMS)
        elif kind == "heavy":
            mask = np.ones(self.n_atoms, dtype=bool)
        else:
            raise ValueError(f"unknown atom selection kind {kind!r}; use 'CA', 'backbone' or 'heavy'")
        return np.nonzero(mask)[0]

    def subset(self, atom_indices: np.ndarray) -> Topology:
        """Sub-topology of the given atoms (kept in their original order).

        Residues without a selected atom are dropped (and residues are renumbered 0..R'-1); for the
        ``"CA"``/``"backbone"`` selections every residue is kept, so per-residue frames computed on the
        full structure still apply to the subset (train on CA atoms, write all atoms).
        ``bonded_to_next`` is kept where both neighbours survive and were bonded.
        """
        idx = np.unique(np.asarray(atom_indices, dtype=np.int64))
        if len(idx) and (idx[0] < 0 or idx[-1] >= self.n_atoms):
            raise ValueError(f"atom indices out of range 0..{self.n_atoms - 1}")
        old_res = self.residue_index[idx]
        kept_res, new_res_index = np.unique(old_res, return_inverse=True)
        bonded = self.bonded_to_next[kept_res].copy()
        # A pair stays bonded only if the residues were adjacent before and bonded.
        if len(kept_res) > 1:
            bonded[:-1] &= np.diff(kept_res) == 1
        if len(kept_res):
            bonded[-1] = False  # the last kept residue has no successor in the subset
        return Topology(
            atom_name=self.atom_name[idx],
            element=self.element[idx],
            residue_index=new_res_index,
            res_name=self.res_name[kept_res],
            res_seq=self.res_seq[kept_res],
            ins_code=self.ins_code[kept_res],
            chain_id=self.chain_id[kept_res],
            bonded_to_next=bonded,
        )

    def same_atoms(self, other: Topology) -> bool:
        """True when both describe the same atoms in the same order (names, elements, residues, chains)."""
        return (
            self.n_atoms == other.n_atoms
            and self.n_residues == other.n_residues
            and all(
                np.array_equal(getattr(self, f), getattr(other, f))
                for f in (
                    "atom_name",
                    "element",
                    "residue_index",
                    "res_name",
                    "res_seq",
                    "ins_code",
                    "chain_id",
                )
            )
        )


@dataclass(frozen=True, eq=False)
class Structure:
    """One protein model: ``topology`` and ``coords`` (A, 3) float64 in A, atoms in topology order."""

    topology: Topology
    coords: np.ndarray

    def __post_init__(self):
        coords = np.asarray(self.coords, dtype=np.float64)
        if coords.shape != (self.topology.n_atoms, 3):
            raise ValueError(
                f"Structure coords have shape {coords.shape}, expected ({self.topology.n_atoms}, 3)"
            )
        object.__setattr__(self, "coords", coords)


def residues_consecutive(chain_id: np.ndarray, res_seq: np.ndarray, ins_code: np.ndarray) -> np.ndarray:
    """(R-1,) bool: residue r+1 follows residue r in the same chain without a numbering gap.

    Insertion codes count as consecutive (52 -> 52A -> 53)."""
    chain_id, res_seq, ins_code = (np.asarray(a) for a in (chain_id, res_seq, ins_code))
    same_chain = chain_id[1:] == chain_id[:-1]
    step = res_seq[1:] - res_seq[:-1]
    next_number = step == 1
    inserted = (step == 0) & (ins_code[1:] != ins_code[:-1])
    return same_chain & (next_number | inserted)


def compute_bonded_to_next(
    chain_id: np.ndarray,
    res_seq: np.ndarray,
    ins_code: np.ndarray,
    c_coords: np.ndarray,
    n_coords: np.ndarray,
    max_peptide_bond: float = 2.0,
) -> np.ndarray:
    """(R,) bool: residue r is peptide-bonded to r+1.

    False at chain ends, at numbering gaps (see :func:`residues_consecutive`) and at breaks, where the
    distance C(r)-N(r+1) in the given coordinates (``c_coords``, ``n_coords``: (R, 3) A) exceeds
    ``max_peptide_bond`` A (a peptide bond is 1.33 A).
    """
    n_res = len(res_seq)
    bonded = np.zeros(n_res, dtype=bool)
    if n_res > 1:
        dist = np.linalg.norm(np.asarray(n_coords)[1:] - np.asarray(c_coords)[:-1], axis=-1)
        bonded[:-1] = residues_consecutive(chain_id, res_seq, ins_code) & (dist <= max_peptide_bond)
    return bonded
