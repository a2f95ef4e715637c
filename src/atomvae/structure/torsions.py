"""Side-chain torsions: turning each residue's side chain about its chi bonds, in the residue frame.

The paper's decoder moves every residue as one rigid body, so every decoded structure carries the base's
side-chain rotamers. Particles in another state have other rotamers (adenylate kinase: 27% of side-chain
atoms lie > 2 A from the crystal structure's in the DIMS frames, backbone superposed), and the image
model then pulls the backbone to put density where the side chains really are (BENCHMARKS.md, "Side-chain
torsions"). Rotating about the chi bonds keeps every bond length and angle of the base exact.

Chi k turns the atoms beyond its axis bond (a2 -> a3) about that bond. Which atoms those are follows from
the IUPAC remoteness letters of their names (B, G, D, E, Z, H): the atoms of the side chain more remote
than a3. The axes come from the 1970 IUPAC-IUB definitions of chi1..chi4 (the table below; proline's ring
cannot turn and has none; alanine and glycine have no chi).
"""

from __future__ import annotations

import numpy as np
import torch

from atomvae.structure.topology import Topology

MAX_CHI = 4
REMOTENESS = "ABGDEZH"  # IUPAC remoteness letters, in order from the C-alpha
BACKBONE_NAMES = ("N", "CA", "C", "O", "OXT", "OT1", "OT2")  # OT1/OT2: CHARMM's terminal oxygens

# Axis bond (a2, a3) of chi1, chi2, ... per residue: chi_k is the dihedral (a1, a2, a3, a4).
CHI_AXES: dict[str, tuple[tuple[str, str], ...]] = {
    "ARG": (("CA", "CB"), ("CB", "CG"), ("CG", "CD"), ("CD", "NE")),
    "ASN": (("CA", "CB"), ("CB", "CG")),
    "ASP": (("CA", "CB"), ("CB", "CG")),
    "CYS": (("CA", "CB"),),
    "GLN": (("CA", "CB"), ("CB", "CG"), ("CG", "CD")),
    "GLU": (("CA", "CB"), ("CB", "CG"), ("CG", "CD")),
    "HIS": (("CA", "CB"), ("CB", "CG")),
    "ILE": (("CA", "CB"), ("CB", "CG1")),
    "LEU": (("CA", "CB"), ("CB", "CG")),
    "LYS": (("CA", "CB"), ("CB", "CG"), ("CG", "CD"), ("CD", "CE")),
    "MET": (("CA", "CB"), ("CB", "CG"), ("CG", "SD")),
    "MSE": (("CA", "CB"), ("CB", "CG"), ("CG", "SE")),
    "PHE": (("CA", "CB"), ("CB", "CG")),
    "SER": (("CA", "CB"),),
    "THR": (("CA", "CB"),),
    "TRP": (("CA", "CB"), ("CB", "CG")),
    "TYR": (("CA", "CB"), ("CB", "CG")),
    "VAL": (("CA", "CB"),),
}


def remoteness(atom_name: str, element: str) -> int:
    """Rank of an atom along its side chain, the index of its remoteness letter in REMOTENESS: CA 0, CB 1,
    CG* 2, ... The letter follows the element symbol (CB, OG1, SD, NE2, CH2); a name without one (SE of
    selenomethionine) sits at the delta position."""
    has_symbol = atom_name.upper().startswith(element.upper())
    letter = atom_name[len(element) : len(element) + 1].upper() if has_symbol else ""
    return REMOTENESS.index(letter) if letter and letter in REMOTENESS else REMOTENESS.index("D")


class SideChainTorsions(torch.nn.Module):
    """Turns the base's side chains by per-residue chi offsets, in residue-local coordinates.

    Built from the base topology and its atoms' residue-local coordinates ``local`` (A, 3) A. For each chi
    level k (0..3) it keeps the atoms that chi k moves, their residue, and the axis (a point and a unit
    direction, residue frame) of the bond they turn about. ``chi_mask`` (R, 4) says which chis exist.
    """

    chi_mask: torch.Tensor  # buffers, declared for the type checker

    def __init__(self, topology: Topology, local: torch.Tensor):
        super().__init__()
        local64 = torch.as_tensor(local, dtype=torch.float64)
        mask = np.zeros((topology.n_residues, MAX_CHI), dtype=bool)
        moving: list[list[int]] = [[] for _ in range(MAX_CHI)]
        points: list[list[np.ndarray]] = [[] for _ in range(MAX_CHI)]
        directions: list[list[np.ndarray]] = [[] for _ in range(MAX_CHI)]
        for r in range(topology.n_residues):
            start, stop = topology.residue_start[r], topology.residue_start[r + 1]
            names = [str(n) for n in topology.atom_name[start:stop]]
            index = {name: start + i for i, name in enumerate(names)}
            for k, (a2, a3) in enumerate(CHI_AXES.get(str(topology.res_name[r]), ())):
                if a2 not in index or a3 not in index:  # incomplete side chain: this chi cannot turn
                    continue
                beyond = remoteness(a3, str(topology.element[index[a3]]))
                atoms = [
                    start + i
                    for i, name in enumerate(names)
                    if name not in BACKBONE_NAMES
                    and remoteness(name, str(topology.element[start + i])) > beyond
                ]
                if not atoms:
                    continue
                p, q = local64[index[a2]].numpy(), local64[index[a3]].numpy()
                mask[r, k] = True
                moving[k] += atoms
                points[k] += [p] * len(atoms)
                directions[k] += [(q - p) / np.linalg.norm(q - p)] * len(atoms)
        self.register_buffer("chi_mask", torch.as_tensor(mask), persistent=False)
        self.n_residues = topology.n_residues
        self.levels = [k for k in range(MAX_CHI) if moving[k]]
        residue = np.asarray(topology.residue_index)
        for k in self.levels:
            atoms_k = np.asarray(moving[k], dtype=np.int64)
            self.register_buffer(f"atoms_{k}", torch.as_tensor(atoms_k), persistent=False)
            # Index of each moving atom's chi in the flattened (R * 4) chi vector.
            chi_index = torch.as_tensor(residue[atoms_k] * MAX_CHI + k)
            self.register_buffer(f"chi_{k}", chi_index, persistent=False)
            self.register_buffer(f"point_{k}", torch.as_tensor(np.stack(points[k])).float(), persistent=False)
            self.register_buffer(
                f"direction_{k}", torch.as_tensor(np.stack(directions[k])).float(), persistent=False
            )

    def forward(self, local: torch.Tensor, chi: torch.Tensor) -> torch.Tensor:
        """local (A, 3) A, chi (..., R, 4) radians (offsets from the base) -> turned local (..., A, 3) A.

        Chi 4 is applied first, then chi 3, 2, 1: each axis bond is moved only by the chis below it, so
        every rotation uses its axis as it lies in the base (Rodrigues' formula, right-handed about
        a2 -> a3, which is the sign of the IUPAC dihedral). Differentiable in chi.
        """
        batch = chi.shape[:-2]
        x = local.to(chi.dtype).expand(*batch, *local.shape)
        flat_chi = chi.flatten(-2)
        for k in reversed(self.levels):
            atoms = getattr(self, f"atoms_{k}")
            point = getattr(self, f"point_{k}").to(chi.dtype)
            axis = getattr(self, f"direction_{k}").to(chi.dtype)
            theta = flat_chi.index_select(-1, getattr(self, f"chi_{k}")).unsqueeze(-1)  # (..., M, 1)
            v = x.index_select(-2, atoms) - point
            cos, sin = torch.cos(theta), torch.sin(theta)
            turned = (
                point
                + v * cos
                + torch.linalg.cross(axis.expand_as(v), v, dim=-1) * sin
                + axis * (v * axis).sum(-1, keepdim=True) * (1 - cos)
            )
            x = x.index_copy(-2, atoms, turned)
        return x


def dihedral(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Dihedral angle (...,) radians in (-pi, pi] of four points (..., 3), IUPAC sign."""
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1).sum(-1, keepdim=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdim=True) * b1
    x = (v * w).sum(-1)
    y = (torch.linalg.cross(b1, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)
