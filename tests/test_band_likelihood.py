"""The conformation search's band-limited likelihood (``model.band_likelihood``) against the real-space
image model it stands for: the overlap with the padded-and-cropped CTF exactly, Parseval on the padded grid,
and a brute-force band sum."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomvae.model.band_likelihood import BandLikelihood
from atomvae.physics.ctf import CTFParams, apply_ctf, rfft_ctf
from atomvae.physics.render import band_rows, band_size, render_projections

BOX, PIXEL, PADDED = 48, 1.5, 96


def _case(n_images: int, n_candidates: int, n_atoms: int, seed: int):
    """Candidates (B, M, A, 3) A well inside the box, rotations (B, 3, 3), shifts (B, 2) A, masses (A,),
    a CTF (B,) with defoci whose fringes reach beyond the box, and noisy images (B, H, W)."""
    rng = np.random.default_rng(seed)
    coords = torch.as_tensor(rng.normal(scale=5.0, size=(n_images, n_candidates, n_atoms, 3)))
    rotation = torch.as_tensor(Rotation.random(n_images, random_state=seed).as_matrix())
    shift = torch.as_tensor(rng.uniform(-3.0, 3.0, size=(n_images, 2)))
    masses = torch.as_tensor(rng.uniform(0.5, 2.0, size=n_atoms))
    ctf = CTFParams(
        defocus_u=torch.as_tensor(rng.uniform(15000, 25000, n_images)),
        defocus_v=torch.as_tensor(rng.uniform(15000, 25000, n_images)),
        astigmatism_angle=torch.as_tensor(rng.uniform(0, 180, n_images)),
    )
    images = torch.as_tensor(rng.normal(size=(n_images, BOX, BOX)))
    return coords, rotation, shift, masses, ctf, images


def _renders(coords, rotation, shift, masses, sigma):
    return render_projections(coords, rotation[:, None], shift[:, None], BOX, PIXEL, sigma, masses)


def test_over_the_whole_band_the_overlap_is_the_cropped_models_and_the_power_the_padded_grids():
    """At the band's widest (below the padded grid's Nyquist) with atoms so wide that nothing is left there:
    the overlap sum_box y (C * r) equals the training's image model (``apply_ctf``: padded linear
    convolution, cropped) exactly, and the power is that of the CTF'd render over the whole padded grid,
    more than over the box (the fringes beyond it: the one approximation of the score)."""
    sigma = 3.0  # at Nyquist the atom's transform is exp(-19.7) of its peak
    coords, rotation, shift, masses, ctf, images = _case(3, 4, 30, seed=1)
    scorer = BandLikelihood(images, ctf, shift, BOX, PIXEL, 2 * PIXEL, noise_sigma=0.7)
    overlap, power = scorer.overlap_and_power(coords, rotation[:, None], sigma, masses)
    renders = _renders(coords, rotation, shift, masses, sigma)
    cropped = apply_ctf(renders, ctf, PIXEL)
    torch.testing.assert_close(overlap, (cropped * images[:, None]).sum((-2, -1)), rtol=1e-7, atol=1e-7)
    padded = torch.nn.functional.pad(renders, (0, PADDED - BOX, 0, PADDED - BOX))
    convolved = torch.fft.irfft2(
        torch.fft.rfft2(padded) * rfft_ctf(ctf, PADDED, PIXEL)[:, None], s=(PADDED, PADDED)
    )
    torch.testing.assert_close(power, convolved.square().sum((-2, -1)), rtol=1e-7, atol=1e-7)
    assert (power > cropped.square().sum((-2, -1))).all()  # the fringes that leave the box


@pytest.mark.parametrize("per_image", [True, False])
def test_scores_are_the_gaussian_likelihood_of_overlap_and_power(per_image):
    """-(|y|^2 - 2 s <y, Cr> + s^2 |Cr|^2) / 2 sigma^2 with s the clamped least-squares scale or the
    amplitude given; differences between candidates are told apart."""
    sigma, noise = 1.5, 0.5
    coords, rotation, shift, masses, ctf, images = _case(2, 3, 25, seed=3)
    scorer = BandLikelihood(images, ctf, shift, BOX, PIXEL, 6.0, noise)
    overlap, power = scorer.overlap_and_power(coords, rotation[:, None], sigma, masses)
    amplitude = None if per_image else torch.tensor(0.8, dtype=torch.float64)
    scores = scorer(coords, rotation[:, None], sigma, masses, amplitude)
    scale = (overlap / power).clamp_min(0.0) if per_image else torch.full_like(overlap, 0.8)
    expected = -0.5 * (scorer.image_power - 2 * scale * overlap + scale.square() * power) / noise**2
    torch.testing.assert_close(scores, expected)
    assert (scores - scores[:, :1]).abs().max() > 0.1


def test_a_narrow_band_is_the_brute_force_sum_over_its_frequencies():
    """At 6 A the score is -(1 / 2 sigma^2 N) sum over the band of w |Y - s C R|^2 on the padded grid, R the
    rfft2 of the zero-padded real-space render (its aliases are the only difference: below 1e-5 here)."""
    sigma, noise, resolution = 1.5, 0.5, 6.0
    coords, rotation, shift, masses, ctf, images = _case(2, 3, 25, seed=2)
    scores = BandLikelihood(images, ctf, shift, BOX, PIXEL, resolution, noise)(
        coords, rotation[:, None], sigma, masses, None
    )
    n_band = band_size(PADDED, PIXEL, resolution)
    assert n_band == 25  # 144 A padded box / 6 A = 24 cycles, and the zero frequency
    rows = band_rows(PADDED, n_band)

    def padded_spectra(x):
        return torch.fft.rfft2(torch.nn.functional.pad(x, (0, PADDED - BOX, 0, PADDED - BOX)))[
            ..., rows, :n_band
        ]

    model = padded_spectra(_renders(coords, rotation, shift, masses, sigma))
    model = model * rfft_ctf(ctf, PADDED, PIXEL)[:, None, rows, :n_band]
    data = padded_spectra(images)[:, None]
    weights = torch.full((n_band,), 2.0, dtype=torch.float64)
    weights[0] = 1.0

    def inner(a, b):
        return ((a.conj() * b).real * weights).sum((-2, -1)) / PADDED**2

    scale = (inner(model, data) / inner(model, model)).clamp_min(0.0)
    residual = data - scale[..., None, None] * model
    torch.testing.assert_close(scores, -0.5 * inner(residual, residual) / noise**2, rtol=1e-5, atol=1e-5)


def test_band_rows_are_distinct_and_below_nyquist():
    for box, pixel, resolution in [(64, 1.5, 3.0), (64, 1.5, 1.0), (33, 2.0, 4.0)]:
        n_band = band_size(box, pixel, resolution)
        rows = band_rows(box, n_band)
        assert len(set(rows.tolist())) == 2 * n_band - 1
        assert n_band - 1 < box / 2  # an even box's Nyquist row is left out
