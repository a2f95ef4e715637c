"""The model's image formation (paper 2.3): separable Gaussian projection, then the CTF.

Each atom is an isotropic 3D Gaussian (``sigma`` A, unit mass). After rotation (``x_img = R @ x``)
and an in-plane shift, its projection along z is a 2D Gaussian that factorises into a profile along
x times a profile along y, so a structure's image is the matrix product ``Gy^T @ Gx`` of its per-atom
profiles ``Gy (A, H)`` and ``Gx (A, W)``; no ``(A, H, W)`` tensor is ever formed. Pixel values are
point-sampled densities times the pixel area, so each atom's image sums to ~1 (an image sums to ~A
when the structure lies well inside the box).

Speed (measurements: BENCHMARKS.md, section "Renderer"): the matmul is the ceiling, so everything around
it is kept small. A profile is computed only on a band of ``2 * half_width + 1`` pixels around each atom
(out to ``CUTOFF_SIGMAS`` standard deviations, where the Gaussian is below 1e-14 of its peak) and
scattered into zeroed rows, instead of exponentiating every pixel (``exp`` costs about as much as the
matmul, and far-from-atom arguments underflow into its slow path). A hand-written backward recomputes the
profiles (memory stays O(N A)), runs the two transposed matmuls, and reduces each atom's gradient with
one small matmul (first and zeroth moments over pixels). Renders are processed in chunks of about
``CHUNK_ATOMS`` atoms so the profiles stay in cache; with several torch threads the chunks run on that
many Python threads, torch single-threaded meanwhile (``ctf.for_each_chunk``).
"""

from __future__ import annotations

import math
import threading

import torch
from torch.autograd.function import once_differentiable

from atomvae.physics.ctf import CTFParams, apply_ctf, for_each_chunk
from atomvae.physics.grid import pixel_centers

CUTOFF_SIGMAS = 8.0  # exp(-32) = 1.3e-14: beyond this the profile is exactly treated as zero
CHUNK_ATOMS = 4096  # renders per chunk = CHUNK_ATOMS // A: a chunk's profiles (~2 MB) stay in cache
_MAX_BAND_SIGMAS = 12.0  # band offsets are clamped here: exp(-72) is still a normal float32


def image_plane_positions(coords: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Atom positions in the image plane: ``(..., A, 2)`` (x, y) in A.

    coords: (..., A, 3) A; rotation: (..., 3, 3) maps model coordinates to the image frame;
    shift: (..., 2) (shift_x, shift_y) in A. Leading dims broadcast. z is dropped (projection).
    """
    in_plane = rotation[..., :2, :]  # only the x and y rows matter for a projection along z
    return torch.matmul(coords, in_plane.transpose(-1, -2)) + shift[..., None, :]


class _Band:
    """Per-atom windows of ``width`` pixels along one image axis."""

    def __init__(self, box: int, pixel_size: float, sigma: float):
        self.box = box
        self.first_center = pixel_centers(box, pixel_size, dtype=torch.float64)[0].item()
        self.pixel_size = pixel_size
        self.sigma = sigma
        half_width = math.ceil(CUTOFF_SIGMAS * sigma / pixel_size - 0.5)
        self.width = min(2 * half_width + 1, box)
        self.half_width = half_width
        self.dense = self.width == box  # the band is the whole row: no scatter needed


class _Workspace:
    """Per-batch window placement, and buffers for one chunk of renders reused across chunks.

    Everything per atom (window start, offset of the atom within it) is computed once for the whole
    batch, so a chunk costs a handful of large operations, not a few dozen small ones. Fresh tensors
    of a few hundred kB come from mmap and page-fault on every use; reusing buffers (and writing
    with ``out=``) keeps the profile code at memory speed. ``view`` returns a contiguous tensor at
    the start of a flat buffer, so a shorter last chunk needs no new memory.
    """

    def __init__(
        self,
        band: _Band,
        by_axis: torch.Tensor,
        chunk: int,
        backward: bool,
        weights: torch.Tensor | None = None,
    ):
        self.band = band
        self.weights = weights  # (A,) per-atom mass folded into the x profiles, or None (unit mass)
        n_axes, n_renders, n_atoms = by_axis.shape
        chunk = min(chunk, n_renders)
        pixel = (by_axis - band.first_center) / band.pixel_size  # fractional pixel index (2, N, A)
        if band.dense:
            start = torch.zeros_like(pixel)
        else:
            start = (torch.round(pixel) - band.half_width).clamp_(0, band.box - band.width)
            start = torch.nan_to_num_(start, nan=0.0)  # a NaN atom still gets a valid window
        step = band.pixel_size / band.sigma
        self.first_offset = (start - pixel).mul_(step)  # (first window pixel - atom) / sigma
        self.start = start.long()
        self.index_steps = torch.arange(band.width, device=by_axis.device)
        self.offset_steps = self.index_steps.to(by_axis.dtype)[:, None] * step
        rows = n_axes * chunk * n_atoms * band.box
        window = n_axes * chunk * n_atoms * band.width
        self._sizes = {"rows": rows, "gaussian": window, "values": window, "index": window}
        if backward:
            self._sizes["grad_rows"] = rows
        self._like = by_axis
        self._local = threading.local()  # each worker thread gets its own buffers

    def view(self, name: str, *shape: int) -> torch.Tensor:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {
                key: torch.empty(
                    size, device=self._like.device, dtype=torch.long if key == "index" else self._like.dtype
                )
                for key, size in self._sizes.items()
            }
        return buffers[name][: math.prod(shape)].view(shape)

    def profiles(self, lo: int, hi: int) -> torch.Tensor:
        """Unnormalised profiles ``(2, n, A, box)`` of renders ``lo:hi`` (x then y)."""
        band = self.band
        first_offset = self.first_offset[:, lo:hi]
        n_axes, size, n_atoms = first_offset.shape
        rows = self.view("rows", n_axes, size, n_atoms, band.box)
        # Offsets (pixel - atom) / sigma and their Gaussian, built atoms-last (..., width, A), where
        # broadcasting and exp vectorise, then copied pixels-last (..., A, width), where torch's scatter
        # is fast (exp reading a transposed view is several times slower than exp plus the copy: see
        # BENCHMARKS.md, section "Renderer").
        gaussian = self.view("gaussian", n_axes, size, band.width, n_atoms)
        torch.add(first_offset.unsqueeze(-2), self.offset_steps, out=gaussian)
        gaussian.clamp_(-_MAX_BAND_SIGMAS, _MAX_BAND_SIGMAS).square_().mul_(-0.5).exp_()
        if self.weights is not None:
            # Mass in the x profile only: image = Gy^T diag(w) Gx. The backward below then needs no
            # change: both of its matmuls and the x moments see the weighted rows.
            gaussian[0].mul_(self.weights)
        if band.dense:
            return rows.copy_(gaussian.transpose(-1, -2))
        values = self.view("values", n_axes, size, n_atoms, band.width).copy_(gaussian.transpose(-1, -2))
        index = self.view("index", n_axes, size, n_atoms, band.width)
        torch.add(self.start[:, lo:hi].unsqueeze(-1), self.index_steps, out=index)
        return rows.zero_().scatter_(-1, index, values)


class _SeparableGaussianProjection(torch.autograd.Function):
    """positions (N, A, 2) in A, sigma (0-dim tensor, A), weights (A,) or None -> images (N, box, box) of
    unnormalised Gaussian profiles ``sum_a w_a exp(-|u - x_a|^2 / (2 sigma^2))``. Differentiable in the
    positions and in sigma (a learnt global blur); the weights are constants."""

    @staticmethod
    def forward(
        ctx,
        positions: torch.Tensor,
        box: int,
        pixel_size: float,
        sigma: torch.Tensor,
        chunk: int,
        weights: torch.Tensor | None,
    ):
        band = _Band(box, pixel_size, float(sigma.detach()))
        by_axis = positions.permute(2, 0, 1).contiguous()  # (2, N, A): x then y
        n_renders, n_atoms = positions.shape[:2]
        images = positions.new_empty(n_renders, box, box)
        weights = None if weights is None else weights.to(positions.dtype).contiguous()
        work = _Workspace(band, by_axis, chunk, backward=False, weights=weights)

        def project(lo: int, hi: int) -> None:
            rows = work.profiles(lo, hi)
            torch.bmm(rows[1].transpose(1, 2), rows[0], out=images[lo:hi])  # Gy^T Gx

        for_each_chunk(project, n_renders, chunk, positions.device)
        ctx.save_for_backward(by_axis, weights)
        ctx.band, ctx.chunk = band, chunk
        ctx.sigma_needs_grad = sigma.requires_grad
        return images

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_images: torch.Tensor):
        by_axis, weights = ctx.saved_tensors
        band, chunk = ctx.band, ctx.chunk
        grad_images = grad_images.contiguous()
        grad_by_axis = torch.empty_like(by_axis)
        n_renders, n_atoms = by_axis.shape[1:]
        box = band.box
        centers = pixel_centers(box, band.pixel_size, device=by_axis.device, dtype=by_axis.dtype)
        # (M, box): sum u q, sum q and, for the width's gradient, sum u^2 q.
        moments = torch.stack([centers, torch.ones_like(centers)] + [centers.square()] * ctx.sigma_needs_grad)
        n_moments = moments.shape[0]
        grad_sigma_parts = by_axis.new_zeros(n_renders) if ctx.sigma_needs_grad else None
        work = _Workspace(band, by_axis, chunk, backward=True, weights=weights)

        def project_back(lo: int, hi: int) -> None:
            size = hi - lo
            rows = work.profiles(lo, hi)
            grad, grad_rows = grad_images[lo:hi], work.view("grad_rows", 2, size, n_atoms, box)
            # image = Gy^T Gx  =>  dGx = Gy dI  and  dGy = Gx dI^T.
            torch.bmm(rows[1], grad, out=grad_rows[0])
            torch.bmm(rows[0], grad.transpose(1, 2), out=grad_rows[1])
            # d/dx exp(-(u - x)^2 / (2 sigma^2)) = exp(...) (u - x) / sigma^2, summed over pixels u:
            # (sum_u u q - x sum_u q) / sigma^2 with q = dG * G, both moments by one matmul.
            # (2, box) @ (box, rows): this orientation is several times faster in MKL than
            # (rows, box) @ (box, 2) (BENCHMARKS.md, section "Renderer").
            weighted = grad_rows.mul_(rows).view(-1, box)
            sums = torch.mm(moments, weighted.T).view(n_moments, 2, size, n_atoms)
            position = by_axis[:, lo:hi]
            grad_by_axis[:, lo:hi] = (sums[0] - position * sums[1]) / band.sigma**2
            if grad_sigma_parts is not None:
                # d/dsigma exp(-(u - x)^2 / (2 sigma^2)) = exp(...) (u - x)^2 / sigma^3, summed over pixels:
                # (sum u^2 q - 2 x sum u q + x^2 sum q) / sigma^3, over both axes and all atoms.
                second = sums[2] - 2 * position * sums[0] + position.square() * sums[1]
                grad_sigma_parts[lo:hi] = second.sum(dim=(0, 2)) / band.sigma**3

        for_each_chunk(project_back, n_renders, chunk, by_axis.device)
        grad_sigma = None if grad_sigma_parts is None else grad_sigma_parts.sum()
        return grad_by_axis.permute(1, 2, 0), None, None, grad_sigma, None, None


def render_projections(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    box: int,
    pixel_size: float,
    sigma: float | torch.Tensor = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Project Gaussian atoms (mass ``weights (A,)``, default 1) onto a ``box x box`` grid:
    ``(..., box, box)``, no CTF.

    coords: (..., A, 3) in A; rotation: (..., 3, 3); shift: (..., 2) in A; leading dims broadcast
    (e.g. coords (B, K, A, 3) with rotation (B, K, 3, 3)). Pixel centres are
    ``grid.pixel_centers(box, pixel_size)``; image axis 0 is y, axis 1 is x; pixel value = density at
    the pixel centre times the pixel area. ``sigma`` (A) is a number or a 0-dim tensor. Differentiable
    in coords, rotation, shift and a tensor sigma (a learnt blur).
    """
    sigma_t = torch.as_tensor(sigma, dtype=coords.dtype, device=coords.device)
    if sigma_t.dim() != 0 or not float(sigma_t.detach()) > 0:
        raise ValueError(f"sigma must be one positive number (A), got {sigma}")
    if weights is not None and weights.shape != coords.shape[-2:-1]:
        raise ValueError(f"weights {tuple(weights.shape)}: need one per atom of coords {tuple(coords.shape)}")
    positions = image_plane_positions(coords, rotation, shift)
    batch_shape, n_atoms = positions.shape[:-2], positions.shape[-2]
    flat = positions.reshape(math.prod(batch_shape), n_atoms, 2)
    chunk = max(1, CHUNK_ATOMS // max(n_atoms, 1))
    images = _SeparableGaussianProjection.apply(flat, box, float(pixel_size), sigma_t, chunk, weights)
    # Both profiles share the normalisation pixel_size / (sqrt(2 pi) sigma): apply it once per image.
    norm = (pixel_size / (math.sqrt(2 * math.pi) * sigma_t)) ** 2
    return (images * norm).reshape(*batch_shape, box, box)


def render(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    ctf_params: CTFParams,
    box: int,
    pixel_size: float,
    sigma: float | torch.Tensor = 1.0,
    pad_factor: float = 2,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predicted images ``(..., box, box)``: ``render_projections`` then ``apply_ctf``.

    ``ctf_params.shape`` must match the leading dims of the images or a prefix of them: with coords
    (B, K, A, 3) and ctf_params (B,), each particle's CTF is computed once and shared by its K renders.
    """
    images = render_projections(coords, rotation, shift, box, pixel_size, sigma, weights)
    return apply_ctf(images, ctf_params, pixel_size, pad_factor)


def band_size(box: int, pixel_size: float, resolution: float) -> int:
    """F: the frequencies 0 .. F-1 (cycles per box) per axis with ``|k| <= 1 / resolution`` (1/A), below
    Nyquist (an even box's Nyquist row would stand for both signs of k_y)."""
    return min(int(math.floor(box * pixel_size / resolution + 1e-9)), (box - 1) // 2) + 1


def band_rows(box: int, n_band: int) -> torch.Tensor:
    """Rows of a ``rfft2`` half spectrum (box rows) that the band's 2F-1 rows stand for: k_y = 0 .. F-1,
    then -(F-1) .. -1 (as ``fftfreq`` orders them)."""
    return torch.cat([torch.arange(n_band), torch.arange(box - n_band + 1, box)])


def band_spectra(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    box: int,
    pixel_size: float,
    sigma: float,
    resolution: float,
    weights: torch.Tensor | None = None,
    period: int | None = None,
) -> torch.Tensor:
    """The half spectrum (``rfft2``) of ``render_projections``' image at zero shift, only at the frequencies
    ``|k_x|, |k_y| <= 1 / resolution`` (1/A): (..., 2F-1, F) complex, F = ``band_size``, rows as
    ``band_rows``. Forward only, for scores that ignore every frequency above the band (projection
    matching's low-pass, the conformation search's band). period (px, default box): the spectrum of the
    image zero-padded at its end to period x period pixels (``apply_ctf``'s padded grid), on that grid's
    finer frequencies.

    Straight from each atom's analytic transform, ``w exp(-2 pi^2 sigma^2 |k|^2) exp(-2 pi i k.t)`` (``t``
    its position from the first pixel centre), separable in k_x and k_y: per render one real
    ``(2F, A) @ (A, 2F)`` matmul over the F frequencies of the band per axis (F = 17 for a 64-px box of
    1.5 A at 6 A) against ``(box, A) @ (A, box)`` and an FFT for the image. The sampled image's aliases
    are left out (relative size exp(-2 pi^2 s^2 (1 - nu)^2) for s = sigma / pixel and nu cycles per
    pixel: 1.5e-5 at s = 1, nu = 1/4; ``benchmarks/fourier_renderer.py`` keeps them, for training), and
    so is the image's edge: atoms must lie well inside the box. coords (..., A, 3) A, rotation (..., 3, 3)
    broadcast as in ``render_projections``; weights (A,) default 1."""
    positions = image_plane_positions(
        coords, rotation, torch.zeros(2, dtype=coords.dtype, device=coords.device)
    )
    batch_shape, n_atoms = positions.shape[:-2], positions.shape[-2]
    period = box if period is None else period
    n_band = band_size(period, pixel_size, resolution)
    first_center = -(box // 2) * pixel_size
    # exp(-2 pi i f t / period) for f = 0 .. n_band - 1 as powers of one phasor per atom and axis: a few
    # multiplies per frequency instead of a cos and a sin (float32 powers drift by ~f ulp: 1e-6 at f = 32)
    angle = (positions.reshape(-1, n_atoms, 2) - first_center) * (2 * math.pi / (period * pixel_size))
    complex_dtype = torch.complex128 if coords.dtype == torch.float64 else torch.complex64
    spectra = torch.empty(len(angle), 2 * n_band - 1, n_band, dtype=complex_dtype, device=coords.device)
    frequency = torch.arange(n_band, dtype=coords.dtype, device=coords.device) / (period * pixel_size)
    gaussian = torch.exp(-2 * math.pi**2 * sigma**2 * frequency.square())  # per axis, 1/A
    envelope = (gaussian[:, None] * gaussian[None, :]).to(complex_dtype)
    chunk = max(1, 16 * CHUNK_ATOMS // max(n_atoms, 1))  # few, large elementwise passes
    for lo in range(0, len(angle), chunk):
        part = angle[lo : lo + chunk].permute(0, 2, 1).contiguous()  # (n, 2 axes, A): atoms contiguous
        cos, sin = part.cos(), part.sin().neg_()  # exp(-i angle)
        # [Re; Im] of exp(-i f angle), frequency-major (2F, n, 2 axes, A) so that every step of the
        # angle-addition recurrence writes contiguous memory; rows (n, 2 axes, 2F, A) are a view of it
        table = part.new_empty(2 * n_band, *part.shape)
        real, imag = table[:n_band], table[n_band:]
        # The recurrence is linear in its start: starting the x profiles at the weights weighs every power.
        real[0], imag[0] = 1.0, 0.0
        if weights is not None:
            real[0, :, 0] = weights.to(real.dtype)
        for f in range(1, n_band):
            torch.mul(real[f - 1], cos, out=real[f]).addcmul_(imag[f - 1], sin, value=-1.0)
            torch.mul(real[f - 1], sin, out=imag[f]).addcmul_(imag[f - 1], cos)
        rows = table.permute(1, 2, 0, 3)
        x_rows, y_rows = rows[:, 0], rows[:, 1]
        products = torch.bmm(y_rows, x_rows.transpose(1, 2))  # (n, 2F, 2F): [Re y, Im y] x [Re x, Im x]
        rr, ri = products[:, :n_band, :n_band], products[:, :n_band, n_band:]
        ir, ii = products[:, n_band:, :n_band], products[:, n_band:, n_band:]
        block = spectra[lo : lo + chunk]
        block[:, :n_band] = torch.complex(rr - ii, ri + ir) * envelope  # k_y >= 0
        # k_y < 0: the y profile's conjugate (a real image's spectrum)
        block[:, n_band:] = (torch.complex(rr + ii, ri - ir) * envelope)[:, 1:].flip(1)
    return spectra.reshape(*batch_shape, 2 * n_band - 1, n_band)


def band_limited_spectra(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    box: int,
    pixel_size: float,
    sigma: float,
    resolution: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``band_spectra`` placed on the whole half grid, zero outside the band: (..., box, box//2 + 1)."""
    band = band_spectra(coords, rotation, box, pixel_size, sigma, resolution, weights)
    n_band = band.shape[-1]
    spectra = band.new_zeros(*band.shape[:-2], box, box // 2 + 1)
    spectra[..., band_rows(box, n_band).to(band.device), :n_band] = band
    return spectra
