"""The model's image formation (paper 2.3): separable Gaussian projection, then the CTF.

Each atom is an isotropic 3D Gaussian (``sigma`` A, unit mass). After rotation
(``x_img = R @ x``) and an in-plane shift, its projection along z is a 2D Gaussian that factorises
into a profile along x times a profile along y, so a structure's image is the matrix product
``Gy^T @ Gx`` of its per-atom profiles ``Gy (A, H)`` and ``Gx (A, W)``; no ``(A, H, W)`` tensor is
ever formed. Pixel values are point-sampled densities times the pixel area, so each atom's image
sums to ~1 (an image sums to ~A when the structure lies well inside the box).
"""

from __future__ import annotations

import math

import torch

from atomvae.physics.ctf import CTFParams, apply_ctf
from atomvae.physics.grid import pixel_centers


def image_plane_positions(
    coords: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Atom positions in the image plane: ``(..., A, 2)`` (x, y) in A.

    coords: (..., A, 3) A; rotation: (..., 3, 3) maps model coordinates to the image frame;
    shift: (..., 2) (shift_x, shift_y) in A. Leading dims broadcast. z is dropped (projection).
    """
    in_plane = rotation[..., :2, :]  # only the x and y rows matter for a projection along z
    return torch.matmul(coords, in_plane.transpose(-1, -2)) + shift[..., None, :]


def _gaussian_profiles(
    positions: torch.Tensor, centers: torch.Tensor, sigma: float, pixel_size: float
) -> torch.Tensor:
    """Per-atom 1D profiles ``(..., A, P)``: pixel_size * N(center; position, sigma)."""
    scaled = (centers - positions[..., None]) / sigma
    norm = pixel_size / (math.sqrt(2 * math.pi) * sigma)
    return norm * torch.exp(-0.5 * scaled.square().clamp(max=120.0))


def render_projections(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    box: int,
    pixel_size: float,
    sigma: float = 1.0,
) -> torch.Tensor:
    """Project unit-mass Gaussian atoms onto a ``box x box`` grid: ``(..., box, box)``, no CTF.

    coords: (..., A, 3) in A; rotation: (..., 3, 3); shift: (..., 2) in A; leading dims broadcast
    (e.g. coords (B, K, A, 3) with rotation (B, K, 3, 3)). Pixel centres are
    ``grid.pixel_centers(box, pixel_size)``; image axis 0 is y, axis 1 is x. Differentiable in
    coords, rotation and shift.
    """
    xy = image_plane_positions(coords, rotation, shift)
    centers = pixel_centers(box, pixel_size, device=xy.device, dtype=xy.dtype)
    profile_x = _gaussian_profiles(xy[..., 0], centers, sigma, pixel_size)  # (..., A, W)
    profile_y = _gaussian_profiles(xy[..., 1], centers, sigma, pixel_size)  # (..., A, H)
    return torch.matmul(profile_y.transpose(-1, -2), profile_x)


def render(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    ctf_params: CTFParams,
    box: int,
    pixel_size: float,
    sigma: float = 1.0,
    pad_factor: float = 2,
) -> torch.Tensor:
    """Predicted images ``(..., box, box)``: ``render_projections`` then ``apply_ctf``.

    ``ctf_params.shape`` must match the leading dims of the images or a prefix of them: with coords
    (B, K, A, 3) and ctf_params (B,), each particle's CTF is computed once and shared by its K renders.
    """
    images = render_projections(coords, rotation, shift, box, pixel_size, sigma)
    return apply_ctf(images, ctf_params, pixel_size, pad_factor)
