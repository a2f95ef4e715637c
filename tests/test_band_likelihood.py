"""The conformation search's band-limited likelihood (``model.band_likelihood``) against the real-space
likelihood it stands for: Parseval over the whole band, and a brute-force band sum."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomvae.model.band_likelihood import BandLikelihood
from atomvae.model.losses import gaussian_log_likelihood
from atomvae.physics.ctf import CTFParams, rfft_ctf
from atomvae.physics.render import band_rows, band_size, render_projections

BOX, PIXEL = 48, 1.5


def _case(n_images: int, n_candidates: int, n_atoms: int, seed: int):
    """Candidates (B, M, A, 3) A well inside the box, rotations (B, 3, 3), shifts (B, 2) A, masses (A,),
    a CTF (B,) and noisy images (B, H, W)."""
    rng = np.random.default_rng(seed)
    coords = torch.as_tensor(rng.normal(scale=5.0, size=(n_images, n_candidates, n_atoms, 3)))
    rotation = torch.as_tensor(Rotation.random(n_images, random_state=seed).as_matrix())
    shift = torch.as_tensor(rng.uniform(-3.0, 3.0, size=(n_images, 2)))
    masses = torch.as_tensor(rng.uniform(0.5, 2.0, size=n_atoms))
    ctf = CTFParams(
        defocus_u=torch.as_tensor(rng.uniform(8000, 15000, n_images)),
        defocus_v=torch.as_tensor(rng.uniform(8000, 15000, n_images)),
        astigmatism_angle=torch.as_tensor(rng.uniform(0, 180, n_images)),
    )
    images = torch.as_tensor(rng.normal(size=(n_images, BOX, BOX)))
    return coords, rotation, shift, masses, ctf, images


def _periodic_renders(coords, rotation, shift, masses, ctf, sigma):
    """Real-space renders (B, M, H, W) with the CTF applied as a multiply of their spectra."""
    renders = render_projections(coords, rotation[:, None], shift[:, None], BOX, PIXEL, sigma, masses)
    transfer = rfft_ctf(ctf, BOX, PIXEL)[:, None]
    return torch.fft.irfft2(torch.fft.rfft2(renders) * transfer, s=(BOX, BOX))


@pytest.mark.parametrize("per_image", [True, False])
def test_over_the_whole_band_score_differences_are_the_real_space_likelihoods(per_image):
    """At the band's widest (Nyquist excluded) and atoms so wide that nothing is left there, the scores of
    two candidates differ exactly as the real-space log-likelihoods of their renders do (Parseval): per-image
    least-squares scale or a fixed amplitude."""
    sigma, noise = 3.0, 0.7  # at Nyquist the atom's transform is exp(-19.7) of its peak
    coords, rotation, shift, masses, ctf, images = _case(3, 4, 30, seed=1)
    scorer = BandLikelihood(images, ctf, shift, BOX, PIXEL, 2 * PIXEL, noise)
    amplitude = None if per_image else torch.tensor(0.8, dtype=torch.float64)
    scores = scorer(coords, rotation[:, None], sigma, masses, amplitude)
    renders = _periodic_renders(coords, rotation, shift, masses, ctf, sigma)
    if per_image:
        scale = ((renders * images[:, None]).sum((-2, -1)) / renders.square().sum((-2, -1))).clamp_min(0.0)
    else:
        scale = torch.full(renders.shape[:2], 0.8, dtype=torch.float64)
    expected = gaussian_log_likelihood(images[:, None], scale[..., None, None] * renders, noise)
    assert scores.shape == (3, 4)
    differences, expected_differences = scores - scores[:, :1], expected - expected[:, :1]
    assert expected_differences.abs().max() > 1.0  # the candidates are told apart
    torch.testing.assert_close(differences, expected_differences, rtol=1e-6, atol=1e-6)


def test_a_narrow_band_is_the_brute_force_sum_over_its_frequencies():
    """At 6 A the score is -(1 / 2 sigma^2 N) sum over the band of w |Y - s C R|^2 with R the rfft2 of the
    real-space render (its aliases are the only difference: below 1e-5 of the signal here)."""
    sigma, noise, resolution = 1.5, 0.5, 6.0
    coords, rotation, shift, masses, ctf, images = _case(2, 3, 25, seed=2)
    scores = BandLikelihood(images, ctf, shift, BOX, PIXEL, resolution, noise)(
        coords, rotation[:, None], sigma, masses, None
    )
    n_band = band_size(BOX, PIXEL, resolution)
    assert n_band == 13  # 72 A box / 6 A = 12 cycles, and the zero frequency
    rows = band_rows(BOX, n_band)
    renders = render_projections(coords, rotation[:, None], shift[:, None], BOX, PIXEL, sigma, masses)
    model = (torch.fft.rfft2(renders) * rfft_ctf(ctf, BOX, PIXEL)[:, None])[..., rows, :n_band]
    data = torch.fft.rfft2(images)[:, None, rows, :n_band]
    weights = torch.full((n_band,), 2.0, dtype=torch.float64)
    weights[0] = 1.0

    def inner(a, b):
        return ((a.conj() * b).real * weights).sum((-2, -1)) / BOX**2

    scale = (inner(model, data) / inner(model, model)).clamp_min(0.0)
    residual = data - scale[..., None, None] * model
    expected = -0.5 * inner(residual, residual) / noise**2
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_band_rows_are_distinct_and_below_nyquist():
    for box, pixel, resolution in [(64, 1.5, 3.0), (64, 1.5, 1.0), (33, 2.0, 4.0)]:
        n_band = band_size(box, pixel, resolution)
        rows = band_rows(box, n_band)
        assert len(set(rows.tolist())) == 2 * n_band - 1
        assert n_band - 1 < box / 2  # an even box's Nyquist row is left out
