"""Per-residue rigid frames (AlphaFold convention) and atoms stored in their residue's frame.

Frame of residue r: origin at CA, x axis along CA->C, N in the xy-plane at +y, z = x cross y
(Gram-Schmidt on C-CA then N-CA). Coordinates are ``x = rot @ local + trans``.
Inputs may be torch tensors or numpy arrays; outputs are torch tensors (numpy input -> float64 CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from atomvae.geometry.rotations import gram_schmidt
from atomvae.structure.topology import Topology


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


def _backbone_indices(topology: Topology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = [topology.atom_index(name) for name in ("N", "CA", "C")]
    for name, i in zip(("N", "CA", "C"), idx, strict=True):
        if np.any(i < 0):
            r = int(np.nonzero(i < 0)[0][0])
            raise ValueError(f"residue {topology.residue_label(r)} has no {name} atom; cannot build a frame")
    return idx[0], idx[1], idx[2]


def backbone_frames(coords, topology: Topology) -> tuple[torch.Tensor, torch.Tensor]:
    """coords (..., A, 3) A -> per-residue frames: rot (..., R, 3, 3), trans (..., R, 3) = CA position.

    Differentiable in coords."""
    coords = _tensor(coords)
    n_idx, ca_idx, c_idx = (torch.as_tensor(i, device=coords.device) for i in _backbone_indices(topology))
    n = coords.index_select(-2, n_idx)
    ca = coords.index_select(-2, ca_idx)
    c = coords.index_select(-2, c_idx)
    return gram_schmidt(c - ca, n - ca), ca


def local_coordinates(coords, topology: Topology) -> torch.Tensor:
    """coords (..., A, 3) A -> each atom in its residue's frame (..., A, 3): local = rot^T (x - trans)."""
    coords = _tensor(coords)
    rot, trans = backbone_frames(coords, topology)
    res = torch.as_tensor(topology.residue_index, device=coords.device)
    rot_a = rot.index_select(-3, res)
    trans_a = trans.index_select(-2, res)
    return ((coords - trans_a).unsqueeze(-2) @ rot_a).squeeze(-2)


def residue_slots(residue_index: torch.Tensor, n_residues: int) -> tuple[torch.Tensor, int]:
    """The residue-padded atom layout: atom k (in input order) of residue r goes to slot r * K + k.

    residue_index: (A,) long, values in 0..n_residues-1, on any device. Returns ``slot`` (A,) long on that
    device and K, the largest residue's atom count (0 without atoms). The one definition of the layout,
    used to place atoms (:func:`frames_to_coordinates`) and by the heavy-atom clash penalty
    (:func:`residue_padded_layout`).
    """
    order = torch.argsort(residue_index, stable=True)
    sorted_res = residue_index[order]
    counts = torch.bincount(sorted_res, minlength=n_residues)
    width = int(counts.max()) if counts.numel() else 0
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(residue_index.shape[0], device=residue_index.device) - first[sorted_res]
    slot = torch.empty_like(residue_index)
    slot[order] = sorted_res * width + rank
    return slot, width


def residue_padded_layout(residue_index) -> tuple[np.ndarray, np.ndarray]:
    """:func:`residue_slots` as numpy, with the mask of filled slots.

    residue_index: (A,) ints in 0..R-1 (R = max + 1). Returns ``slot`` (A,) int64, the padded position
    of each atom, and ``atom_mask`` (R, K) bool, True where a slot holds an atom (K = the largest
    residue's atom count).
    """
    index = torch.as_tensor(np.asarray(residue_index, dtype=np.int64))
    n_residues = int(index.max()) + 1 if index.numel() else 0
    slot, width = residue_slots(index, n_residues)
    atom_mask = np.zeros(n_residues * width, dtype=bool)
    atom_mask[slot.numpy()] = True
    return slot.numpy(), atom_mask.reshape(n_residues, width)


def frames_to_coordinates(rot, trans, local, residue_index) -> torch.Tensor:
    """Place atoms from their residue frames.

    rot (..., R, 3, 3), trans (..., R, 3), local (A, 3) atom positions in their residue's frame (or
    (..., A, 3), one set per structure: side chains turned by their torsions), residue_index (A,) -> coords
    (..., A, 3) with coords[..., a] = rot[..., r] @ local[..., a] + trans[..., r].

    This is in the training hot path ((B*K, R, 3, 3) frames, A up to a few thousand atoms), so no loop
    over residues: local coordinates are laid out in a zero-padded (R, P, 3) block (P = most atoms in a
    residue, 14), transformed by one batched product per residue and gathered back: faster, forward and
    backward, than a per-atom gather of the 3x4 affine or a gather followed by elementwise products (where
    a training step's time goes: BENCHMARKS.md, section "Training step against the renderer").
    Differentiable in rot, trans and local.
    """
    rot, trans = _tensor(rot), _tensor(trans)
    local = _tensor(local).to(device=rot.device, dtype=rot.dtype)
    if not isinstance(residue_index, torch.Tensor):
        residue_index = torch.as_tensor(np.asarray(residue_index, dtype=np.int64))
    res = residue_index.to(device=rot.device, dtype=torch.long)
    n_res, n_atoms = rot.shape[-3], res.shape[0]
    if n_atoms == 0:
        return rot.new_zeros(*torch.broadcast_shapes(rot.shape[:-3], trans.shape[:-2]), 0, 3)
    slot, width = residue_slots(res, n_res)
    lead = local.shape[:-2]
    padded = local.new_zeros(*lead, n_res * width, 3).index_copy(-2, slot, local).view(*lead, n_res, width, 3)
    placed = torch.einsum("...rij,...rpj->...rpi", rot, padded) + trans.unsqueeze(-2)
    return placed.flatten(-3, -2).index_select(-2, slot)
