"""Density maps of atomic models: atoms as 3D Gaussians on a cubic grid, written as MRC files.

A map of ``box`` voxels of ``voxel_size`` A per axis whose voxel ``(i, j, k)`` (x, y, z) has its centre at
``origin + (i, j, k) * voxel_size``. Each atom is a normalised Gaussian weighted by its atomic number
with standard deviation ``resolution / (pi * sqrt(2))``, ChimeraX ``molmap``'s default, so a map "at 4 A"
here looks like ``molmap #1 4`` there.

MRC origin: the file's ``origin`` header (MRC2014 words 50-52, in A) holds ``origin`` and nxstart,
nystart, nzstart are 0. ChimeraX uses the origin header when it is non-zero and ``nstart * voxel_size``
otherwise, so both readings agree on where voxel 0 is; RELION and cryoSPARC write origin 0 for
reconstructions, where both give 0 as well. Data are stored z, y, x (section, row, column; mapc = 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import mrcfile
import numpy as np

from atomvae.errors import atomic_path

SIGMA_PER_RESOLUTION = 1.0 / (math.pi * math.sqrt(2.0))  # ChimeraX molmap's sigmaFactor
CUTOFF_SIGMAS = 4.0  # each Gaussian is summed over voxels within this many sigmas of the atom (per axis)

# Atomic numbers of the elements protein models hold (anything else counts as carbon).
ATOMIC_NUMBER = {
    "H": 1,
    "C": 6,
    "N": 7,
    "O": 8,
    "F": 9,
    "NA": 11,
    "MG": 12,
    "P": 15,
    "S": 16,
    "CL": 17,
    "K": 19,
    "CA": 20,
    "MN": 25,
    "FE": 26,
    "CO": 27,
    "NI": 28,
    "CU": 29,
    "ZN": 30,
    "SE": 34,
}


def atomic_numbers(elements) -> np.ndarray:
    """(A,) float64 atomic numbers for element symbols (unknown symbols count as carbon, 6)."""
    return np.array([ATOMIC_NUMBER.get(str(e).strip().upper(), 6) for e in elements], dtype=np.float64)


def gaussian_map(
    coords: np.ndarray,
    weights: np.ndarray,
    box: int,
    voxel_size: float,
    origin,
    resolution: float,
    max_chunk_values: int = 4_000_000,
) -> np.ndarray:
    """Sum of atom Gaussians on the grid: ``(box, box, box)`` float32 indexed ``[z, y, x]``.

    coords (A, 3) A (x, y, z); weights (A,) (e.g. atomic numbers): each atom adds ``weight`` in total,
    spread over the voxels within ``CUTOFF_SIGMAS`` sigma (less for atoms near the edge; atoms outside
    the box add nothing). origin (3,) A: the centre of voxel (0, 0, 0). resolution A: sigma =
    resolution / (pi sqrt 2). Separable: the 1D Gaussian factors of each atom are computed once per axis.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    if resolution <= 0 or voxel_size <= 0 or box < 1:
        raise ValueError(
            f"need resolution > 0, voxel_size > 0, box >= 1 (got {resolution}, {voxel_size}, {box})"
        )
    sigma = SIGMA_PER_RESOLUTION * resolution
    half = max(1, math.ceil(CUTOFF_SIGMAS * sigma / voxel_size))
    offsets = np.arange(-half, half + 1)
    width = len(offsets)
    density = np.zeros(box**3, dtype=np.float64)
    grid_position = (coords - origin) / voxel_size  # (A, 3) in voxels
    nearest = np.rint(grid_position).astype(np.int64)
    chunk = max(1, max_chunk_values // width**3)
    for start in range(0, len(coords), chunk):
        part = slice(start, start + chunk)
        pos, near, w = grid_position[part], nearest[part], weights[part]
        index = near[:, None, :] + offsets[None, :, None]  # (a, W, 3) voxel index per axis
        # normalised in 3D: the Gaussian's density at voxel centres times the voxel volume
        factors = np.exp(-0.5 * ((index - pos[:, None, :]) * voxel_size / sigma) ** 2)
        factors *= voxel_size / (math.sqrt(2.0 * math.pi) * sigma)
        inside = (index >= 0) & (index < box)
        factors = np.where(inside, factors, 0.0)
        clipped = np.clip(index, 0, box - 1)
        fx, fy, fz = factors[..., 0], factors[..., 1], factors[..., 2]
        values = w[:, None, None, None] * fz[:, :, None, None] * fy[:, None, :, None] * fx[:, None, None, :]
        flat = (clipped[:, :, None, None, 2] * box + clipped[:, None, :, None, 1]) * box + clipped[
            :, None, None, :, 0
        ]
        density += np.bincount(flat.reshape(-1), weights=values.reshape(-1), minlength=box**3)
    return density.reshape(box, box, box).astype(np.float32)


def write_map(path: str | os.PathLike, density: np.ndarray, voxel_size: float, origin) -> Path:
    """Write a ``[z, y, x]`` float32 map as MRC2014 with voxel size (A) and origin (A, the centre of voxel
    (0, 0, 0)); atomic. See the module docstring for the origin convention."""
    path = Path(path)
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(density, dtype=np.float32))
        mrc.voxel_size = float(voxel_size)
        mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
        mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = (float(v) for v in origin)
        mrc.update_header_stats()
    return path
