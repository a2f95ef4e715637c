"""Measured and not adopted (issue 12): the renderer straight into Fourier space, the half spectrum ``rfft2``
of ``render_projections``' images, with a hand-written backward. Run it to check it against the real-space
renderer (values and gradients, float64) and to time both on the cpu preset's shapes:

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/fourier_renderer.py

Measured 2026-12-01 (1 thread, 487 atoms, min process CPU time, machine loaded): forward + backward with
the CTF ~600-650 us per render against ~420-460 us for the real-space renderer with its padded CTF and
~400 us with a periodic CTF: exact, but slower. A render needs every frequency's profile value
(2 x 33 complex per atom and axis) where the real-space band needs ~13 real values, and in eager torch
each of the ~10 elementwise passes over those profiles costs about as much as the CTF's FFTs it saves.

Why it was tried: with the likelihood in Fourier space (Parseval keeps the L2) the CTF is one multiply per
frequency and a render needs no FFT at all, where the real-space route pays a padded complex FFT pair per
two renders forward and again backward (at 487 atoms ~30% of a render's time, BENCHMARKS.md).

The image of ``render_projections`` samples each Gaussian at the pixel centres ``u_j = c0 + j p``. Along
one axis an atom at fractional pixel index ``t = (x - c0) / p`` with width ``s = sigma / p`` pixels has
the discrete-time Fourier transform (Poisson summation of the sampled Gaussian)

    F(nu) = sqrt(2 pi) s * sum_m G(nu + m) exp(-2 pi i (nu + m) t),   G(xi) = exp(-2 pi^2 s^2 xi^2),

``nu = k / box`` cycles per pixel. The ``m != 0`` terms are the aliases of a Gaussian sampled at less
than its own width (s ~ 0.7 for the cpu preset): without them the spectrum would be a band-limited
Gaussian, a different image. ``|m| <= M`` with the neglected terms below ``ALIAS_TOLERANCE``. The
``sqrt(2 pi) s`` factors cancel ``render_projections``' normalisation, so an atom's DC term is its mass.

Separable as in real space: with ``Phi_y (A, K)`` and ``Phi_x (A, K)`` complex profiles for the
non-negative frequencies ``k = 0..box//2`` (``K = box//2 + 1``), the spectrum is
``sum_a w_a Phi_y[a, ky] Phi_x[a, kx]``; negative ``ky`` use ``conj(Phi_y)`` (a real profile). Real and
imaginary parts interleaved, ``[Re, Im](Phi_y)^T diag(w) [Re, Im](Phi_x)`` is one real ``(2K, 2K)``
matmul per render holding every product the half spectrum needs: ~1.06x the FLOPs of the real-space
``(64, A) @ (A, 64)``, and no band scatter. The profiles factor as ``P(nu, t) * Lambda(nu, t)`` with the
phasor ``P = exp(-2 pi i nu t)`` and the alias sum ``Lambda = sum_m G(nu + m) exp(-2 pi i m t)`` (a
``(A, 2M + 1) @ (2M + 1, K)`` matmul), so only ``P`` needs a transcendental per frequency.

The hand-written backward recomputes the profiles (memory O(N A)) and reduces each atom's gradient with
small matmuls over frequencies; the width's gradient is that of the ``G`` coefficients. Exact (to the
tolerance) for atoms whose Gaussian lies inside the box: the spectrum is that of the periodic image,
and an atom within ~8 sigma of the edge would wrap around where the real-space image truncates it.
"""

from __future__ import annotations

import math
import threading

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from atomvae.physics.ctf import CTFParams, for_each_chunk, rfft_ctf
from atomvae.physics.render import CHUNK_ATOMS, image_plane_positions, render_projections

ALIAS_TOLERANCE = 1e-9  # largest neglected alias coefficient G(M + 1/2), relative to the DC term


def alias_orders(width_pixels: float) -> int:
    """M, the aliases ``|m| <= M`` kept for a Gaussian of ``width_pixels`` (sigma / pixel size): the first
    neglected one, at ``|nu + m| >= M + 1/2``, is below ``ALIAS_TOLERANCE``."""
    reach = math.sqrt(-math.log(ALIAS_TOLERANCE) / (2 * math.pi**2 * width_pixels**2))
    return max(0, math.ceil(reach - 0.5))


class _Coefficients:
    """Per-batch constants and per-thread buffers.

    ``G (2M+1, K)`` are the alias coefficients, ``dG/ds`` their derivative in the width. A profile's
    real part at frequency k is ``c alpha - s beta`` and its imaginary part ``-(s alpha + c beta)``, with
    ``c, s = cos, sin(2 pi nu t)`` and ``alpha, beta = G^T cos, sin(2 pi m t)``. The imaginary parts of
    the DC and (even box) Nyquist frequencies are exactly zero (the aliases pair up as conjugates), so a
    profile is ``box`` real rows: ``Re`` at ``k = 0..K-1``, then ``Im`` at ``k = 1..box-K``. Arrays are
    atoms-last ``(2, n, K, A)``: per-frequency and per-atom factors broadcast along contiguous atoms,
    which torch vectorises (frequencies-last, 33 wide, ran at a third of the speed).
    """

    def __init__(self, box: int, width_pixels: float, like: torch.Tensor, chunk: int, backward: bool):
        n_freq = box // 2 + 1
        orders = alias_orders(width_pixels)
        nu = torch.arange(n_freq, dtype=torch.float64) / box
        m = torch.arange(-orders, orders + 1, dtype=torch.float64)
        xi = nu[None, :] + m[:, None]  # (2M+1, K) cycles per pixel
        g = torch.exp(-2 * math.pi**2 * width_pixels**2 * xi.square())
        g_ds = -4 * math.pi**2 * width_pixels * xi.square() * g

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=like.device, dtype=like.dtype).contiguous()

        self.box, self.n_freq, self.n_imag, self.n_alias = box, n_freq, box - n_freq, len(m)
        self.two_pi_nu = cast(2 * math.pi * nu)[:, None]  # (K, 1)
        self.two_pi_m = cast(2 * math.pi * m)[:, None]  # (2M+1, 1)
        # alpha = G_0 + sum_{m>0} (G_m + G_-m) cos(2 pi m t); -beta = sum_{m>0} (G_-m - G_m) sin(2 pi m t).
        self.g_zero = cast(g[orders])[:, None]  # (K, 1)
        self.g_even = cast(g[orders + 1 :] + g[:orders].flip(0))[:, :, None]  # (M, K, 1)
        self.g_odd = cast(g[:orders].flip(0) - g[orders + 1 :])[:, :, None]  # (M, K, 1)
        self.g_and_ds = cast(torch.cat([g, g_ds], dim=0))  # (2 (2M+1), K)
        n_axes, n_renders, n_atoms = like.shape
        chunk = min(chunk, n_renders)
        per_array = n_axes * chunk * n_atoms * n_freq
        self._sizes = {"cos": per_array, "sin": per_array, "alpha": per_array, "beta": per_array}
        self._sizes["rows"] = n_axes * chunk * n_atoms * box
        if backward:
            self._sizes.update(grad_rows=n_axes * chunk * n_atoms * box, u=per_array, v=per_array)
        self._like = like
        self._local = threading.local()  # each worker thread gets its own buffers

    def view(self, name: str, *shape: int) -> torch.Tensor:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            like = self._like
            buffers = self._local.buffers = {
                key: torch.empty(size, device=like.device, dtype=like.dtype)
                for key, size in self._sizes.items()
            }
        return buffers[name][: math.prod(shape)].view(shape)

    def alias_phases(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin(2 pi m t): (2, n, 2M+1, A) for t (2, n, A)."""
        angle = self.two_pi_m * t.unsqueeze(-2)
        return angle.cos(), angle.sin_()

    def profiles(self, t: torch.Tensor, weights: torch.Tensor | None):
        """t (2, n, A) fractional pixel indices (x then y) -> rows (2, n, box, A): the profiles' real rows
        (the x ones times the masses), and the pieces the backward reuses: c, s, alpha and minus beta
        (2, n, K, A)."""
        n_axes, size, n_atoms = t.shape
        shape = (n_axes, size, self.n_freq, n_atoms)
        angle = torch.mul(self.two_pi_nu, t.unsqueeze(-2), out=self.view("sin", *shape))
        c = torch.cos(angle, out=self.view("cos", *shape))
        s = angle.sin_()
        alpha = self.view("alpha", *shape).copy_(self.g_zero.expand(shape))
        minus_beta = self.view("beta", *shape).zero_()
        for order in range(1, self.n_alias // 2 + 1):
            phase = t.unsqueeze(-2) * (2 * math.pi * order)
            alpha.addcmul_(self.g_even[order - 1], phase.cos())
            minus_beta.addcmul_(self.g_odd[order - 1], phase.sin_())
        rows = self.view("rows", n_axes, size, self.box, n_atoms)
        real, imag = rows[..., : self.n_freq, :], rows[..., self.n_freq :, :]
        # Re = c alpha - s beta;  Im = -(s alpha + c beta) = c (-beta) - s alpha.
        torch.mul(c, alpha, out=real).addcmul_(s, minus_beta)
        kept = slice(1, 1 + self.n_imag)
        torch.mul(c[..., kept, :], minus_beta[..., kept, :], out=imag).addcmul_(
            s[..., kept, :], alpha[..., kept, :], value=-1.0
        )
        if weights is not None:
            rows[0].mul_(weights)  # mass on the x profiles only: sum_a w_a Phi_y Phi_x
        return rows, c, s, alpha, minus_beta


class _FourierGaussianProjection(torch.autograd.Function):
    """positions (N, A, 2) in A, sigma (0-dim tensor, A), weights (A,) or None -> products (N, box, box):
    ``Y diag(w) X^T`` per render with ``Y, X (box, A)`` the real rows of the y and x profiles
    (``assemble_half_spectrum`` turns them into the half spectrum). Differentiable in the positions and
    sigma; the weights are constants."""

    @staticmethod
    def forward(ctx, positions, box: int, pixel_size: float, sigma, chunk: int, weights):
        first_center = -(box // 2) * pixel_size
        fractional = ((positions - first_center) / pixel_size).permute(2, 0, 1).contiguous()  # (2, N, A)
        weights = None if weights is None else weights.to(positions.dtype).contiguous()
        width_pixels = float(sigma.detach()) / pixel_size
        work = _Coefficients(box, width_pixels, fractional, chunk, backward=False)
        n_renders = positions.shape[0]
        products = positions.new_empty(n_renders, box, box)

        def project(lo: int, hi: int) -> None:
            rows = work.profiles(fractional[:, lo:hi], weights)[0]
            torch.bmm(rows[1], rows[0].transpose(1, 2), out=products[lo:hi])

        for_each_chunk(project, n_renders, chunk, positions.device)
        ctx.save_for_backward(fractional, weights)
        ctx.box, ctx.chunk, ctx.pixel_size, ctx.width_pixels = box, chunk, pixel_size, width_pixels
        ctx.sigma_needs_grad = sigma.requires_grad
        return products

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_products: torch.Tensor):
        fractional, weights = ctx.saved_tensors
        work = _Coefficients(ctx.box, ctx.width_pixels, fractional, ctx.chunk, backward=True)
        grad_products = grad_products.contiguous()
        n_renders = fractional.shape[1]
        n_freq, n_imag, n_alias = work.n_freq, work.n_imag, work.n_alias
        kept = slice(1, 1 + n_imag)
        grad_fractional = torch.empty_like(fractional)
        grad_width_parts = fractional.new_zeros(n_renders) if ctx.sigma_needs_grad else None

        def project_back(lo: int, hi: int) -> None:
            t = fractional[:, lo:hi]
            rows, c, s, alpha, beta = work.profiles(t, None)  # unweighted
            n_axes, size, n_atoms = t.shape
            grad = grad_products[lo:hi]
            grad_rows = work.view("grad_rows", n_axes, size, ctx.box, n_atoms)
            # products = Y W X^T  =>  dY = dP X W and dX = dP^T Y W (W = diag(masses) scales atoms).
            torch.bmm(grad, rows[0], out=grad_rows[1])
            torch.bmm(grad.transpose(1, 2), rows[1], out=grad_rows[0])
            if weights is not None:
                grad_rows.mul_(weights)
            real, grad_real = rows[..., :n_freq, :], grad_rows[..., :n_freq, :]
            imag, grad_imag = rows[..., n_freq:, :], grad_rows[..., n_freq:, :]
            # d Re/dt = 2 pi nu Im + (c alpha' - s beta');  d Im/dt = -2 pi nu Re - (s alpha' + c beta'), with
            # alpha' = sum_m -2 pi m sin(2 pi m t) G_m and beta' = sum_m 2 pi m cos(2 pi m t) G_m. Summed over
            # frequencies: sum_k 2 pi nu (gRe Im - gIm Re) + sum_m 2 pi m (-sin_m (G U)_m - cos_m (G V)_m)
            # with U = gRe c - gIm s and V = gRe s + gIm c.
            phase_term = torch.mul(grad_imag, real[..., kept, :]).neg_()
            phase_term.addcmul_(grad_real[..., kept, :], imag)
            through_phasor = work.two_pi_nu[kept].T @ phase_term  # (2, n, 1, A)
            shape = (n_axes, size, n_freq, n_atoms)
            u = torch.mul(grad_real, c, out=work.view("u", *shape))
            u[..., kept, :].addcmul_(grad_imag, s[..., kept, :], value=-1.0)
            v = torch.mul(grad_real, s, out=work.view("v", *shape))
            v[..., kept, :].addcmul_(grad_imag, c[..., kept, :])
            projected_u = work.g_and_ds @ u  # (2, n, 2 (2M+1), A): G U and dG/ds U
            projected_v = work.g_and_ds @ v
            alias_cos, alias_sin = work.alias_phases(t)
            alias_terms = alias_sin.mul(projected_u[..., :n_alias, :])
            alias_terms.addcmul_(alias_cos, projected_v[..., :n_alias, :]).neg_()
            through_alias = work.two_pi_m.T @ alias_terms  # (2, n, 1, A)
            grad_fractional[:, lo:hi] = through_phasor.add_(through_alias).squeeze(-2)
            if grad_width_parts is not None:
                # d Re/ds = c alpha_s - s beta_s, d Im/ds = -(s alpha_s + c beta_s), alpha_s, beta_s =
                # dG^T/ds cos, sin(2 pi m t): summed, sum_m cos_m (dG U)_m - sin_m (dG V)_m.
                width = alias_cos.mul(projected_u[..., n_alias:, :])
                width.addcmul_(alias_sin, projected_v[..., n_alias:, :], value=-1.0)
                grad_width_parts[lo:hi] = width.sum(dim=(0, 2, 3))

        for_each_chunk(project_back, n_renders, ctx.chunk, fractional.device)
        grad_positions = (grad_fractional / ctx.pixel_size).permute(1, 2, 0)
        grad_sigma = None if grad_width_parts is None else grad_width_parts.sum() / ctx.pixel_size
        return grad_positions, None, None, grad_sigma, None, None


def assemble_half_spectrum(products: torch.Tensor, box: int) -> torch.Tensor:
    """products (..., box, box) from ``_FourierGaussianProjection`` -> half spectrum (..., box, K) complex,
    ``torch.fft.rfft2`` layout (row = ky in FFT order, column = kx >= 0)."""
    n_freq = box // 2 + 1
    n_imag = box - n_freq
    pad = (1, n_freq - 1 - n_imag)  # Im columns/rows are k = 1..n_imag; zero at DC (and Nyquist)
    rr = products[..., :n_freq, :n_freq]
    ri = F.pad(products[..., :n_freq, n_freq:], pad)
    ir = F.pad(products[..., n_freq:, :n_freq], (0, 0, *pad))
    ii = F.pad(products[..., n_freq:, n_freq:], (*pad, *pad))
    # Phi_y Phi_x for ky >= 0; conj(Phi_y) Phi_x for ky < 0 (rows box - k for k = box - K .. 1).
    top = torch.complex(rr - ii, ri + ir)
    bottom = torch.complex(rr + ii, ri - ir)[..., 1 : n_imag + 1, :].flip(-2)
    return torch.cat([top, bottom], dim=-2)


def render_spectra(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    box: int,
    pixel_size: float,
    sigma: float | torch.Tensor = 1.0,
    weights: torch.Tensor | None = None,
    ctf_params: CTFParams | None = None,
) -> torch.Tensor:
    """Half spectra ``(..., box, box//2 + 1)`` complex: ``rfft2(render_projections(...))`` computed
    analytically, times the particle's CTF (``rfft_ctf``) when ``ctf_params`` is given.

    Arguments as ``render_projections`` (coords (..., A, 3) A, rotation (..., 3, 3), shift (..., 2) A,
    masses ``weights (A,)``, sigma a number or a 0-dim tensor); ``ctf_params.shape`` a prefix of the leading
    dims, as in ``render``. With the CTF this is the spectrum of the periodic (circular) convolution on the
    box, not of ``render``'s zero-padded one. Differentiable in coords, rotation, shift and a tensor sigma.
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
    products = _FourierGaussianProjection.apply(flat, box, float(pixel_size), sigma_t, chunk, weights)
    spectra = assemble_half_spectrum(products, box).reshape(*batch_shape, box, box // 2 + 1)
    if ctf_params is None:
        return spectra
    ctf = rfft_ctf(ctf_params.to(device=coords.device, dtype=coords.dtype), box, pixel_size)
    extra_dims = len(batch_shape) - len(ctf_params.shape)
    if extra_dims < 0:
        raise ValueError(f"CTF params of shape {tuple(ctf_params.shape)} for renders of {tuple(batch_shape)}")
    return spectra * ctf.reshape(*ctf.shape[:-2], *([1] * extra_dims), *ctf.shape[-2:])


def apply_periodic_ctf(images: torch.Tensor, params: CTFParams, pixel_size: float) -> torch.Tensor:
    """``images (B, K, H, W)`` circularly convolved with each particle's CTF on the box (no padding): the
    real-space image whose spectrum ``render_spectra`` gives."""
    ctf = rfft_ctf(params.to(dtype=images.dtype), images.shape[-1], pixel_size)[:, None]
    return torch.fft.irfft2(torch.fft.rfft2(images) * ctf, s=images.shape[-2:])


def _check() -> None:
    """Values and gradients (coordinates, width) against the real-space renderer, float64."""
    from scipy.spatial.transform import Rotation

    generator = torch.Generator().manual_seed(0)
    box, pixel_size = 24, 1.5
    coords = (3 * torch.randn(2, 3, 9, 3, generator=generator, dtype=torch.float64)).requires_grad_(True)
    rotation = torch.as_tensor(Rotation.random(6, random_state=1).as_matrix()).reshape(2, 3, 3, 3)
    shift = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64)
    sigma = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
    weights = 0.5 + torch.rand(9, generator=generator, dtype=torch.float64)
    defocus = torch.tensor([12000.0, 21000.0], dtype=torch.float64)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus + 400, astigmatism_angle=torch.tensor([30.0, 75.0]))
    probe = torch.randn(2, 3, box, box, generator=generator, dtype=torch.float64)
    real = apply_periodic_ctf(
        render_projections(coords, rotation, shift, box, pixel_size, sigma, weights), ctf, 1.5
    )
    fourier = render_spectra(coords, rotation, shift, box, pixel_size, sigma, weights, ctf)
    as_spectrum = torch.fft.rfft2(real)
    # The same scalar both ways: <probe, image> = Parseval on the half spectrum.
    real_value = (probe * real).sum()
    fourier_value = torch.fft.irfft2(fourier, s=(box, box)).mul(probe).sum()
    grads_real = torch.autograd.grad(real_value, (coords, sigma))
    grads_fourier = torch.autograd.grad(fourier_value, (coords, sigma))
    print(
        "max |spectrum difference| / max |spectrum|: "
        f"{float((fourier - as_spectrum).abs().max() / as_spectrum.abs().max()):.1e}; gradient differences: "
        + ", ".join(
            f"{float((a - b).abs().max() / b.abs().max()):.1e}"
            for a, b in zip(grads_fourier, grads_real, strict=True)
        )
    )
    check = torch.autograd.gradcheck(
        lambda c, s: torch.view_as_real(
            render_spectra(c[:1, :1, :4], rotation[:1, :1], shift[:1, :1], 16, 1.2, s)
        ),
        (coords.detach().clone().requires_grad_(True), sigma.detach().clone().requires_grad_(True)),
    )
    print(f"gradcheck: {check}")


def _time() -> None:
    import statistics
    import time

    from MDAnalysisTests.datafiles import PDB_small

    from atomvae.geometry.rotations import random_rotations
    from atomvae.model.vae import AtomVAE
    from atomvae.physics.ctf import apply_ctf
    from atomvae.structure.io import read_structure
    from atomvae.train.config import PRESETS

    torch.set_num_threads(1)
    structure = read_structure(PDB_small)
    model = AtomVAE(PRESETS["cpu"].model, structure.topology, structure.coords, 64, 1.5, 1.0)
    generator = torch.Generator().manual_seed(0)
    batch, renders = 64, 4
    coords = model.base_render_coords.expand(batch, renders, -1, -1).clone().requires_grad_(True)
    rotation = random_rotations(batch * renders, generator=generator).reshape(batch, renders, 3, 3)
    shift = torch.zeros(batch, renders, 2)
    defocus = 10000 + 15000 * torch.rand(batch, generator=generator)
    ctf = CTFParams(
        defocus_u=defocus, defocus_v=defocus + 300, astigmatism_angle=torch.full_like(defocus, 30.0)
    )
    sigma = torch.tensor(1.5, requires_grad=True)
    mass = model.render_mass

    def real_padded():
        apply_ctf(
            render_projections(coords, rotation, shift, 64, 1.5, sigma, mass), ctf, 1.5
        ).sum().backward()

    def real_periodic():
        apply_periodic_ctf(
            render_projections(coords, rotation, shift, 64, 1.5, sigma, mass), ctf, 1.5
        ).sum().backward()

    def fourier():
        torch.view_as_real(
            render_spectra(coords, rotation, shift, 64, 1.5, sigma, mass, ctf)
        ).sum().backward()

    cases = {
        "real space, padded CTF": real_padded,
        "real space, periodic CTF": real_periodic,
        "Fourier": fourier,
    }
    times = {name: [] for name in cases}
    for _ in range(5):
        for name, fn in cases.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    n_atoms = coords.shape[-2]
    for name, values in times.items():
        print(
            f"{name}: {1e6 * min(values) / (batch * renders):.0f} us per render forward + backward "
            f"({n_atoms} atoms, 1 thread, min process CPU time; "
            f"median {1e6 * statistics.median(values) / 256:.0f})"
        )


if __name__ == "__main__":
    _check()
    _time()
