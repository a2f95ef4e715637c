"""The model's image formation (paper 2.3): separable Gaussian projection, then the CTF.

Each atom is an isotropic 3D Gaussian (``sigma`` A, unit mass). After rotation (``x_img = R @ x``)
and an in-plane shift, its projection along z is a 2D Gaussian that factorises into a profile along
x times a profile along y, so a structure's image is the matrix product ``Gy^T @ Gx`` of its per-atom
profiles ``Gy (A, H)`` and ``Gx (A, W)``; no ``(A, H, W)`` tensor is ever formed. Pixel values are
point-sampled densities times the pixel area, so each atom's image sums to ~1 (an image sums to ~A
when the structure lies well inside the box).

Speed (see shared/PERF_NOTES.md): the matmul is the ceiling, so everything around it is kept small.
A profile is computed only on a band of ``2 * half_width + 1`` pixels around each atom (out to
``CUTOFF_SIGMAS`` standard deviations, where the Gaussian is below 1e-14 of its peak) and scattered
into zeroed rows, instead of exponentiating every pixel (``exp`` costs about as much as the matmul,
and far-from-atom arguments underflow into its slow path). A hand-written backward recomputes the
band profiles (memory stays O(N A)), runs the two transposed matmuls, and reduces each atom's
gradient over its band only. Renders are processed in chunks of about ``CHUNK_ATOMS`` atoms so the
profiles stay in cache.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from atomvae.physics.ctf import CTFParams, apply_ctf
from atomvae.physics.grid import pixel_centers

CUTOFF_SIGMAS = 8.0  # exp(-32) = 1.3e-14: beyond this the profile is exactly treated as zero
CHUNK_ATOMS = 16384  # renders per chunk = CHUNK_ATOMS // A: profiles of a chunk fit in cache
_MAX_BAND_SIGMAS = 12.0  # band offsets are clamped here: exp(-72) is still a normal float32


def image_plane_positions(
    coords: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Atom positions in the image plane: ``(..., A, 2)`` (x, y) in A.

    coords: (..., A, 3) A; rotation: (..., 3, 3) maps model coordinates to the image frame;
    shift: (..., 2) (shift_x, shift_y) in A. Leading dims broadcast. z is dropped (projection).
    """
    in_plane = rotation[..., :2, :]  # only the x and y rows matter for a projection along z
    return torch.matmul(coords, in_plane.transpose(-1, -2)) + shift[..., None, :]


class _Band:
    """Per-atom windows of ``width`` pixels: the start pixel, and offsets (pixel - atom) / sigma."""

    def __init__(self, box: int, pixel_size: float, sigma: float):
        self.box = box
        self.first_center = pixel_centers(box, pixel_size, dtype=torch.float64)[0].item()
        self.pixel_size = pixel_size
        self.sigma = sigma
        half_width = math.ceil(CUTOFF_SIGMAS * sigma / pixel_size - 0.5)
        self.width = min(2 * half_width + 1, box)
        self.half_width = half_width
        self.dense = self.width == box  # the band is the whole row: no scatter needed

    def offsets(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (..., A) in A -> (start (..., A) float pixel index, offsets (..., A, width))."""
        pixel = (positions - self.first_center) / self.pixel_size  # fractional pixel index
        steps = torch.arange(self.width, device=positions.device, dtype=positions.dtype)
        if self.dense:
            start = torch.zeros_like(pixel)
        else:
            start = (torch.round(pixel) - self.half_width).clamp_(0, self.box - self.width)
            start = torch.nan_to_num_(start, nan=0.0)  # a NaN atom still gets a valid window
        offsets = (start - pixel).unsqueeze(-1) + steps
        offsets.mul_(self.pixel_size / self.sigma).clamp_(-_MAX_BAND_SIGMAS, _MAX_BAND_SIGMAS)
        return start, offsets

    def rows(self, start: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dense profile rows (..., A, box) holding ``values (..., A, width)`` at their windows."""
        if self.dense:
            return values, None
        index = start.long().unsqueeze(-1) + torch.arange(self.width, device=start.device)
        rows = values.new_zeros(*values.shape[:-1], self.box)
        return rows.scatter_(-1, index, values), index


def _band_profiles(band: _Band, positions: torch.Tensor):
    """positions (n, A, 2) -> (rows (n, 2, A, box), band values, offsets, index) for x (0) and y (1)."""
    start, offsets = band.offsets(positions.transpose(1, 2))  # (n, 2, A), (n, 2, A, width)
    values = torch.exp(offsets.square().mul_(-0.5))
    rows, index = band.rows(start, values)
    return rows, values, offsets, index


class _SeparableGaussianProjection(torch.autograd.Function):
    """positions (N, A, 2) in A -> images (N, box, box) of unnormalised Gaussian profiles."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, box: int, pixel_size: float, sigma: float, chunk: int):
        band = _Band(box, pixel_size, sigma)
        n_renders = positions.shape[0]
        images = positions.new_empty(n_renders, box, box)
        for lo in range(0, n_renders, chunk):
            rows, _, _, _ = _band_profiles(band, positions[lo : lo + chunk])
            torch.bmm(rows[:, 1].transpose(1, 2), rows[:, 0], out=images[lo : lo + chunk])
        ctx.save_for_backward(positions)
        ctx.band, ctx.chunk = band, chunk
        return images

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_images: torch.Tensor):
        (positions,) = ctx.saved_tensors
        band, chunk = ctx.band, ctx.chunk
        grad_images = grad_images.contiguous()
        grad_positions = torch.empty_like(positions)
        for lo in range(0, positions.shape[0], chunk):
            rows, values, offsets, index = _band_profiles(band, positions[lo : lo + chunk])
            grad = grad_images[lo : lo + chunk]
            # image = Gy^T Gx  =>  dGx = Gy @ dI  and  dGy = Gx @ dI^T.
            grad_rows = (torch.bmm(rows[:, 1], grad), torch.bmm(rows[:, 0], grad.transpose(1, 2)))
            if index is None:
                grad_values = torch.stack(grad_rows, dim=1)
            else:
                grad_values = torch.stack([g.gather(-1, index[:, i]) for i, g in enumerate(grad_rows)], 1)
            # d/dx exp(-(u - x)^2 / (2 sigma^2)) = exp(...) * (u - x) / sigma^2 = value * offset / sigma
            grad_values.mul_(values).mul_(offsets)
            grad_positions[lo : lo + chunk] = grad_values.sum(-1).transpose(1, 2) / band.sigma
        return grad_positions, None, None, None, None


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
    ``grid.pixel_centers(box, pixel_size)``; image axis 0 is y, axis 1 is x; pixel value = density at
    the pixel centre times the pixel area. Differentiable in coords, rotation and shift.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive (A), got {sigma}")
    positions = image_plane_positions(coords, rotation, shift)
    batch_shape, n_atoms = positions.shape[:-2], positions.shape[-2]
    flat = positions.reshape(-1, n_atoms, 2)
    chunk = max(1, CHUNK_ATOMS // max(n_atoms, 1))
    images = _SeparableGaussianProjection.apply(flat, box, float(pixel_size), float(sigma), chunk)
    # Both profiles share the normalisation pixel_size / (sqrt(2 pi) sigma): apply it once per image.
    norm = (pixel_size / (math.sqrt(2 * math.pi) * sigma)) ** 2
    return (images * norm).reshape(*batch_shape, box, box)


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
