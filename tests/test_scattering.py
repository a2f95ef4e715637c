"""Simulator physics: Peng form factors, projected potential vs brute force and Fourier transform, noise."""

from __future__ import annotations

import math

import pytest
import torch

from atomvae.physics import noise, scattering
from atomvae.physics.ctf import CTFParams
from atomvae.physics.grid import pixel_centers


def _one_atom(position, element="C", dtype=torch.float64):
    coords = torch.tensor([[position]], dtype=dtype)
    a, b = scattering.scattering_parameters([element], dtype=dtype)
    eye = torch.eye(3, dtype=dtype)[None]
    return coords, a, b, eye


def test_table_has_required_elements_and_sane_f0():
    for element in ["H", "C", "N", "O", "S", "P", "Se", "Fe", "Zn", "Mg", "Ca", "Na", "Cl", "K"]:
        a, b = scattering.scattering_parameters([element])
        assert a.shape == (1, 5) and (b > 0).all()
    # f(0) = sum(a): Peng 1996 gives C 2.5088, O 1.9834 (hand sums of the table rows)
    a, _ = scattering.scattering_parameters(["C", "O"])
    assert a.sum(-1).tolist() == pytest.approx([2.5088, 1.9834], abs=1e-4)
    with pytest.raises(ValueError, match="XX"):
        scattering.scattering_parameters(["C", "Xx"])


def test_interaction_constant_matches_kirkland():
    # Kirkland (2010) tabulates sigma = 0.000653 rad/(V A) at 300 kV and 0.000729 at 200 kV
    assert float(scattering.interaction_constant(300.0)) == pytest.approx(6.526e-4, rel=2e-3)
    assert float(scattering.interaction_constant(200.0)) == pytest.approx(7.288e-4, rel=2e-3)


@pytest.mark.parametrize("oversample", [1, 3])
def test_pixel_values_match_brute_force_quadrature(oversample):
    """Each sub-pixel holds the average of the analytic projected potential over its area."""
    box, pixel = 8, 1.0
    bfactor = 10.0
    coords, a, b, eye = _one_atom([0.3, -0.7, 2.0], "O")
    image = scattering.projected_potential(
        coords, eye, torch.zeros(1, 2, dtype=torch.float64), a, b, box, pixel, bfactor, oversample
    )[0]
    # brute force: 40x40-point midpoint rule per sub-pixel of v_z = C a (4 pi / b) exp(-4 pi^2 r^2 / b)
    sub = pixel / oversample
    edges0 = float(pixel_centers(box, pixel, dtype=torch.float64)[0]) - pixel / 2
    n = 40
    offsets = (torch.arange(n, dtype=torch.float64) + 0.5) / n * sub
    bb = b[0] + bfactor
    for iy, ix in [(4, 4), (3, 4), (5, 2), (0, 0)]:
        iy_sub, ix_sub = iy * oversample, ix * oversample
        y = edges0 + iy_sub * sub + offsets
        x = edges0 + ix_sub * sub + offsets
        r2 = (x[None, :] - 0.3) ** 2 + (y[:, None] + 0.7) ** 2
        v = (
            scattering.POTENTIAL_PER_SCATTERING_FACTOR
            * a[0, :, None, None]
            * (4 * math.pi / bb[:, None, None])
            * torch.exp(-4 * math.pi**2 * r2[None] / bb[:, None, None])
        ).sum(0)
        assert float(image[iy_sub, ix_sub]) == pytest.approx(float(v.mean()), rel=1e-3, abs=1e-9)


def test_fourier_transform_is_the_scattering_factor():
    """2D FT of the projected potential = 47.878 * f(q/2) * pixel-box sinc (Fourier slice theorem)."""
    box, pixel = 128, 0.25
    coords, a, b, eye = _one_atom([0.0, 0.0, 0.0], "N")
    # B = 20 A^2 makes the aliased copies beyond Nyquist (2 1/A) negligible (exp(-20) and below)
    image = scattering.projected_potential(
        coords, eye, torch.zeros(1, 2, dtype=torch.float64), a, b, box, pixel, bfactor=20.0
    )
    spectrum = torch.fft.fft2(torch.fft.ifftshift(image[0])) * pixel**2
    freqs = torch.fft.fftfreq(box, d=pixel, dtype=torch.float64)
    for ky, kx in [(0, 0), (0, 3), (5, 0), (4, 7), (10, 12)]:
        q = math.hypot(float(freqs[ky]), float(freqs[kx]))
        f = scattering.scattering_factor(torch.tensor(q / 2, dtype=torch.float64), a[0], b[0], 20.0)
        sinc = torch.sinc(freqs[kx] * pixel) * torch.sinc(freqs[ky] * pixel)
        expected = scattering.POTENTIAL_PER_SCATTERING_FACTOR * f * sinc
        assert float(spectrum[ky, kx].real) == pytest.approx(float(expected), rel=1e-6)
        assert abs(float(spectrum[ky, kx].imag)) < 1e-9


def test_pose_conventions_axis0_is_y():
    """An atom at model (x, y, z) lands at (R x + t)[:2], image axis 0 = y, axis 1 = x."""
    box, pixel = 32, 1.0
    coords, a, b, _ = _one_atom([4.0, -2.0, 7.0], "S")
    rot = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    shift = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    image = scattering.projected_potential(coords, rot, shift, a, b, box, pixel)[0]
    centres = pixel_centers(box, pixel, dtype=torch.float64)
    y_mean = float((image.sum(1) * centres).sum() / image.sum())
    x_mean = float((image.sum(0) * centres).sum() / image.sum())
    # R @ (4, -2, 7) = (2, 4, 7); + t = (3, 7)
    assert (x_mean, y_mean) == pytest.approx((3.0, 7.0), abs=1e-6)
    assert float(image.sum()) * pixel**2 == pytest.approx(
        scattering.POTENTIAL_PER_SCATTERING_FACTOR * float(a.sum()), rel=1e-6
    )


def test_binning_commutes_with_exact_integration_without_ctf():
    coords = torch.randn(2, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    a, b = scattering.scattering_parameters(["C", "N", "O", "S"] * 5)
    rot = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    shift = torch.zeros(2, 2, dtype=torch.float64)
    coarse = scattering.projected_potential(coords, rot, shift, a, b, 16, 1.5, 5.0, oversample=1)
    fine = scattering.projected_potential(coords, rot, shift, a, b, 16, 1.5, 5.0, oversample=4)
    # equal up to the mass beyond the 6-sigma evaluation band (~1e-9 of an atom; pixels reach ~20 V*A)
    torch.testing.assert_close(scattering.bin_pixels(fine, 4), coarse, rtol=1e-9, atol=1e-7)


def test_phase_contrast_low_frequency_keeps_density_sign():
    coords, a, b, eye = _one_atom([0.0, 0.0, 0.0], "C")
    shift = torch.zeros(1, 2, dtype=torch.float64)
    # Pure amplitude contrast, no defocus: the CTF is the constant Q, so the image is Q * phase.
    ctf = CTFParams(
        defocus_u=torch.zeros(1, dtype=torch.float64),
        defocus_v=torch.zeros(1, dtype=torch.float64),
        spherical_aberration=0.0,
        amplitude_contrast=0.1,
    )
    image = scattering.phase_contrast_images(coords, eye, shift, a, b, ctf, 16, 1.0, oversample=2)
    phase = scattering.projected_potential(coords, eye, shift, a, b, 16, 1.0, 0.0, 1)
    phase = phase * scattering.interaction_constant(300.0)
    torch.testing.assert_close(image, 0.1 * phase, rtol=1e-6, atol=1e-9)


def test_snr_noise_measures_back():
    g = torch.Generator().manual_seed(1)
    scales = torch.linspace(0.5, 2, 200, dtype=torch.float64)[:, None, None]
    clean = torch.randn(200, 16, 16, generator=g, dtype=torch.float64) * scales
    sigma = noise.snr_noise_sigma(clean, 0.05)
    noisy = noise.add_gaussian_noise(clean, sigma, torch.Generator().manual_seed(2))
    assert noise.measured_snr(clean, noisy) == pytest.approx(0.05, rel=0.05)


def test_shot_noise_is_unbiased_with_expected_variance():
    clean = torch.full((400, 16, 16), 0.05, dtype=torch.float64)
    clean[:, 4:8, 4:8] = 0.2
    noisy = noise.shot_noise(clean, dose=20.0, pixel_size=1.5, generator=torch.Generator().manual_seed(3))
    residual = noisy - clean
    assert abs(float(residual.mean())) < 3e-3
    # variance (1 - 2 image) / (4 dose p^2), checked on the background and on the bright patch
    n = 20.0 * 1.5**2
    assert float(residual[:, 10:, 10:].var()) == pytest.approx((1 - 0.1) / (4 * n), rel=0.05)
    assert float(residual[:, 4:8, 4:8].var()) == pytest.approx((1 - 0.4) / (4 * n), rel=0.05)
    assert noise.shot_noise_sigma(20.0, 1.5) == pytest.approx(0.5 / math.sqrt(n))
