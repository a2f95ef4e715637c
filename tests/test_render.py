"""The separable renderer against a brute-force 3D projection, finite differences and its conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomvae.physics import render as render_module
from atomvae.physics.ctf import CTFParams, apply_ctf
from atomvae.physics.grid import pixel_centers
from atomvae.physics.render import render, render_projections


def _random_case(n: int, n_atoms: int, seed: int, dtype=torch.float64, spread: float = 5.0):
    rng = np.random.default_rng(seed)
    coords = torch.as_tensor(rng.normal(scale=spread, size=(n, n_atoms, 3)), dtype=dtype)
    rotation = torch.as_tensor(Rotation.random(n, random_state=seed).as_matrix(), dtype=dtype)
    shift = torch.as_tensor(rng.uniform(-2.0, 2.0, size=(n, 2)), dtype=dtype)  # sub-pixel and beyond
    return coords, rotation, shift


def _brute_force_projection(coords, rotation, shift, box, pixel_size, sigma):
    """Integrate each rotated 3D Gaussian along z on a fine grid at every pixel centre (dense, numpy)."""
    coords, rotation, shift = (np.asarray(t, dtype=np.float64) for t in (coords, rotation, shift))
    centers = (np.arange(box) - box // 2) * pixel_size
    images = np.zeros((len(coords), box, box))
    dz = 0.02 * sigma
    z_offsets = np.arange(-10 * sigma, 10 * sigma + dz / 2, dz)
    norm = 1.0 / ((2 * np.pi) ** 1.5 * sigma**3)
    for n in range(len(coords)):
        rotated = coords[n] @ rotation[n].T  # x_img = R @ x
        for atom in rotated:
            x, y, z = atom[0] + shift[n, 0], atom[1] + shift[n, 1], atom[2]
            zs = z + z_offsets
            r2 = (
                (centers[:, None, None] - y) ** 2  # image axis 0 is y
                + (centers[None, :, None] - x) ** 2
                + (zs[None, None, :] - z) ** 2
            )
            density = norm * np.exp(-0.5 * r2 / sigma**2)
            images[n] += np.trapezoid(density, zs, axis=-1) * pixel_size**2
    return images


@pytest.mark.parametrize(
    ("box", "pixel_size", "sigma"),
    [(24, 1.5, 1.0), (17, 2.3, 1.0), (20, 0.4, 1.0), (16, 1.0, 1.7)],  # banded, odd box, dense, wide
)
def test_matches_brute_force_3d_projection(box, pixel_size, sigma):
    coords, rotation, shift = _random_case(3, 25, seed=box)
    expected = _brute_force_projection(coords, rotation, shift, box, pixel_size, sigma)
    got64 = render_projections(coords, rotation, shift, box, pixel_size, sigma).numpy()
    got32 = render_projections(coords.float(), rotation.float(), shift.float(), box, pixel_size, sigma)
    scale = np.abs(expected).max()
    assert np.abs(got64 - expected).max() / scale < 1e-5
    assert np.abs(got32.double().numpy() - expected).max() / scale < 1e-5


def test_unit_mass_and_axis_convention():
    pixel_size, box = 0.5, 32
    coords = torch.tensor([[[2 * pixel_size, -3 * pixel_size, 7.0]]], dtype=torch.float64)
    image = render_projections(
        coords, torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 2), box, pixel_size
    )[0]
    assert image.sum().item() == pytest.approx(1.0, abs=1e-9)
    peak = divmod(int(image.argmax()), box)
    assert peak == (box // 2 - 3, box // 2 + 2)  # (row = y, column = x), centre pixel box // 2
    shifted = render_projections(
        coords,
        torch.eye(3, dtype=torch.float64)[None],
        torch.tensor([[pixel_size, 0.0]], dtype=torch.float64),
        box,
        pixel_size,
    )[0]
    assert divmod(int(shifted.argmax()), box) == (box // 2 - 3, box // 2 + 3)  # +shift_x moves right


def test_rotation_maps_model_axes_into_the_image():
    # R maps model coordinates to the image frame: an atom on the model z axis rotated by
    # R = Rx(-90 deg) (y <- z) lands at +y in the image.
    pixel_size, box = 1.0, 16
    coords = torch.tensor([[[0.0, 0.0, 4.0]]], dtype=torch.float64)
    rotation = torch.as_tensor(Rotation.from_euler("x", -90, degrees=True).as_matrix())[None]
    assert torch.allclose(rotation[0] @ coords[0, 0], torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64))
    image = render_projections(coords, rotation, torch.zeros(1, 2, dtype=torch.float64), box, pixel_size)[0]
    assert divmod(int(image.argmax()), box) == (box // 2 + 4, box // 2)
    assert pixel_centers(box, pixel_size)[box // 2 + 4].item() == 4.0


@pytest.mark.parametrize("pixel_size", [1.7, 0.6])  # banded backward, dense backward
def test_gradcheck_coordinates_rotation_shift(pixel_size):
    coords, rotation, shift = _random_case(2, 6, seed=11, spread=3.0)
    inputs = tuple(t.clone().requires_grad_(True) for t in (coords, rotation, shift))
    assert torch.autograd.gradcheck(
        lambda c, r, s: render_projections(c, r, s, 12, pixel_size),
        inputs,
        atol=1e-7,
        rtol=1e-5,
        fast_mode=True,  # random projections of the Jacobian: seconds instead of a backward per pixel
    )
    # The full Jacobian on a tiny case.
    small = tuple(t.clone().requires_grad_(True) for t in (coords[:1, :3], rotation[:1], shift[:1]))
    assert torch.autograd.gradcheck(lambda c, r, s: render_projections(c, r, s, 6, pixel_size * 2), small)


def test_gradcheck_of_the_autograd_function_with_chunks():
    g = torch.Generator().manual_seed(3)
    positions = (torch.rand(5, 7, 2, generator=g, dtype=torch.float64) - 0.5) * 20
    positions.requires_grad_(True)
    function = render_module._SeparableGaussianProjection.apply
    # chunk of 2 renders: the last chunk is partial; one atom sits outside the box.
    with torch.no_grad():
        positions[0, 0] = torch.tensor([30.0, -2.0])
    one = torch.tensor(1.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: function(p, 14, 1.5, one, 2, None), (positions,), atol=1e-7, fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda p: function(p, 5, 3.0, one, 2, None), (positions[:3, :3],), atol=1e-7
    )


def test_weights_are_masses():
    # An atom of weight w renders as w unit-mass atoms on the same spot; weights 0 remove atoms.
    coords, rotation, shift = _random_case(3, 5, seed=21)
    weights = torch.tensor([2.0, 0.0, 1.0, 0.5, 3.0], dtype=torch.float64)
    got = render_projections(coords, rotation, shift, 20, 1.3, 1.2, weights=weights)
    # (3, 5, H, W): each atom alone
    each = render_projections(coords[:, :, None], rotation[:, None], shift[:, None], 20, 1.3, 1.2)
    expected = (each * weights[:, None, None]).sum(dim=1)
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("pixel_size", [1.7, 0.6])  # banded backward, dense backward
def test_gradcheck_weighted_positions_and_width(pixel_size):
    coords, rotation, shift = _random_case(2, 6, seed=12, spread=3.0)
    weights = torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    sigma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    inputs = (coords.clone().requires_grad_(True), shift.clone().requires_grad_(True), sigma)
    assert torch.autograd.gradcheck(
        lambda c, s, w: render_projections(c, rotation, s, 12, pixel_size, w, weights=weights),
        inputs,
        atol=1e-7,
        rtol=1e-5,
        fast_mode=True,
    )
    small = (coords[:1, :3].clone().requires_grad_(True), shift[:1].clone().requires_grad_(True), sigma)
    assert torch.autograd.gradcheck(
        lambda c, s, w: render_projections(c, rotation[:1], s, 7, pixel_size * 2, w, weights=weights[:3]),
        small,
    )


def test_broadcasts_leading_dims_and_chunking_does_not_matter(monkeypatch):
    coords, rotation, shift = _random_case(6, 30, seed=5, dtype=torch.float32)
    coords_bk = coords.reshape(2, 3, 30, 3)
    together = render_projections(coords_bk, rotation.reshape(2, 3, 3, 3), shift.reshape(2, 3, 2), 20, 1.5)
    assert together.shape == (2, 3, 20, 20)
    # One structure under several poses: coords (A, 3) broadcast against rotation (K, 3, 3).
    shared = render_projections(coords[0], rotation, shift, 20, 1.5)
    monkeypatch.setattr(render_module, "CHUNK_ATOMS", 30)  # one render per chunk
    for k in range(6):
        alone = render_projections(coords[k], rotation[k], shift[k], 20, 1.5)
        torch.testing.assert_close(together.reshape(6, 20, 20)[k], alone, atol=1e-6, rtol=1e-5)
        alone_shared = render_projections(coords[0], rotation[k], shift[k], 20, 1.5)
        torch.testing.assert_close(shared[k], alone_shared, atol=1e-6, rtol=1e-5)


def test_render_with_ctf_is_projection_then_ctf_and_differentiable():
    coords, rotation, shift = _random_case(2, 5, seed=8, spread=3.0)
    params = CTFParams(torch.tensor([12000.0, 18000.0], dtype=torch.float64), 15000.0, 33.0, bfactor=20.0)
    images = render(coords[:, None], rotation[:, None], shift[:, None], params, 10, 2.0)  # (B=2, K=1)
    expected = apply_ctf(render_projections(coords, rotation, shift, 10, 2.0)[:, None], params, 2.0)
    torch.testing.assert_close(images, expected)
    inputs = tuple(t.clone().requires_grad_(True) for t in (coords, rotation, shift))
    assert torch.autograd.gradcheck(lambda c, r, s: render(c, r, s, params, 10, 2.0), inputs, fast_mode=True)


def test_far_and_nan_atoms():
    coords = torch.tensor([[[500.0, -400.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    eye = torch.eye(3, dtype=torch.float64)[None]
    image = render_projections(coords, eye, torch.zeros(1, 2, dtype=torch.float64), 16, 1.0)
    single = render_projections(coords[:, 1:].detach(), eye, torch.zeros(1, 2, dtype=torch.float64), 16, 1.0)
    torch.testing.assert_close(image.detach(), single)
    image.sum().backward()
    assert torch.isfinite(coords.grad).all() and coords.grad[0, 0].abs().max() < 1e-30
    nan_coords = torch.tensor([[[math.nan, 0.0, 0.0]]])
    assert torch.isnan(render_projections(nan_coords, torch.eye(3)[None], torch.zeros(1, 2), 8, 1.0)).any()


def test_empty_and_unbatched_inputs():
    eye = torch.eye(3)
    no_renders = render_projections(torch.zeros(0, 5, 3), eye.expand(0, 3, 3), torch.zeros(0, 2), 8, 1.0)
    assert no_renders.shape == (0, 8, 8)
    no_atoms = render_projections(torch.zeros(2, 0, 3), eye.expand(2, 3, 3), torch.zeros(2, 2), 8, 1.0)
    assert no_atoms.shape == (2, 8, 8) and no_atoms.abs().max() == 0
    single = render_projections(torch.zeros(1, 3), eye, torch.zeros(2), 9, 1.0)
    assert single.shape == (9, 9) and single.argmax().item() == 4 * 9 + 4


def test_gaussian_blur_of_a_render_is_the_render_with_wider_atoms():
    from atomvae.physics.ctf import gaussian_blur

    generator = torch.Generator().manual_seed(0)
    coords = 6.0 * torch.randn(1, 12, 3, generator=generator, dtype=torch.float64)
    rotation = torch.eye(3, dtype=torch.float64)[None]
    shift = torch.zeros(1, 2, dtype=torch.float64)
    # atoms at 2 A on 1.5 A pixels are well sampled, so the discrete blur is exact to ~1e-8
    sharp = render_projections(coords, rotation, shift, 48, 1.5, 2.0)
    wide = render_projections(coords, rotation, shift, 48, 1.5, math.sqrt(2.0**2 + 2.0**2))
    blurred = gaussian_blur(sharp, 2.0, 1.5)
    assert torch.allclose(blurred, wide, atol=1e-6 * float(wide.abs().max()))
    assert torch.equal(gaussian_blur(sharp, 0.0, 1.5), sharp)


@pytest.mark.parametrize(
    ("box", "pixel_size", "sigma", "resolution"), [(64, 1.5, 1.7, 6.0), (33, 2.0, 2.0, 8.0)]
)
def test_band_limited_spectra_are_the_renders_spectra_below_the_low_pass(box, pixel_size, sigma, resolution):
    """Against rfft2 of the real-space render (even and odd box, weighted atoms): equal in the band up to
    the sampled image's aliases (relative size exp(-2 pi^2 s^2 (1 - nu)^2), s = sigma / pixel: 1.5e-5 at s = 1
    and nu = 1/4 cycle per pixel), exactly zero outside it. Atoms well inside the
    box: the analytic transform does not know the image's edge."""
    from atomvae.physics.render import band_limited_spectra

    coords, rotation, _shift = _random_case(3, 40, seed=box, spread=box * pixel_size / 12)
    weights = torch.linspace(0.5, 2.0, 40, dtype=torch.float64)
    spectra = band_limited_spectra(coords, rotation, box, pixel_size, sigma, resolution, weights)
    expected = torch.fft.rfft2(
        render_projections(
            coords, rotation, torch.zeros(2, dtype=torch.float64), box, pixel_size, sigma, weights
        )
    )
    ky = torch.fft.fftfreq(box, d=pixel_size)[:, None].abs()
    kx = torch.fft.rfftfreq(box, d=pixel_size)[None, :]
    band = (ky <= 1 / resolution + 1e-9) & (kx <= 1 / resolution + 1e-9)
    assert spectra.shape == expected.shape and spectra.dtype == torch.complex128
    scale = expected.abs().max()
    assert (spectra - expected)[..., band].abs().max() / scale < 3e-5
    assert torch.equal(spectra[..., ~band], torch.zeros_like(spectra[..., ~band]))
    single = band_limited_spectra(
        coords.float(), rotation.float(), box, pixel_size, sigma, resolution, weights.float()
    )
    assert ((single - spectra).abs().max() / scale).item() < 1e-5  # float32 phases stay accurate
