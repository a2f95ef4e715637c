"""Simulator-only image formation: element electron scattering factors, projected potential, phase contrast.

The model's renderer draws every atom as one unit Gaussian of width 1 A; the simulator is richer on
purpose, so that synthetic data do not grade the model on its own forward model:

1. Each atom's electron scattering factor is Peng et al.'s five-Gaussian fit (L.-M. Peng, G. Ren,
   S. L. Dudarev, M. J. Whelan, "Robust parameterization of elastic and absorptive electron atomic
   scattering factors", Acta Cryst. A52, 257-276 (1996), Table 1, neutral atoms, fitted for
   0 <= s <= 2 1/A): ``f(s) = sum_i a_i exp(-b_i s^2)`` with ``s = sin(theta)/lambda = q/2``, a in A,
   b in A^2. A B-factor (A^2, Debye-Waller ``exp(-B s^2)``) is added to every ``b_i``.
2. The projected potential of one term is analytic: with ``h^2/(2 pi m0 e) = 47.878 V A^2`` (Kirkland,
   "Advanced Computing in Electron Microscopy", eq. 5.9),
   ``v_z(r) = 47.878 * a_i * (4 pi / b_i) * exp(-4 pi^2 r^2 / b_i)`` V*A, i.e. a 2D Gaussian of
   per-axis variance ``b_i / (8 pi^2)`` A^2 carrying ``47.878 * a_i`` V*A^3. It is separable in x and
   y, so each term is integrated exactly over every (sub-)pixel with erf differences (true pixel
   averaging, not point sampling) and the image is one matrix product per particle.
3. Phase ``phi = sigma(V) * v_z`` with the relativistic interaction constant sigma (rad/(V*A)).
4. The CTF (``physics.ctf.apply_ctf``, the same function and conventions as the model) acts on the
   potential sampled ``oversample`` times finer than the detector, and only then are the sub-pixels
   averaged into detector pixels. That is the physical order (optics first, then the detector
   integrates over its pixel area) and it lets the CTF act on frequencies above the detector's Nyquist
   that pixel averaging then aliases, as on a real camera; the model, by contrast, applies its CTF on
   the detector grid.

Polarity: the returned image is ``CTF (*) phi`` in radians with RELION's CTF (``ctf(0) = Q > 0``), so
low frequencies keep the sign of the projected density, the same polarity as the model's renderer
(the physical intensity is ``1 - 2 * image``; see ``physics.noise.shot_noise``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from atomvae.physics.ctf import CTFParams, apply_ctf, electron_wavelength
from atomvae.physics.grid import pixel_centers

# h^2 / (2 pi m0 e) in V*A^2: converts a scattering factor (A) into projected potential (V*A^3).
POTENTIAL_PER_SCATTERING_FACTOR = 47.878

ELECTRON_REST_ENERGY_KEV = 510.99895

# Half-width, in standard deviations of the widest Gaussian term, of the band of sub-pixels evaluated.
BAND_SIGMAS = 6.0

# Peng et al. (1996), Table 1 (0 <= s <= 2 1/A): element -> ((a1..a5) in A, (b1..b5) in A^2).
# Checked against two independent transcriptions (cryoJAX's constants table and Bsoft's
# scat_peng.star, whose carbon a1 has a dropped zero: 0.893 for 0.0893).
PENG1996: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    "N": ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    "O": ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    "F": ((0.1083, 0.3175, 0.6487, 0.5846, 0.1421), (0.2057, 1.3439, 4.2788, 11.3932, 28.7881)),
    "NA": ((0.2142, 0.6853, 0.7692, 1.6589, 1.4482), (0.3334, 2.3446, 10.0830, 48.3037, 138.2700)),
    "MG": ((0.2314, 0.6866, 0.9677, 2.1882, 1.1339), (0.3278, 2.2720, 10.9241, 39.2898, 101.9748)),
    "P": ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.8740, 8.5176, 24.3434, 63.2996)),
    "S": ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
    "CL": ((0.2443, 0.5397, 1.3919, 2.0197, 0.6621), (0.2468, 1.5242, 6.1537, 16.6687, 42.3086)),
    "K": ((0.4115, 1.4031, 2.2784, 2.6742, 2.2162), (0.3703, 3.3874, 13.1029, 68.9592, 194.4329)),
    "CA": ((0.4054, 1.3880, 2.1602, 3.7532, 2.2063), (0.3499, 3.0991, 11.9608, 53.9353, 142.3892)),
    "MN": ((0.3796, 1.2094, 1.7815, 2.5420, 1.5937), (0.2699, 2.0455, 7.4726, 31.0604, 91.5622)),
    "FE": ((0.3946, 1.2725, 1.7031, 2.3140, 1.4795), (0.2717, 2.0443, 7.6007, 29.9714, 86.2265)),
    "CO": ((0.4118, 1.3161, 1.6493, 2.1930, 1.2830), (0.2742, 2.0372, 7.7205, 29.9680, 84.9383)),
    "NI": ((0.3860, 1.1765, 1.5451, 2.0730, 1.3814), (0.2478, 1.7660, 6.3107, 25.2204, 74.3146)),
    "CU": ((0.4314, 1.3208, 1.5236, 1.4671, 0.8562), (0.2694, 1.9223, 7.3474, 28.9892, 90.6246)),
    "ZN": ((0.4288, 1.2646, 1.4472, 1.8294, 1.0934), (0.2593, 1.7998, 6.7500, 25.5860, 73.5284)),
    "SE": ((0.4477, 1.1678, 1.5843, 2.8087, 1.1956), (0.2405, 1.5442, 6.3231, 19.4610, 52.0233)),
}


def scattering_parameters(
    elements: Sequence[str] | np.ndarray, dtype: torch.dtype = torch.float64, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Peng 1996 parameters per atom: ``(a (A, 5) in A, b (A, 5) in A^2)``.

    ``elements`` are element symbols in any case ("C", "Se", "SE"). Unknown elements raise
    ``ValueError`` naming them (the caller knows which file they came from).
    """
    keys = [str(e).strip().upper() for e in elements]
    unknown = sorted({k for k in keys if k not in PENG1996})
    if unknown:
        raise ValueError(
            f"no Peng 1996 scattering factor for element(s) {', '.join(unknown) or repr('')}; "
            f"known: {', '.join(sorted(PENG1996))}"
        )
    table = np.array([PENG1996[k] for k in keys], dtype=np.float64).reshape(len(keys), 2, 5)
    a = torch.as_tensor(table[:, 0], dtype=dtype, device=device)
    b = torch.as_tensor(table[:, 1], dtype=dtype, device=device)
    return a, b


def scattering_factor(
    s: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bfactor: float = 0.0
) -> torch.Tensor:
    """``f(s) = sum_i a_i exp(-(b_i + B) s^2)`` in A; ``s (...)`` 1/A (sin(theta)/lambda); a, b ``(5,)``."""
    return (a * torch.exp(-(b + bfactor) * s[..., None] ** 2)).sum(-1)


def interaction_constant(voltage_kv: float | torch.Tensor) -> torch.Tensor:
    """Relativistic interaction constant sigma in rad/(V*A): ``2 pi / (lambda V) * (E0 + eV)/(2 E0 + eV)``."""
    voltage_kv = torch.as_tensor(voltage_kv, dtype=torch.float64)
    wavelength = electron_wavelength(voltage_kv)
    ratio = (ELECTRON_REST_ENERGY_KEV + voltage_kv) / (2 * ELECTRON_REST_ENERGY_KEV + voltage_kv)
    return 2 * math.pi / (wavelength * voltage_kv * 1e3) * ratio


def projected_potential(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    box: int,
    pixel_size: float,
    bfactor: float = 0.0,
    oversample: int = 1,
) -> torch.Tensor:
    """Pixel-averaged projected potential ``(B, box*oversample, box*oversample)`` in V*A.

    coords ``(B, A, 3)`` A (model frame), rotation ``(B, 3, 3)``, shift ``(B, 2)`` A (x, y), a and b
    ``(A, 5)`` Peng parameters (A, A^2), bfactor A^2 added to every b. The structure is rotated and
    shifted (``x_img = R x + (t, 0)``), projected along +z, and each Gaussian term is integrated
    exactly over every sub-pixel of size ``pixel_size / oversample`` (value = integral / area).
    Image axis 0 is y, axis 1 is x.
    """
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    dtype, device = coords.dtype, coords.device
    a = a.to(device=device, dtype=dtype)
    b = b.to(device=device, dtype=dtype) + bfactor
    xy = torch.einsum("bij,baj->bai", rotation[:, :2, :].to(dtype), coords) + shift[:, None, :].to(dtype)
    sigma = torch.sqrt(b / (8 * math.pi**2))  # (A, 5) per-axis std of each term, A
    n_sub = box * oversample
    step = pixel_size / oversample
    first_edge = float(pixel_centers(box, pixel_size, dtype=torch.float64)[0]) - pixel_size / 2
    # Each atom touches only the (2h+1)^2 sub-pixels within BAND_SIGMAS of its centre (the rest hold
    # < 1e-8 of its mass): its five terms are summed into one small patch, and the patches are
    # scatter-added into the image. A dense separable product would cost far more here.
    half_band = max(1, math.ceil(BAND_SIGMAS * float(sigma.max()) / step))
    width = 2 * half_band + 1
    band = torch.arange(width + 1, device=device)  # edges of sub-pixels start .. start+2h
    scale = 1.0 / (math.sqrt(2.0) * sigma)  # (A, 5)
    pad = width + 1  # margin so patches hanging over the box need no masking

    def axis_profiles(centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # centre (B, A) -> first sub-pixel (B, A) and each term's mass per band sub-pixel (B, A, 5, 2h+1)
        nearest = torch.floor((centre - first_edge) / step).long()
        start = (nearest - half_band).clamp(-pad, n_sub)
        edges = first_edge + (start[..., None] + band) * step  # (B, A, 2h+2) A
        cdf = 0.5 * torch.erf((edges[:, :, None, :] - centre[..., None, None]) * scale[None, :, :, None])
        return start, cdf[..., 1:] - cdf[..., :-1]

    start_x, profile_x = axis_profiles(xy[..., 0])
    start_y, profile_y = axis_profiles(xy[..., 1])
    weight = POTENTIAL_PER_SCATTERING_FACTOR * a / step**2  # (A, 5): V*A^3 per term / sub-pixel area
    # patch[y, x] = sum_t w_t py_t[y] px_t[x]: a (2h+1, 5) @ (5, 2h+1) product per atom
    patches = torch.matmul((profile_y * weight[None, :, :, None]).transpose(-1, -2), profile_x)
    # flat positions of every patch pixel in a padded (n_sub + 2 pad)^2 canvas
    side = n_sub + 2 * pad
    patch_offsets = band[:-1, None] * side + band[None, :-1]  # (2h+1, 2h+1)
    corner = (start_y + pad) * side + (start_x + pad)  # (B, A) flat position of each patch's corner
    canvas = torch.zeros(xy.shape[0], side * side, dtype=dtype, device=device)
    canvas.scatter_add_(1, (corner[..., None, None] + patch_offsets).flatten(1), patches.flatten(1))
    return canvas.reshape(-1, side, side)[:, pad : pad + n_sub, pad : pad + n_sub]


def bin_pixels(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``factor x factor`` blocks: ``(..., H*factor, W*factor) -> (..., H, W)`` (detector pixels)."""
    if factor == 1:
        return images
    *lead, h, w = images.shape
    blocks = images.reshape(*lead, h // factor, factor, w // factor, factor)
    return blocks.mean(dim=(-3, -1))


def phase_contrast_images(
    coords: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    ctf: CTFParams,
    box: int,
    pixel_size: float,
    bfactor: float = 0.0,
    oversample: int = 2,
    pad_factor: float = 2,
) -> torch.Tensor:
    """Noise-free detector images ``(B, box, box)`` in radians: ``bin(CTF (*) sigma * v_z)``.

    Arguments as in :func:`projected_potential`; ``ctf`` has shape ``(B,)`` (its voltage also sets the
    interaction constant). The CTF is applied on the oversampled grid (pixel ``pixel_size /
    oversample``), then sub-pixels are averaged into detector pixels (see the module docstring).
    """
    potential = projected_potential(coords, rotation, shift, a, b, box, pixel_size, bfactor, oversample)
    sigma = interaction_constant(ctf.voltage.detach().cpu().double()).to(potential)
    phase = potential * sigma.reshape(-1, 1, 1)
    contrast = apply_ctf(phase, ctf, pixel_size / oversample, pad_factor=pad_factor)
    return bin_pixels(contrast, oversample)
