"""Low-frequency motions of a structure from an anisotropic network model (ANM, Atilgan et al. 2001).

Used to give the pose search a few deformed references of the base structure, the idea of HEMNMA (Jin et
al. 2014): the slowest ANM modes of a protein describe its large domain motions well (on adenylate kinase
the lowest modes of the open state overlap much of the open->closed change), so a particle in another
state matches one of the deformed references far better than the base alone. Built from the base
structure only: no data, no second model.

The network: C-alpha atoms joined by unit springs within ``cutoff`` A; the modes are the eigenvectors of
its 3R x 3R Hessian after the six zero (rigid-body) modes.
"""

from __future__ import annotations

import numpy as np


def anm_modes(ca_coords: np.ndarray, n_modes: int, cutoff: float = 15.0) -> np.ndarray:
    """The ``n_modes`` slowest ANM modes of C-alpha positions (R, 3) A: (n_modes, R, 3), each of unit norm
    over its 3R components (so a displacement ``a * sqrt(R) * mode`` has an RMSD of ``a`` A).

    Raises ValueError when the network has more than six zero modes (a residue or domain with no springs
    to the rest: raise ``cutoff``) or when fewer than n_modes modes exist.
    """
    x = np.asarray(ca_coords, dtype=np.float64)
    n = len(x)
    if n_modes < 0 or 3 * n - 6 < n_modes:
        raise ValueError(f"{n} residues have {max(3 * n - 6, 0)} internal modes; asked for {n_modes}")
    diff = x[None, :, :] - x[:, None, :]  # (R, R, 3) x_j - x_i
    d2 = (diff**2).sum(-1)
    connected = (d2 <= cutoff**2) & ~np.eye(n, dtype=bool)
    # off-diagonal super-elements -r r^T / |r|^2; the diagonal ones make every row sum to zero
    outer = diff[..., :, None] * diff[..., None, :] / np.where(d2 > 0, d2, 1.0)[..., None, None]
    blocks = np.where(connected[..., None, None], -outer, 0.0)
    for i in range(n):
        blocks[i, i] = -blocks[i].sum(axis=0)
    hessian = blocks.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    values, vectors = np.linalg.eigh(hessian)
    scale = max(float(values[-1]), 1e-12)
    if np.count_nonzero(values < 1e-8 * scale) > 6:
        raise ValueError(
            f"the elastic network at a {cutoff} A cutoff falls apart into pieces; use a larger cutoff"
        )
    return vectors[:, 6 : 6 + n_modes].T.reshape(n_modes, n, 3)


def displaced_references(
    coords: np.ndarray,
    residue_index: np.ndarray,
    ca_coords: np.ndarray,
    n_modes: int,
    amplitudes: tuple[float, ...],
    cutoff: float = 15.0,
) -> np.ndarray:
    """The base and copies moved along each of its ``n_modes`` slowest modes by each RMSD in ``amplitudes``
    (A, both signs): (1 + 2 * n_modes * len(amplitudes), A, 3). Every atom moves with its residue's C-alpha.

    coords (A, 3) A; residue_index (A,) residue of each atom (0..R-1); ca_coords (R, 3) A.
    """
    coords = np.asarray(coords, dtype=np.float64)
    references = [coords]
    if n_modes == 0 or not amplitudes:
        return np.stack(references)
    modes = anm_modes(ca_coords, n_modes, cutoff)
    per_atom = modes[:, np.asarray(residue_index)]  # (n_modes, A, 3)
    unit_rmsd = np.sqrt(len(ca_coords))
    for mode in per_atom:
        for amplitude in amplitudes:
            for sign in (1.0, -1.0):
                references.append(coords + sign * amplitude * unit_rmsd * mode)
    return np.stack(references)
