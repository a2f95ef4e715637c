"""atomvae.geometry: rotations, RELION Euler angles, rigid transforms, superposition. Knows no proteins."""

from atomvae.geometry.euler import (
    matrix_to_relion,
    relion_origin_to_shift,
    relion_to_matrix,
    shift_to_relion_origin,
)
from atomvae.geometry.rigid import Rigid
from atomvae.geometry.rotations import gram_schmidt, random_rotations, rotation_to_six_d, six_d_to_rotation
from atomvae.geometry.superpose import kabsch, pairwise_rmsd, rmsd

__all__ = [
    "Rigid",
    "gram_schmidt",
    "kabsch",
    "matrix_to_relion",
    "pairwise_rmsd",
    "random_rotations",
    "relion_origin_to_shift",
    "relion_to_matrix",
    "rmsd",
    "rotation_to_six_d",
    "shift_to_relion_origin",
    "six_d_to_rotation",
]
