"""The terms of paper eq. 4, as pure functions of tensors.

- ``gaussian_log_likelihood``: log N(y; render, sigma_noise) per image, with its normalising constant
  so that held-out log-likelihoods of different runs are comparable.
- ``iwae_log_mean_likelihood``: log of the mean over samples of the likelihoods (log-sum-exp, stable).
- ``kl_diagonal_normal``: closed-form KL of a diagonal Gaussian against N(0, I).
- ``backbone_continuity``: mean squared deviation of C(i)-N(i+1) from the peptide bond length, over
  bonded pairs only (never across chain breaks or gaps of the base structure).
- ``centering``: squared norm of the centre of mass (unit masses).
- ``neighbour_orientation``: an extension beyond the paper (weight 0 in the ``paper`` preset): squared
  Frobenius change of each bonded residue pair's relative orientation from the base structure's.
- ``clash_penalty``: an extension beyond the paper (its weight is 0 in the ``paper`` preset): squared
  overlap of C-alpha atoms of residues that are not sequence neighbours, closer than a minimum distance.
- ``heavy_atom_clash_penalty``: an extension beyond the paper (weight 0 in the ``paper`` preset): the same
  squared overlap over every heavy-atom pair of such residues, on a residue-padded atom layout
  (``residue_padded_layout``).
- ``local_contact_penalty``: an extension beyond the paper (weight 0 in the ``paper`` preset): squared
  overlap of the backbone and C-beta atoms of sequence neighbours, the hard-sphere contacts that shape the
  Ramachandran plot (``local_contact_pairs``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# The padded layout has one owner, structure.frames (which places atoms through it); imported from here too.
from atomvae.structure.frames import residue_padded_layout as residue_padded_layout

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_likelihood(
    images: torch.Tensor, predicted: torch.Tensor, noise_sigma: float | torch.Tensor
) -> torch.Tensor:
    """log N(images; predicted, noise_sigma^2 I) summed over pixels.

    images, predicted: (..., H, W), broadcastable against each other; noise_sigma: scalar, same units
    as the images. Returns (...) in nats, including -P log(sigma) - P/2 log(2 pi) for P = H*W pixels.
    """
    sigma = torch.as_tensor(noise_sigma, dtype=predicted.dtype, device=predicted.device)
    n_pixels = images.shape[-1] * images.shape[-2]
    squared = (images - predicted).square().sum(dim=(-2, -1))
    return -0.5 * squared / sigma.square() - n_pixels * (torch.log(sigma) + 0.5 * LOG_2PI)


def iwae_log_mean_likelihood(log_likelihoods: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log( (1/N) sum_n exp(log_likelihoods_n) ) along ``dim`` (N = its size), via logsumexp.

    Finite for any finite input (e.g. -1e6 or +1e4 nats), where the direct formula over/underflows.
    """
    n = log_likelihoods.shape[dim]
    return torch.logsumexp(log_likelihoods, dim=dim) - math.log(n)


def kl_diagonal_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag sigma^2) || N(0, I) ) summed over the last dim: (..., D) -> (...)."""
    variance = sigma.square()
    return 0.5 * (variance + mu.square() - 1.0 - torch.log(variance)).sum(dim=-1)


def backbone_continuity(
    c_atoms: torch.Tensor, n_atoms: torch.Tensor, bonded_to_next: torch.Tensor, bond_length: float = 1.33
) -> torch.Tensor:
    """Mean over bonded residue pairs of (|C(i) - N(i+1)| - bond_length)^2, in A^2.

    c_atoms, n_atoms: (..., R, 3) positions of each residue's C and N in A; bonded_to_next: (R,) bool,
    True where residue i is covalently bonded to i+1 in the base structure (False at chain ends,
    breaks and sequence gaps). Returns (...). With no bonded pair the loss is zero.
    """
    mask = torch.as_tensor(bonded_to_next[:-1], dtype=torch.bool, device=c_atoms.device)
    if not bool(mask.any()):
        return c_atoms.new_zeros(c_atoms.shape[:-2])
    c_i = c_atoms[..., :-1, :][..., mask, :]
    n_next = n_atoms[..., 1:, :][..., mask, :]
    distance = (c_i - n_next).square().sum(dim=-1).clamp_min(1e-12).sqrt()
    return (distance - bond_length).square().mean(dim=-1)


def peptide_distances(ca_atoms: torch.Tensor, c_atoms: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """What fixes the peptide unit across each bond i -> i+1, (..., R-1, 4) in A: the distances CA(i)-N(i+1),
    C(i)-CA(i+1) and CA(i)-CA(i+1), and the signed height of CA(i+1) above the plane of CA(i), C(i),
    N(i+1); from positions (..., R, 3) of each residue's CA, C and N.

    With the C(i)-N(i+1) bond length (``backbone_continuity``) and the rigid residues' own N-CA and CA-C,
    the distances fix the angles CA-C-N and C-N-CA and omega's cosine; the height is omega's sine, so a
    twist of the planar peptide is seen to first order (a distance across a dihedral near 180 degrees
    changes only to second order: 30 degrees of omega move CA-CA by 0.05 A, the height by 0.6 A).
    What is left between two rigid residues is phi and psi.
    """
    ca_i, c_i = ca_atoms[..., :-1, :], c_atoms[..., :-1, :]
    n_next, ca_next = n_atoms[..., 1:, :], ca_atoms[..., 1:, :]
    pairs = torch.stack([ca_i - n_next, c_i - ca_next, ca_i - ca_next], dim=-2)  # (..., R-1, 3, xyz)
    distances = pairs.square().sum(dim=-1).clamp_min(1e-12).sqrt()
    normal = torch.linalg.cross(c_i - ca_i, n_next - c_i, dim=-1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    height = ((ca_next - n_next) * normal).sum(dim=-1, keepdim=True)
    return torch.cat([distances, height], dim=-1)


def peptide_geometry(
    ca_atoms: torch.Tensor,
    c_atoms: torch.Tensor,
    n_atoms: torch.Tensor,
    base_distances: torch.Tensor,
    bonded_to_next: torch.Tensor,
) -> torch.Tensor:
    """Mean over bonded residue pairs and the four ``peptide_distances`` of their squared deviation
    from the base structure's (A^2): the peptide unit's angles and planarity kept as the base has them.

    ca_atoms, c_atoms, n_atoms: (..., R, 3) A; base_distances: (R-1, 4) A, ``peptide_distances`` of the
    base; bonded_to_next: (R,) bool. Returns (...); zero with no bonded pair.
    Why: the bond length alone leaves each residue free to turn about its peptide bond; trained without
    this, sampled adenylate kinase had CA-C-N and C-N-CA angles 21 degrees (rms) from Engh & Huber and
    24% Ramachandran outliers (the base: 2-3 degrees, none; BENCHMARKS.md, "Peptide geometry").
    The base's own values, not ideal ones: cis peptides (CA-CA 2.9 A instead of 3.8 A) stay cis.
    """
    mask = torch.as_tensor(bonded_to_next[:-1], dtype=torch.bool, device=ca_atoms.device)
    if not bool(mask.any()):
        return ca_atoms.new_zeros(ca_atoms.shape[:-2])
    deviation = peptide_distances(ca_atoms, c_atoms, n_atoms)[..., mask, :] - base_distances[mask].to(
        ca_atoms.dtype
    )
    return deviation.square().mean(dim=(-2, -1))


def bond_outliers(
    c_atoms: torch.Tensor,
    n_atoms: torch.Tensor,
    bonded_to_next: torch.Tensor,
    bond_length: float = 1.33,
    tolerance: float = 0.1,
) -> torch.Tensor:
    """Sum over bonded residue pairs of max(0, |C(i) - N(i+1)| - bond_length| - tolerance)^2, in A^2.

    Shapes as ``backbone_continuity``; returns (...). Why a sum of the excess and not a mean: the mean
    over ~200 bonds dilutes one strained bond 200-fold, and a state the rigid residues of the base do not
    quite fit strains a few single bonds in some samples while the mean deviation stays small (measured on
    the adk demo: BENCHMARKS.md, section "Image model").
    """
    mask = torch.as_tensor(bonded_to_next[:-1], dtype=torch.bool, device=c_atoms.device)
    if not bool(mask.any()):
        return c_atoms.new_zeros(c_atoms.shape[:-2])
    distance = (c_atoms[..., :-1, :][..., mask, :] - n_atoms[..., 1:, :][..., mask, :]).square().sum(dim=-1)
    excess = (distance.clamp_min(1e-12).sqrt() - bond_length).abs() - tolerance
    return excess.clamp_min(0.0).square().sum(dim=-1)


# Hard-sphere contact distances (A) by element pair: the "outer limits" of Ramachandran, Ramakrishnan and
# Sasisekharan (1963), whose dipeptide model with them draws the allowed regions of the Ramachandran plot.
CONTACT_LIMITS: dict[frozenset[str], float] = {
    frozenset({"C"}): 3.0,
    frozenset({"C", "O"}): 2.7,
    frozenset({"C", "N"}): 2.8,
    frozenset({"N"}): 2.6,
    frozenset({"N", "O"}): 2.6,
    frozenset({"O"}): 2.6,
}
LOCAL_CONTACT_ATOMS = ("N", "CA", "C", "O", "CB")
# Pairs (atom of residue i, atom of residue i+1) inside the peptide unit: peptide_geometry holds them.
PEPTIDE_UNIT_PAIRS = frozenset({("CA", "N"), ("CA", "CA"), ("C", "N"), ("C", "CA"), ("O", "N"), ("O", "CA")})


def local_contact_pairs(
    atom_name: np.ndarray,
    element: np.ndarray,
    residue_index: np.ndarray,
    bonded_to_next: np.ndarray,
    coords: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The atom pairs of ``local_contact_penalty`` for one structure (the base), as indices into its atoms.

    Per atom (A,): atom_name, element (str), residue_index; bonded_to_next (R,) bool; coords (A, 3) A.
    Every pair of N, CA, C, O, CB of residue i and of residue i+1 (joined by a peptide bond) except the
    six the peptide unit fixes: the pairs that turn with psi(i) and phi(i+1), 1-4 (C(i-1)..C(i), the
    phi = 0 wall; N(i)..N(i+1), the psi = 0 wall) and beyond (O(i-1)..CB(i), CB(i)..N(i+1), ...).
    Returns (first (P,), second (P,), limit (P,) A): limit = min(contact distance of the elements, the
    pair's distance in ``coords``), so a contact the base already has is kept, not pushed apart.
    """
    atom_name = np.asarray(atom_name)
    residue_index = np.asarray(residue_index)
    slot: dict[tuple[int, str], int] = {}
    for atom in np.flatnonzero(np.isin(atom_name, LOCAL_CONTACT_ATOMS)):
        slot.setdefault((int(residue_index[atom]), str(atom_name[atom])), int(atom))
    first, second, limit = [], [], []
    for residue in np.flatnonzero(np.asarray(bonded_to_next, dtype=bool)):
        for mine in LOCAL_CONTACT_ATOMS:
            for theirs in LOCAL_CONTACT_ATOMS:
                a, b = slot.get((int(residue), mine)), slot.get((int(residue) + 1, theirs))
                if a is None or b is None or (mine, theirs) in PEPTIDE_UNIT_PAIRS:
                    continue
                contact = CONTACT_LIMITS.get(frozenset({str(element[a])[:1], str(element[b])[:1]}))
                if contact is None:
                    continue
                first.append(a)
                second.append(b)
                limit.append(min(contact, float(np.linalg.norm(coords[a] - coords[b]))))
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64), np.asarray(limit)


def local_contact_penalty(
    atoms: torch.Tensor, first: torch.Tensor, second: torch.Tensor, limit: torch.Tensor
) -> torch.Tensor:
    """Sum over pairs of relu(limit - |atoms[first] - atoms[second]|)^2, in A^2.

    atoms: (..., A', 3) A; first, second (P,) indices into A'; limit (P,) A (``local_contact_pairs``).
    Returns (...). Why: the clash penalties leave sequence neighbours out, and the residues, rigid, turned
    about their peptide bonds into the walls of the Ramachandran plot: 13-15% of sampled residues were
    outliers (truth 1%), and 98% of those outliers (against 48% of the other residues) had a neighbour
    contact shorter than these limits (BENCHMARKS.md, "Local contacts").
    """
    distance = (atoms[..., first, :] - atoms[..., second, :]).square().sum(dim=-1).clamp_min(1e-12).sqrt()
    return (limit.to(atoms.dtype) - distance).clamp_min(0.0).square().sum(dim=-1)


def centering(center_of_mass: torch.Tensor) -> torch.Tensor:
    """Squared norm of the centre of mass: (..., 3) A -> (...) A^2."""
    return center_of_mass.square().sum(dim=-1)


def center_of_mass(coords: torch.Tensor) -> torch.Tensor:
    """Unit-mass centre of mass: (..., A, 3) -> (..., 3). (The renderer also uses unit masses.)"""
    return coords.mean(dim=-2)


def non_neighbour_pairs(bonded_to_next: torch.Tensor) -> torch.Tensor:
    """(R, R) bool, True for residue pairs i < j that are not sequence neighbours.

    Neighbours are i, i+1 joined by a peptide bond (``bonded_to_next[i]``); residues across a chain
    break or gap count as non-neighbours, as in ``evaluate.stereochemistry``.
    """
    bonded = torch.as_tensor(bonded_to_next, dtype=torch.bool)
    n = bonded.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=bonded.device).triu(diagonal=1)
    adjacent = torch.zeros(n, n, dtype=torch.bool, device=bonded.device)
    index = torch.arange(n - 1, device=bonded.device)
    adjacent[index, index + 1] = bonded[:-1]
    return upper & ~adjacent


def clash_penalty(ca_atoms: torch.Tensor, pair_mask: torch.Tensor, min_distance: float) -> torch.Tensor:
    """Sum over masked residue pairs of relu(min_distance - |CA_i - CA_j|)^2, in A^2.

    ca_atoms: (..., R, 3) A; pair_mask: (R, R) bool (``non_neighbour_pairs``). Returns (...).
    Why: rendering only C-alpha (the CPU preset) lets rigid residues pass through each other at no
    cost in the likelihood; real non-adjacent C-alpha atoms are never closer than ~3.8 A.
    Cost: the clashing pairs are found without autograd (all distances by ``torch.cdist``) and only
    those few pairs are differentiated, instead of all R^2 per structure.
    """
    lead = ca_atoms.shape[:-2]
    flat = ca_atoms.reshape(-1, *ca_atoms.shape[-2:])  # (S, R, 3)
    with torch.no_grad():
        close = torch.cdist(flat, flat) < min_distance
        structure, i, j = torch.nonzero(pair_mask & close, as_tuple=True)
    distance = (flat[structure, i] - flat[structure, j]).square().sum(dim=-1).clamp_min(1e-12).sqrt()
    overlap = (min_distance - distance).clamp_min(0.0).square()
    total = flat.new_zeros(flat.shape[0]).index_add(0, structure, overlap)
    return total.reshape(lead)


def heavy_atom_clash_penalty(
    coords: torch.Tensor,
    atom_mask: torch.Tensor,
    pair_mask: torch.Tensor,
    min_distance: float,
    reference: torch.Tensor | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Sum over atom pairs a, b of masked residue pairs of relu(d0_ab - |x_a - x_b|)^2, in A^2.

    coords: (..., R*K, 3) A in the residue-padded layout (``residue_padded_layout``: atom k of
    residue r at r*K + k); atom_mask: (R, K) bool, the slots holding atoms (padding is ignored);
    pair_mask: (R, R) bool, True for i < j pairs to check (``non_neighbour_pairs``: not the same residue
    nor bonded sequence neighbours, as ``evaluate.stereochemistry.clash_counts`` counts them).
    d0_ab = min_distance, or with ``reference`` (R*K, 3) A (the base structure, same layout)
    min(min_distance, |ref_a - ref_b|): a contact the reference already has (a salt bridge at 2.4 A
    under d0 = 2.5 A) is not pushed apart, it only may not get closer. Returns (...).

    Why: rendering only C-alpha atoms (the CPU preset) leaves side chains invisible to the likelihood,
    and sampled structures packed atoms of neighbouring domains into one another.
    Cost: nothing here is differentiated but the few overlapping atom pairs. Without autograd, each
    residue's centre (mean of its atoms) and radius (largest atom distance from it) bound which residue
    pairs can hold an atom pair within min_distance (|c_i - c_j| < r_i + r_j + min_distance, exact for
    any structure, no distance cutoff to tune); only those residue pairs' K x K atom distances are
    computed (``chunk`` residue pairs at a time, bounding memory), and the overlapping atom pairs are then
    recomputed with autograd.
    """
    n_residues, width = atom_mask.shape
    lead = coords.shape[:-2]
    flat = coords.reshape(-1, n_residues * width, 3)  # (S, R*K, 3)
    atom_mask = atom_mask.to(device=coords.device, dtype=torch.bool)
    pair_mask = pair_mask.to(coords.device)
    with torch.no_grad():
        per_residue = flat.reshape(-1, n_residues, width, 3)
        weight = atom_mask.to(flat.dtype)
        centre = (per_residue * weight[..., None]).sum(dim=-2) / weight.sum(dim=-1).clamp_min(1.0)[:, None]
        radius = ((per_residue - centre[..., None, :]).norm(dim=-1) * weight).amax(dim=-1)  # (S, R)
        # 1e-3 A of slack in both tests: the exact test is the final relu; these only must not drop a pair.
        reach = radius[:, :, None] + radius[:, None, :] + (min_distance + 1e-3)
        gap = torch.cdist(centre, centre, compute_mode="donot_use_mm_for_euclid_dist")
        structure, i, j = torch.nonzero(pair_mask & (gap < reach), as_tuple=True)
        # Empty slots moved 1e4 A away (+ on one side, - on the other) never come close: cheaper than
        # masking every K x K block.
        far = torch.where(atom_mask, 0.0, 1e4).to(flat.dtype)[..., None]  # (R, K, 1)
        found = []
        for start in range(0, structure.shape[0], chunk):
            s, ri, rj = structure[start : start + chunk], i[start : start + chunk], j[start : start + chunk]
            a = per_residue[s, ri] + far[ri]  # (P, K, 3)
            b = per_residue[s, rj] - far[rj]
            close = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") < min_distance + 1e-3
            hit = close.flatten(start_dim=1).any(dim=1)  # most candidate pairs have no close atoms
            p, ka, kb = torch.nonzero(close[hit], as_tuple=True)
            found.append((s[hit][p], ri[hit][p] * width + ka, rj[hit][p] * width + kb))
        if found:
            s, atom_a, atom_b = (torch.cat(parts) for parts in zip(*found, strict=True))
        else:
            s = atom_a = atom_b = torch.zeros(0, dtype=torch.long, device=coords.device)
    distance = (flat[s, atom_a] - flat[s, atom_b]).square().sum(dim=-1).clamp_min(1e-12).sqrt()
    threshold = distance.new_full(distance.shape, min_distance)
    if reference is not None:
        ref = reference.to(device=flat.device, dtype=flat.dtype)
        threshold = torch.minimum(threshold, (ref[atom_a] - ref[atom_b]).square().sum(dim=-1).sqrt())
    overlap = (threshold - distance).clamp_min(0.0).square()
    total = flat.new_zeros(flat.shape[0]).index_add(0, s, overlap)
    return total.reshape(lead)


def relative_orientations(rot: torch.Tensor) -> torch.Tensor:
    """R_i^T R_{i+1} for consecutive residues: rot (..., R, 3, 3) -> (..., R-1, 3, 3)."""
    return rot[..., :-1, :, :].transpose(-1, -2) @ rot[..., 1:, :, :]


def neighbour_orientation(
    rot: torch.Tensor, base_relative: torch.Tensor, bonded_to_next: torch.Tensor
) -> torch.Tensor:
    """Mean over bonded pairs of |R_i^T R_{i+1} - (R_i^T R_{i+1})_base|_F^2 (dimensionless; 2 theta^2 for a
    small change theta in radians of the pair's relative orientation).

    rot: (..., R, 3, 3) residue frames; base_relative: (R-1, 3, 3) ``relative_orientations`` of the base;
    bonded_to_next: (R,) bool. Returns (...).
    Why: when only C-alpha atoms are rendered, nothing in the likelihood sees how a residue turns
    about its C-alpha, and the peptide bonds leave one such turn per residue free, so side chains
    drift into their neighbours. Consecutive residues keeping their relative orientation unless the
    data say otherwise (a hinge) moves side chains with their domain.
    """
    mask = torch.as_tensor(bonded_to_next[:-1], dtype=torch.bool, device=rot.device)
    if not bool(mask.any()):
        return rot.new_zeros(rot.shape[:-3])
    change = (relative_orientations(rot) - base_relative.to(rot.dtype)).square().sum(dim=(-2, -1))
    return change[..., mask].mean(dim=-1)
