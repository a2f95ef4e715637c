"""The contrast transfer function in RELION's conventions, and its application by padded FFT.

Conventions (RELION ``ctf.h``), with ``s`` the spatial frequency in 1/A and ``theta`` its angle from the
image x axis (image axis 1), counter-clockwise towards +y (image axis 0):

- ``defocus(theta) = 0.5 * (dU + dV + (dU - dV) * cos(2 * (theta - angle)))``, defocus positive for
  underfocus, ``angle`` = rlnDefocusAngle in degrees.
- wavelength ``lambda = 12.2643247 / sqrt(V * (1 + 0.978466e-6 * V))`` A (relativistic, V in volts).
- ``chi(s) = pi * lambda * defocus(theta) * s^2 - pi/2 * Cs * lambda^3 * s^4 + phase_shift``
  with Cs converted from mm to A.
- amplitude contrast ``Q`` enters as the phase ``arctan(Q / sqrt(1 - Q^2))`` (RELION's K3), so
  ``ctf = sin(chi + arctan(Q / sqrt(1 - Q^2))) = sqrt(1 - Q^2) sin(chi) + Q cos(chi)``;
  ``ctf(0) = Q > 0``, i.e. the low-frequency image keeps the sign of the projected density.
- B-factor envelope ``exp(-B * s^2 / 4)``.

Why not torch-ctf: ``torch_ctf.calculate_ctf_2d`` gives the same values (to its float32 precision)
under the mapping ``defocus = (dU + dV) / 2e4`` um, ``astigmatism = |dU - dV| / 2e4`` um and
``astigmatism_angle = angle`` deg, plus 90 deg when ``dU < dV`` (it takes ``sqrt(astigmatism)``, NaN
for negative values); its angle, like RELION's, is measured from the x = image axis 1 direction
(pinned by ``tests/test_ctf.py::test_matches_torch_ctf_under_documented_mapping``). But it computes
in float32 whatever the input dtype, has no B-factor envelope, and rebuilds its frequency grids on
every call, while training evaluates a CTF per particle on a 2x padded grid for every batch. The
closed form here caches the CTF-independent grids per (shape, pixel size, device, dtype), follows the
input dtype (float64 gradient checks) and costs one ``sin`` per frequency.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

_FIELDS = (
    "defocus_u",
    "defocus_v",
    "astigmatism_angle",
    "voltage",
    "spherical_aberration",
    "amplitude_contrast",
    "phase_shift",
    "bfactor",
)


@dataclasses.dataclass(frozen=True)
class CTFParams:
    """Per-particle CTF parameters; every field is a tensor of the same shape ``(...)``.

    defocus_u, defocus_v: A (positive = underfocus; RELION rlnDefocusU/V).
    astigmatism_angle: degrees (rlnDefocusAngle), from the image x axis.
    voltage: kV. spherical_aberration: mm. amplitude_contrast: fraction in [0, 1).
    phase_shift: degrees (rlnPhaseShift). bfactor: A^2 (rlnCtfBfactor), envelope exp(-B s^2 / 4).

    Python numbers are accepted and everything is broadcast to one shape and one floating dtype on
    the device of the first tensor given.
    """

    # Plain-number defaults are converted to tensors by __post_init__, so after construction every
    # field is a tensor; the ignores let the annotations say so.
    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    astigmatism_angle: torch.Tensor = 0.0  # type: ignore[assignment]
    voltage: torch.Tensor = 300.0  # type: ignore[assignment]
    spherical_aberration: torch.Tensor = 2.7  # type: ignore[assignment]
    amplitude_contrast: torch.Tensor = 0.1  # type: ignore[assignment]
    phase_shift: torch.Tensor = 0.0  # type: ignore[assignment]
    bfactor: torch.Tensor = 0.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        values = [getattr(self, name) for name in _FIELDS]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        device = tensors[0].device if tensors else None
        float_dtypes = [v.dtype for v in tensors if v.is_floating_point()]
        dtype = functools.reduce(torch.promote_types, float_dtypes) if float_dtypes else None
        dtype = dtype or torch.get_default_dtype()
        converted = [torch.as_tensor(v, device=device, dtype=dtype) for v in values]
        converted = torch.broadcast_tensors(*converted)
        for name, value in zip(_FIELDS, converted, strict=True):
            object.__setattr__(self, name, value)

    @property
    def shape(self) -> torch.Size:
        return self.defocus_u.shape

    @property
    def device(self) -> torch.device:
        return self.defocus_u.device

    @property
    def dtype(self) -> torch.dtype:
        return self.defocus_u.dtype

    def _map(self, fn) -> CTFParams:
        return CTFParams(**{name: fn(getattr(self, name)) for name in _FIELDS})

    def index(self, i) -> CTFParams:
        """Select particles: ``i`` is anything a tensor accepts as an index (int, slice, index tensor)."""
        return self._map(lambda t: t[i])

    __getitem__ = index

    def __len__(self) -> int:
        return len(self.defocus_u)

    def to(self, device=None, dtype: torch.dtype | None = None) -> CTFParams:
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def reshape(self, *shape) -> CTFParams:
        return self._map(lambda t: t.reshape(*shape))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _FIELDS}

    @staticmethod
    def stack(params: Sequence[CTFParams], dim: int = 0) -> CTFParams:
        return CTFParams(**{n: torch.stack([getattr(p, n) for p in params], dim) for n in _FIELDS})

    @staticmethod
    def cat(params: Sequence[CTFParams], dim: int = 0) -> CTFParams:
        return CTFParams(**{n: torch.cat([getattr(p, n) for p in params], dim) for n in _FIELDS})


def electron_wavelength(voltage_kv: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength in A for an acceleration voltage in kV (RELION's constants)."""
    volts = voltage_kv * 1e3
    return 12.2643247 / torch.sqrt(volts * (1.0 + volts * 0.978466e-6))


@functools.lru_cache(maxsize=32)
def _frequency_grids(
    shape: tuple[int, int], pixel_size: float, rfft: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CTF-independent grids (H, Wf): s^2, s^4, s^2 cos(2 theta), s^2 sin(2 theta), s in 1/A."""
    height, width = shape
    # Built in float64 and then cast, so float32 grids carry no accumulated rounding.
    ky = torch.fft.fftfreq(height, d=pixel_size, dtype=torch.float64)[:, None]
    if rfft:
        kx = torch.fft.rfftfreq(width, d=pixel_size, dtype=torch.float64)[None, :]
    else:
        kx = torch.fft.fftfreq(width, d=pixel_size, dtype=torch.float64)[None, :]
    s2 = kx**2 + ky**2
    # s^2 cos(2 theta) = kx^2 - ky^2 and s^2 sin(2 theta) = 2 kx ky: no angles needed.
    grids = (s2, s2**2, kx**2 - ky**2, 2 * kx * ky)
    return tuple(g.to(device=device, dtype=dtype).contiguous() for g in grids)


def ctf_2d(
    params: CTFParams, box: int | tuple[int, int], pixel_size: float, rfft: bool = True
) -> torch.Tensor:
    """CTF values on the FFT grid of a ``box`` image: ``(..., box, box//2+1)`` (rfft) or ``(..., box, box)``.

    Unshifted FFT layout (zero frequency at [0, 0]), axis 0 = y frequency, axis 1 = x frequency; the
    leading dims are ``params.shape``. ``box`` may be ``(height, width)`` for non-square grids.
    """
    shape = (box, box) if isinstance(box, int) else (int(box[0]), int(box[1]))
    s2, s4, s2cos, s2sin = _frequency_grids(shape, float(pixel_size), rfft, params.device, params.dtype)

    def per_particle(t: torch.Tensor) -> torch.Tensor:
        return t[..., None, None]

    wavelength = electron_wavelength(params.voltage)
    angle = torch.deg2rad(params.astigmatism_angle)
    mean_defocus = 0.5 * (params.defocus_u + params.defocus_v)
    half_difference = 0.5 * (params.defocus_u - params.defocus_v)
    k1 = math.pi * wavelength
    k2 = 0.5 * math.pi * (params.spherical_aberration * 1e7) * wavelength**3
    q = params.amplitude_contrast
    constant_phase = torch.deg2rad(params.phase_shift) + torch.atan(q / torch.sqrt(1.0 - q * q))
    # pi*lambda*defocus(theta)*s^2 with defocus(theta) expanded in cos/sin of 2*theta.
    chi = (
        per_particle(k1 * mean_defocus) * s2
        + per_particle(k1 * half_difference * torch.cos(2 * angle)) * s2cos
        + per_particle(k1 * half_difference * torch.sin(2 * angle)) * s2sin
        - per_particle(k2) * s4
        + per_particle(constant_phase)
    )
    ctf = torch.sin(chi)
    if bool((params.bfactor != 0).any()):
        ctf = ctf * torch.exp(-0.25 * per_particle(params.bfactor) * s2)
    return ctf


def apply_ctf(
    images: torch.Tensor, params: CTFParams, pixel_size: float, pad_factor: float = 2
) -> torch.Tensor:
    """Convolve ``images (..., H, W)`` with each particle's CTF; returns ``(..., H, W)``.

    Zero-pads to ``ceil(pad_factor * H) x ceil(pad_factor * W)`` (``pad_factor >= 2``, so the linear
    convolution does not wrap around), multiplies the spectrum by the CTF of that padded grid,
    inverts and crops the top-left ``H x W``: a real-space convolution with the kernel
    ``irfft2(ctf_2d(params, padded))``. ``params.shape`` must match (or broadcast against) the leading
    dims of ``images``; image dims beyond it share the particle's CTF, e.g. ``images (B, K, H, W)``
    with ``params (B,)``: each particle's CTF is computed once and applied to its K renders.

    With more than one render per CTF (training, the conformation search; an odd count gets a zero
    partner) and no gradient wanted for the CTF parameters, two renders of a particle travel as the real
    and imaginary parts of one complex image (``_PairedCTF``: one complex FFT pair per two renders, and
    no slow c2r transform); otherwise rfft2/irfft2. Both give the same numbers. Differentiable in
    ``images`` (and in the CTF parameters on the second path).
    """
    if pad_factor < 2:
        raise ValueError(f"pad_factor must be >= 2 to avoid wrap-around, got {pad_factor}")
    height, width = images.shape[-2:]
    padded = (math.ceil(pad_factor * height), math.ceil(pad_factor * width))
    batch_dims = images.dim() - 2
    if len(params.shape) > batch_dims:
        raise ValueError(f"CTF params of shape {tuple(params.shape)} for images of {tuple(images.shape)}")
    if params.device != images.device or params.dtype != images.dtype:
        params = params.to(device=images.device, dtype=images.dtype)
    n_param_dims = len(params.shape)
    particle_shape = torch.broadcast_shapes(params.shape, images.shape[:n_param_dims])
    render_shape = images.shape[n_param_dims:batch_dims]
    renders_per_ctf = math.prod(render_shape)
    params_need_grad = any(t.requires_grad for t in params.as_dict().values())
    ctf = ctf_2d(params, padded, pixel_size, rfft=True)
    if renders_per_ctf > 1 and not params_need_grad:
        spectrum = _full_spectrum(ctf, padded).expand(*particle_shape, *padded).reshape(-1, 1, *padded)
        stacked = images.expand(*particle_shape, *images.shape[n_param_dims:])
        stacked = stacked.reshape(spectrum.shape[0], renders_per_ctf, height, width)
        if renders_per_ctf % 2:
            # An odd count (the conformation search's candidates) gets a zero render as the last one's
            # partner: one extra complex FFT pair per particle is far cheaper than the c2r path (~5x
            # slower than r2c in pocketfft at 128 x 128).
            stacked = torch.cat([stacked, stacked.new_zeros(stacked.shape[0], 1, height, width)], dim=1)
        out = _PairedCTF.apply(stacked, spectrum)[:, :renders_per_ctf]
        return out.reshape(*particle_shape, *render_shape, height, width)
    ctf = ctf.reshape(*params.shape, *([1] * len(render_shape)), *ctf.shape[-2:])
    convolved = torch.fft.irfft2(torch.fft.rfft2(images, s=padded) * ctf, s=padded)
    return convolved[..., :height, :width]


def gaussian_blur(images: torch.Tensor, sigma: float | torch.Tensor, pixel_size: float) -> torch.Tensor:
    """images (..., H, W) convolved (circularly, through the FFT) with a unit-mass 2D Gaussian of standard
    deviation ``sigma`` A: the blur a render gains when every atom's width grows from s to sqrt(s^2 +
    sigma^2), so data blurred this way match renders blurred that way (the CTF commutes with both)."""
    if float(sigma) == 0.0:
        return images
    s2 = _frequency_grids(tuple(images.shape[-2:]), float(pixel_size), True, images.device, images.dtype)[0]
    transfer = torch.exp(-2.0 * math.pi**2 * torch.as_tensor(sigma, dtype=images.dtype) ** 2 * s2)
    return torch.fft.irfft2(torch.fft.rfft2(images) * transfer, s=images.shape[-2:])


def rfft_ctf(params: CTFParams, box: int | tuple[int, int], pixel_size: float) -> torch.Tensor:
    """The CTF as a multiplier of ``rfft2`` spectra of ``box`` images: ``(..., H, W//2 + 1)``, leading dims
    ``params.shape``: ``ctf_2d`` on the half grid, with an even width's Nyquist column replaced by its even
    part in ky.

    That column stands for both +x and -x Nyquist frequencies; under astigmatism the CTF there is not even
    in y, and irfft2 would silently keep only part of it. With its even part (as ``_full_spectrum`` does)
    ``ctf * rfft2(image)`` is the exact spectrum of the real image ``irfft2(ctf * rfft2(image))``.
    """
    height, width = (box, box) if isinstance(box, int) else (int(box[0]), int(box[1]))
    ctf = ctf_2d(params, (height, width), pixel_size, rfft=True)
    if width % 2 == 0:
        mirrored_rows = (-torch.arange(height, device=ctf.device)) % height
        nyquist = 0.5 * (ctf[..., -1] + ctf[..., mirrored_rows, -1])
        ctf = torch.cat([ctf[..., :-1], nyquist[..., None]], dim=-1)
    return ctf


def phase_flip(images: torch.Tensor, params: CTFParams, pixel_size: float) -> torch.Tensor:
    """``images (B, H, W)`` with each Fourier component multiplied by the sign of its particle's CTF.

    Undoes the CTF's contrast reversals without amplifying noise (the noise stays white): what the
    encoder sees then looks alike across defoci, so it need not learn the CTF (RELION and cryoSPARC
    phase-flip for the same reason). Periodic (no padding): the encoder only needs a consistent view.
    Applied twice it is the identity wherever the CTF is not exactly zero.
    """
    height, width = images.shape[-2:]
    if params.device != images.device or params.dtype != images.dtype:
        params = params.to(device=images.device, dtype=images.dtype)
    ctf = rfft_ctf(params, (height, width), pixel_size)
    return torch.fft.irfft2(torch.fft.rfft2(images) * torch.sign(ctf), s=(height, width))


def _full_spectrum(ctf: torch.Tensor, padded: tuple[int, int]) -> torch.Tensor:
    """The full-grid (..., Hp, Wp) spectrum that irfft2 implies for a half-grid ``ctf (..., Hp, Wf)``.

    Columns beyond the half grid are the Hermitian mirror ``C(-ky, -kx)``; irfft2 keeps only the real
    part of the DC and (even length) Nyquist columns after the y transform, i.e. their part even in
    ky. The result is real and even, so its kernel is real and even too.
    """
    padded_height, padded_width = padded
    n_freq = padded_width // 2 + 1
    negative_rows = (-torch.arange(padded_height, device=ctf.device)) % padded_height
    mirrored = ctf[..., negative_rows, :]  # C(-ky, kx)
    half = 0.5 * (ctf + mirrored)  # equal to ctf except in the Nyquist column
    if padded_width % 2 == 0:
        half = torch.cat([ctf[..., : n_freq - 1], half[..., n_freq - 1 :]], dim=-1)
    else:
        half = ctf
    return torch.cat([half, mirrored[..., 1 : padded_width - n_freq + 1].flip(-1)], dim=-1)


def for_each_chunk(work, n_items: int, chunk: int, device: torch.device) -> None:
    """Run ``work(lo, hi)`` over chunks; on a multi-threaded CPU, on one Python thread per torch
    thread with torch single-threaded meanwhile.

    Shared by the renderer and the CTF. Every chunk is a dozen short operations; with intra-op threads
    each ends in an OpenMP barrier, and when other processes hold a core the barrier waits a whole time
    slice (renders several times slower on a shared machine: BENCHMARKS.md, section "Renderer").
    Independent single-threaded chunks never wait.
    """
    starts = range(0, n_items, chunk)
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or len(starts) <= 1:
        for lo in starts:
            work(lo, min(lo + chunk, n_items))
        return
    grad_enabled = torch.is_grad_enabled()  # thread-local: the workers must see the caller's mode

    def run(lo: int) -> None:
        with torch.set_grad_enabled(grad_enabled):
            work(lo, min(lo + chunk, n_items))

    torch.set_num_threads(1)  # global: also makes MKL's matmuls sequential in the workers
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(run, starts):
                pass  # iterating re-raises a worker's exception
    finally:
        torch.set_num_threads(threads)


PAIRS_PER_BLOCK = 16  # 2 MB of padded complex arrays per block at 64 px: cache-sized, no page faults


class _PairedCTF(torch.autograd.Function):
    """images (P, R, H, W), R even, and full spectra (P, 1, Hp, Wp) -> (P, R, H, W).

    The kernel is real, so convolving ``a + i b`` convolves ``a`` and ``b`` separately: renders 2j
    and 2j+1 of a particle share one complex FFT and one inverse. The operator is self-adjoint (the
    kernel is real and even), so backward applies it to the gradient; nothing but the spectra is
    kept for backward.
    """

    @staticmethod
    def forward(ctx, images: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(spectrum)
        return _PairedCTF.convolve(images, spectrum)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (spectrum,) = ctx.saved_tensors
        return _PairedCTF.convolve(grad_out, spectrum), None

    @staticmethod
    def convolve(images: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        # Blocks of ~PAIRS_PER_BLOCK pairs keep the padded complex arrays (128 kB per pair at 64 px) in
        # cache instead of page-faulting fresh tens of MB per call.
        n_particles, n_renders = images.shape[:2]
        pairs = n_renders // 2
        particles_per_block = max(1, PAIRS_PER_BLOCK // pairs)
        renders_per_block = 2 * min(pairs, PAIRS_PER_BLOCK)
        out = torch.empty_like(images)
        blocks_per_particle = -(-n_renders // renders_per_block)

        def block(lo: int, hi: int) -> None:
            for index in range(lo, hi):
                particle, render = divmod(index, blocks_per_particle)
                p, r = particle * particles_per_block, render * renders_per_block
                out[p : p + particles_per_block, r : r + renders_per_block] = _PairedCTF.convolve_block(
                    images[p : p + particles_per_block, r : r + renders_per_block],
                    spectrum[p : p + particles_per_block],
                )

        n_blocks = -(-n_particles // particles_per_block) * blocks_per_particle
        for_each_chunk(block, n_blocks, 1, images.device)
        return out

    @staticmethod
    def convolve_block(images: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        n_particles, n_renders, height, width = images.shape
        packed = torch.complex(images[:, 0::2], images[:, 1::2])  # (P, R/2, H, W)
        transformed = torch.fft.fft2(packed, s=spectrum.shape[-2:])
        convolved = torch.fft.ifft2(transformed.mul_(spectrum))[..., :height, :width]
        pairs = torch.view_as_real(convolved)  # (P, R/2, H, W, 2): (render 2j, render 2j+1)
        return pairs.permute(0, 1, 4, 2, 3).reshape(n_particles, n_renders, height, width)
