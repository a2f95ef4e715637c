"""CTF values against an independent closed form (RELION ctf.h), torch-ctf, and a direct convolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch_ctf

from atomvae.physics import ctf as ctf_module
from atomvae.physics.ctf import CTFParams, apply_ctf, ctf_2d


def _params(n: int, seed: int, dtype=torch.float64, bfactor: bool = True) -> CTFParams:
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype)

    return CTFParams(
        defocus_u=uniform(8000.0, 25000.0),
        defocus_v=uniform(6000.0, 20000.0),
        astigmatism_angle=uniform(-180.0, 180.0),
        voltage=uniform(100.0, 300.0),
        spherical_aberration=uniform(0.0, 4.0),
        amplitude_contrast=uniform(0.0, 0.3),
        phase_shift=uniform(0.0, 90.0),
        bfactor=uniform(0.0, 120.0) if bfactor else torch.zeros(n, dtype=dtype),
    )


def _relion_ctf(p: dict[str, float], fx: float, fy: float) -> float:
    """RELION's CTF::getCTF written out with its own sign conventions (negative defocus, K3, K5)."""
    volts = p["voltage"] * 1e3
    wavelength = 12.2643247 / math.sqrt(volts * (1.0 + volts * 0.978466e-6))
    k1 = math.pi * wavelength
    k2 = math.pi / 2 * p["spherical_aberration"] * 1e7 * wavelength**3
    q = p["amplitude_contrast"]
    k3 = math.atan(q / math.sqrt(1 - q * q))
    k4 = -p["bfactor"] / 4.0
    k5 = math.radians(p["phase_shift"])
    defocus_average = -(p["defocus_u"] + p["defocus_v"]) / 2
    defocus_deviation = -(p["defocus_u"] - p["defocus_v"]) / 2
    ellipsoid_angle = math.atan2(fy, fx) - math.radians(p["astigmatism_angle"])
    delta_f = defocus_average + defocus_deviation * math.cos(2 * ellipsoid_angle)
    u2 = fx * fx + fy * fy
    argument = k1 * delta_f * u2 + k2 * u2 * u2 - k5 - k3
    return -math.sin(argument) * math.exp(k4 * u2)


def test_ctf_matches_relion_closed_form_at_frequencies():
    box, pixel_size = 24, 1.3
    params = _params(3, seed=0)
    values = ctf_2d(params, box, pixel_size, rfft=True)
    assert values.shape == (3, box, box // 2 + 1)
    # Include negative y frequencies, the x and y axes, the diagonal and the Nyquist corner.
    for iy, ix in [(0, 0), (0, 5), (5, 0), (3, 7), (21, 4), (12, 12), (17, 9), (7, 7), (19, 1)]:
        fy = (iy if iy < box - box // 2 else iy - box) / (box * pixel_size)
        fx = ix / (box * pixel_size)
        for n in range(3):
            p = {name: float(value[n]) for name, value in params.as_dict().items()}
            assert values[n, iy, ix].item() == pytest.approx(_relion_ctf(p, fx, fy), abs=1e-10)


def test_astigmatism_angle_is_measured_from_image_x_axis():
    # Along the direction at rlnDefocusAngle the defocus is dU; perpendicular to it, dV.
    params = CTFParams(torch.tensor(20000.0, dtype=torch.float64), 10000.0, 90.0, amplitude_contrast=0.0)
    values = ctf_2d(params, 32, 1.0, rfft=False)
    along_y = values[5, 0]  # frequency (ky=5, kx=0): angle 90 deg
    along_x = values[0, 5]
    s2 = (5 / 32) ** 2
    wavelength = 0.019687615309233575
    cs_term = 0.5 * math.pi * 2.7e7 * wavelength**3 * s2 * s2
    assert along_y.item() == pytest.approx(math.sin(math.pi * wavelength * 20000.0 * s2 - cs_term), abs=1e-10)
    assert along_x.item() == pytest.approx(math.sin(math.pi * wavelength * 10000.0 * s2 - cs_term), abs=1e-10)


def test_matches_torch_ctf_under_documented_mapping():
    params = _params(4, seed=1, bfactor=False)
    mine = ctf_2d(params, 40, 1.1, rfft=True)
    # torch-ctf takes sqrt(astigmatism): it must be >= 0, so dU < dV becomes a 90 degree turn.
    swapped = params.defocus_u < params.defocus_v
    assert swapped.any() and (~swapped).any()
    theirs = torch_ctf.calculate_ctf_2d(
        defocus=(params.defocus_u + params.defocus_v) / 2e4,  # um
        astigmatism=(params.defocus_u - params.defocus_v).abs() / 2e4,
        astigmatism_angle=params.astigmatism_angle + 90.0 * swapped,
        voltage=params.voltage,
        spherical_aberration=params.spherical_aberration,
        amplitude_contrast=params.amplitude_contrast,
        phase_shift=params.phase_shift,
        pixel_size=1.1,
        image_shape=(40, 40),
        rfft=True,
        fftshift=False,
    )
    # torch-ctf computes in float32; phases reach ~1e3 rad here, hence the tolerance.
    torch.testing.assert_close(theirs.double(), mine, atol=5e-3, rtol=0)


def test_full_grid_is_hermitian_and_contains_rfft_grid():
    params = _params(2, seed=2)
    full = ctf_2d(params, (15, 20), 1.5, rfft=False)
    half = ctf_2d(params, (15, 20), 1.5, rfft=True)
    torch.testing.assert_close(full[..., : 20 // 2], half[..., : 20 // 2])
    # Nyquist column: +1/2 in the rfft layout, -1/2 in the full one, so f(ky, 1/2) = f(-ky, -1/2)
    # (odd height: no y Nyquist row that would map onto itself).
    torch.testing.assert_close(half[..., 20 // 2], torch.roll(torch.flip(full[..., 20 // 2], (-1,)), 1, -1))
    odd = ctf_2d(params, (15, 21), 1.5, rfft=False)  # odd sizes: every -k is on the grid
    flipped = torch.roll(torch.flip(odd, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # f(-k)
    torch.testing.assert_close(flipped, odd)


def _direct_convolution(image: np.ndarray, kernel_wrapped: np.ndarray) -> np.ndarray:
    """Linear convolution with the kernel's lags -(H-1)..H-1 laid out explicitly: no wrap-around."""
    height, width = image.shape
    lags_y = np.arange(-(height - 1), height)
    lags_x = np.arange(-(width - 1), width)
    centred = kernel_wrapped[np.ix_(lags_y % kernel_wrapped.shape[0], lags_x % kernel_wrapped.shape[1])]
    full = scipy.signal.convolve2d(image, centred, mode="full")
    return full[height - 1 : 2 * height - 1, width - 1 : 2 * width - 1]


@pytest.mark.parametrize(("shape", "pad_factor"), [((12, 12), 2), ((9, 14), 2), ((9, 14), 2.5)])
# rfft2/irfft2 path; paired complex path (3: the last render with a zero partner)
@pytest.mark.parametrize("renders_per_ctf", [1, 2, 3])
def test_padded_fft_equals_direct_real_space_convolution(shape, pad_factor, renders_per_ctf):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, renders_per_ctf, *shape, generator=g, dtype=torch.float64)
    params = _params(2, seed=4)
    pixel_size = 2.0
    result = apply_ctf(images, params, pixel_size, pad_factor=pad_factor)
    padded = (math.ceil(pad_factor * shape[0]), math.ceil(pad_factor * shape[1]))
    kernels = torch.fft.irfft2(ctf_2d(params, padded, pixel_size), s=padded)
    for n in range(2):
        for r in range(renders_per_ctf):
            expected = _direct_convolution(images[n, r].numpy(), kernels[n].numpy())
            np.testing.assert_allclose(result[n, r].numpy(), expected, atol=1e-12)


def test_padding_removes_wrap_around():
    # A point at the right edge must not leak onto the left edge of the image.
    image = torch.zeros(1, 16, 16, dtype=torch.float64)
    image[0, 8, 15] = 1.0
    params = CTFParams(torch.tensor([20000.0], dtype=torch.float64), 20000.0)
    padded = apply_ctf(image, params, 3.0, pad_factor=2)
    kernel = torch.fft.irfft2(ctf_2d(params, (32, 32), 3.0), s=(32, 32))[0]
    # Output at column j receives kernel lag j - 15 (negative): wrapped index (j - 15) % 32.
    expected_row = kernel[0, (torch.arange(16) - 15) % 32]
    torch.testing.assert_close(padded[0, 8], expected_row)


@pytest.mark.parametrize("pairs_per_block", [16, 1])  # one block; blocks across particles and renders
def test_one_ctf_per_particle_is_shared_by_its_renders(pairs_per_block, monkeypatch):
    monkeypatch.setattr(ctf_module, "PAIRS_PER_BLOCK", pairs_per_block)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(3, 4, 10, 10, generator=g, dtype=torch.float64)
    params = _params(3, seed=6)
    together = apply_ctf(images, params, 1.7)
    for b in range(3):
        alone = apply_ctf(images[b], params.index(b), 1.7)
        torch.testing.assert_close(together[b], alone)


@pytest.mark.parametrize(("renders_per_ctf", "pairs_per_block"), [(1, 16), (2, 16), (4, 1), (3, 1)])
def test_apply_ctf_gradcheck_and_float32(renders_per_ctf, pairs_per_block, monkeypatch):
    monkeypatch.setattr(ctf_module, "PAIRS_PER_BLOCK", pairs_per_block)  # (4, 1): 4 blocks, maybe threaded
    g = torch.Generator().manual_seed(7)
    images = torch.randn(2, renders_per_ctf, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    params = _params(2, seed=8)
    assert torch.autograd.gradcheck(lambda x: apply_ctf(x, params, 1.5), (images,))
    out32 = apply_ctf(images.detach().float(), params, 1.5)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), apply_ctf(images.detach(), params, 1.5), atol=1e-5, rtol=0)


def test_gradient_in_ctf_parameters():
    g = torch.Generator().manual_seed(9)
    images = torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64)
    base = _params(2, seed=10)
    defocus = base.defocus_u.clone().requires_grad_(True)

    def convolve(defocus_u):
        params = CTFParams(**{**base.as_dict(), "defocus_u": defocus_u})
        return apply_ctf(images, params, 1.5)

    assert torch.autograd.gradcheck(convolve, (defocus,))


def test_ctf_params_container():
    params = CTFParams(torch.tensor([1e4, 2e4]), 1.5e4, bfactor=10.0)
    assert params.shape == (2,) and params.dtype == torch.float32
    assert params.defocus_v.tolist() == [1.5e4, 1.5e4]
    assert params.index(1).defocus_u.item() == 2e4
    stacked = CTFParams.stack([params, params])
    assert stacked.shape == (2, 2)
    assert CTFParams.cat([params, params.index(slice(0, 1))]).shape == (3,)
    assert params.to(dtype=torch.float64).voltage.dtype == torch.float64
    with pytest.raises(ValueError, match="pad_factor"):
        apply_ctf(torch.zeros(4, 4), params.index(0), 1.0, pad_factor=1.5)


def test_phase_flip_undoes_contrast_reversals_and_is_an_involution():
    from atomvae.physics.ctf import phase_flip

    generator = torch.Generator().manual_seed(8)
    images = torch.randn(3, 32, 32, generator=generator, dtype=torch.float64)
    params = CTFParams(
        defocus_u=torch.tensor([8000.0, 15000.0, 25000.0], dtype=torch.float64),
        defocus_v=torch.tensor([8200.0, 15000.0, 24000.0], dtype=torch.float64),
        astigmatism_angle=torch.tensor([10.0, 0.0, 70.0], dtype=torch.float64),
    )
    torch.testing.assert_close(phase_flip(phase_flip(images, params, 1.5), params, 1.5), images)
    # A phase-flipped CTF-modulated image has a non-negative transfer: |CTF| (periodic convolution; the
    # Nyquist column, where the astigmatic CTF is not Hermitian, is left out).
    spectrum = torch.fft.rfft2(images)
    ctf = ctf_2d(params, 32, 1.5)
    modulated = torch.fft.irfft2(spectrum * ctf, s=(32, 32))
    flipped = torch.fft.rfft2(phase_flip(modulated, params, 1.5))
    torch.testing.assert_close(flipped[..., :-1], (spectrum * ctf.abs())[..., :-1])
