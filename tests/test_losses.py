"""The terms of paper eq. 4 against hand computations, Monte-Carlo estimates and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch
from MDAnalysisTests.datafiles import PDB_xsmall  # adk_open_10res.pdb
from scipy import stats

from atomvae.evaluate.stereochemistry import backbone_angles, phi_psi
from atomvae.model.losses import (
    backbone_continuity,
    bond_outliers,
    center_of_mass,
    centering,
    gaussian_log_likelihood,
    iwae_log_mean_likelihood,
    kl_diagonal_normal,
    local_contact_pairs,
    local_contact_penalty,
    peptide_distances,
    peptide_geometry,
)
from atomvae.structure.io import read_structure


def test_gaussian_log_likelihood_matches_scipy_including_normalisation():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    predicted = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    sigma = 0.7
    expected = stats.norm.logpdf(images.numpy(), loc=predicted.numpy(), scale=sigma).sum(axis=(1, 2))
    got = gaussian_log_likelihood(images, predicted, sigma)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_gaussian_log_likelihood_broadcasts_one_image_over_samples():
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, 6, 6, generator=generator, dtype=torch.float64)
    renders = torch.randn(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    got = gaussian_log_likelihood(image, renders, 1.3)
    assert got.shape == (2, 3)
    direct = gaussian_log_likelihood(image.expand(2, 3, 6, 6), renders, 1.3)
    torch.testing.assert_close(got, direct)


def test_iwae_term_equals_log_of_mean_of_exp_for_moderate_values():
    generator = torch.Generator().manual_seed(2)
    log_likelihoods = 5.0 * torch.randn(4, 7, generator=generator, dtype=torch.float64)
    direct = torch.log(torch.exp(log_likelihoods).mean(dim=-1))
    torch.testing.assert_close(iwae_log_mean_likelihood(log_likelihoods), direct, rtol=1e-12, atol=1e-12)


def test_iwae_term_is_finite_and_exact_for_extreme_values():
    # exp(-1e6) and exp(1e4) under/overflow; the answer is known in closed form:
    # log((e^a + e^(a + log 3)) / 2) = a + log(4) - log(2).
    for a in (-1e6, 1e4):
        values = torch.tensor([[a, a + math.log(3.0)]], dtype=torch.float64)
        got = iwae_log_mean_likelihood(values)
        assert torch.isfinite(got).all()
        assert got.item() == pytest.approx(a + math.log(2.0), rel=1e-12, abs=1e-9)
    mixed = torch.tensor([[-1e6, 1e4, 1e4]], dtype=torch.float32)
    assert iwae_log_mean_likelihood(mixed).item() == pytest.approx(1e4 + math.log(2.0 / 3.0), rel=1e-6)
    # Gradients stay finite as well: they are the softmax weights of the samples.
    values = torch.tensor([[-1e6, 1e4, 1e4]], dtype=torch.float64, requires_grad=True)
    iwae_log_mean_likelihood(values).sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64))


def test_kl_closed_form_matches_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(3)
    mu = torch.tensor([0.5, -1.2, 2.0, 0.0], dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.5, 1.0, 0.05], dtype=torch.float64)
    n = 400_000
    z = mu + sigma * torch.randn(n, 4, generator=generator, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    samples = log_q - log_p
    estimate = samples.mean()
    standard_error = samples.std() / math.sqrt(n)
    closed = kl_diagonal_normal(mu, sigma)
    assert abs(closed - estimate) < 4 * standard_error
    # and against torch's own closed form
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    torch.testing.assert_close(closed, reference)


def test_kl_is_zero_at_the_prior_and_batched():
    mu = torch.zeros(3, 5)
    sigma = torch.ones(3, 5)
    assert kl_diagonal_normal(mu, sigma).shape == (3,)
    assert kl_diagonal_normal(mu, sigma).abs().max() == 0


def _chain(bond_lengths: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """C and N positions (R, 3) of R residues along x: C(i) at 10 i, N(i+1) at 10 i + bond_lengths[i]."""
    n_res = len(bond_lengths) + 1
    c_atoms = torch.zeros(n_res, 3, dtype=torch.float64)
    n_atoms = torch.zeros(n_res, 3, dtype=torch.float64)
    c_atoms[:, 0] = 10.0 * torch.arange(n_res)
    n_atoms[0, 0] = -1.0
    for i, length in enumerate(bond_lengths):
        n_atoms[i + 1, 0] = 10.0 * i + length
        n_atoms[i + 1, 1] = 0.0
    return c_atoms, n_atoms


def test_backbone_continuity_hand_computed_and_skips_breaks():
    c_atoms, n_atoms = _chain([1.33, 2.33, 1.03, 9.0])
    bonded = torch.tensor([True, True, True, False, False])  # bond 3 is a chain break; last is the end
    # deviations 0, 1, -0.3 -> mean square (0 + 1 + 0.09) / 3
    got = backbone_continuity(c_atoms, n_atoms, bonded, bond_length=1.33)
    assert got.item() == pytest.approx((0.0 + 1.0 + 0.09) / 3, rel=1e-12)
    # batched over leading dims
    batched = backbone_continuity(c_atoms.expand(2, 3, 5, 3), n_atoms.expand(2, 3, 5, 3), bonded)
    assert batched.shape == (2, 3)
    # no bonded pair at all: zero, not NaN
    nothing = backbone_continuity(c_atoms, n_atoms, torch.zeros(5, dtype=torch.bool))
    assert nothing.item() == 0.0


def test_backbone_continuity_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(4)
    c_atoms = (
        3.8 * torch.arange(6, dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.0, 0.0])
        + 0.5 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    n_atoms = (
        c_atoms.detach()
        + torch.tensor([2.5, 0.3, -0.2], dtype=torch.float64)
        + 0.3 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    bonded = torch.tensor([True, True, False, True, True, False])
    assert torch.autograd.gradcheck(lambda c, n: backbone_continuity(c, n, bonded), (c_atoms, n_atoms))


def test_bond_outliers_hand_computed_and_gradient():
    c_atoms, n_atoms = _chain([1.33, 1.48, 1.03, 9.0])
    bonded = torch.tensor([True, True, True, False, False])
    # deviations 0, 0.15, -0.3 beyond a 0.1 A tolerance: 0, 0.05, 0.2 -> summed squares
    got = bond_outliers(c_atoms, n_atoms, bonded, bond_length=1.33, tolerance=0.1)
    assert got.item() == pytest.approx(0.05**2 + 0.2**2, rel=1e-9)
    assert bond_outliers(c_atoms, n_atoms, torch.zeros(5, dtype=torch.bool)).item() == 0.0
    generator = torch.Generator().manual_seed(6)
    c = (
        3.8 * torch.arange(6, dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.0, 0.0])
        + 0.5 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    n = (
        c.detach()
        + torch.tensor([1.2, 0.3, -0.2], dtype=torch.float64)
        + 0.3 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, n: bond_outliers(c, n, torch.ones(6, dtype=torch.bool)), (c, n))


def test_centering_hand_computed_and_gradient():
    coords = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]], dtype=torch.float64)
    com = center_of_mass(coords)
    torch.testing.assert_close(com, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    assert centering(com).item() == pytest.approx(6.0)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: centering(center_of_mass(c)), (x,))


def _backbone(structure) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, 3) float64 positions of CA, C and N of each residue."""
    coords = torch.as_tensor(structure.coords, dtype=torch.float64)
    return tuple(coords[np.asarray(structure.topology.atom_index(name))] for name in ("CA", "C", "N"))


def test_peptide_geometry_sees_the_angles_the_bond_length_does_not():
    """Turning residue 5 onwards about the C(4)-N(5) bond keeps that bond's length, so
    ``backbone_continuity`` cannot see it, but it changes omega (CA-CA distance, CA's height); turning
    them about an axis through N(5) across the bond changes the C-N-CA angle. ``peptide_geometry`` sees
    both, is zero for the unmoved base and equals the hand-computed mean square of the four measures'
    changes."""
    structure = read_structure(PDB_xsmall)
    ca, c, n = _backbone(structure)
    bonded = torch.as_tensor(np.asarray(structure.topology.bonded_to_next))
    base = peptide_distances(ca, c, n)
    assert peptide_geometry(ca, c, n, base, bonded).item() == pytest.approx(0.0, abs=1e-20)

    def turned(axis: torch.Tensor, pivot: torch.Tensor, degrees: float) -> tuple[torch.Tensor, ...]:
        rotation = roma.rotvec_to_rotmat(axis / axis.norm() * math.radians(degrees))
        return tuple(torch.cat([x[:5], (x[5:] - pivot) @ rotation.T + pivot]) for x in (ca, c, n))

    # about the peptide bond itself: omega changes by 30 degrees, the bond length not at all
    ca_t, c_t, n_t = turned(n[5] - c[4], n[5], 30.0)
    assert backbone_continuity(c_t, n_t, bonded).item() == pytest.approx(
        backbone_continuity(c, n, bonded).item(), abs=1e-12
    )
    moved = peptide_distances(ca_t, c_t, n_t) - base
    assert 0.03 < moved[4, 2].abs() < 0.1  # CA(4)-CA(5): second order in omega
    assert moved[4, 3].abs() > 0.5  # the height of CA(5) over the peptide plane: first order
    mask = bonded[:-1]
    expected = moved[mask].square().mean()
    assert peptide_geometry(ca_t, c_t, n_t, base, bonded).item() == pytest.approx(expected.item(), rel=1e-12)

    # across the bond, about N(5): the C-N-CA angle changes by about the turn, and the term follows
    normal = torch.linalg.cross(n[5] - c[4], ca[5] - n[5])
    ca_t, c_t, n_t = turned(normal, n[5], 10.0)
    angle_before = backbone_angles(np.stack([structure.coords]), structure.topology)["C-N-CA"][0, 4]
    coords_t = torch.as_tensor(structure.coords, dtype=torch.float64).clone()
    moving = torch.as_tensor(np.asarray(structure.topology.residue_index) >= 5)
    rotation = roma.rotvec_to_rotmat(normal / normal.norm() * math.radians(10.0))
    coords_t[moving] = (coords_t[moving] - n[5]) @ rotation.T + n[5]
    angle_after = backbone_angles(coords_t.numpy()[None], structure.topology)["C-N-CA"][0, 4]
    assert abs(abs(angle_after - angle_before) - 10.0) < 1e-6
    moved = peptide_distances(ca_t, c_t, n_t) - base
    assert moved[4, 1].abs() > 0.1  # C(4)-CA(5), across the changed angle
    assert peptide_geometry(ca_t, c_t, n_t, base, bonded).item() == pytest.approx(
        moved[mask].square().mean().item(), rel=1e-12
    )


def test_peptide_geometry_gradient_matches_finite_differences():
    structure = read_structure(PDB_xsmall)
    generator = torch.Generator().manual_seed(7)
    ca, c, n = (
        (x + 0.2 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).requires_grad_()
        for x in _backbone(structure)
    )
    base = peptide_distances(*_backbone(structure))
    bonded = torch.as_tensor(np.asarray(structure.topology.bonded_to_next)).clone()
    bonded[3] = False  # a chain break is skipped
    assert torch.autograd.gradcheck(lambda a, b, d: peptide_geometry(a, b, d, base, bonded), (ca, c, n))


def _turn_phi(structure, residue: int, degrees: float) -> np.ndarray:
    """The structure's coordinates (A, 3) with phi of ``residue`` turned by ``degrees``: everything past the
    N-CA bond (the residue's other atoms but N and CA, and every later residue) turned about it."""
    coords = np.asarray(structure.coords, dtype=np.float64).copy()
    topology = structure.topology
    n, ca = coords[topology.atom_index("N")[residue]], coords[topology.atom_index("CA")[residue]]
    residue_of = np.asarray(topology.residue_index)
    names = np.asarray(topology.atom_name)
    moving = (residue_of > residue) | ((residue_of == residue) & ~np.isin(names, ["N", "CA"]))
    axis = torch.as_tensor((ca - n) / np.linalg.norm(ca - n) * math.radians(degrees))
    rotation = roma.rotvec_to_rotmat(axis).numpy()
    coords[moving] = (coords[moving] - ca) @ rotation.T + ca
    return coords


def test_local_contacts_see_the_phi_wall_that_the_clash_terms_leave_out():
    """The pairs are sequence neighbours' backbone and C-beta atoms less the peptide unit's six; the
    penalty is zero on the base, and turning one residue's phi to 0 (C(i-1) onto C(i): the wall of the
    Ramachandran plot, 2.9 A at phi = 0 against the 3.0 A limit) makes it positive, by exactly the
    hand-computed overlaps; its gradient matches finite differences."""
    structure = read_structure(PDB_xsmall)
    topology = structure.topology
    names, residue_of = np.asarray(topology.atom_name), np.asarray(topology.residue_index)
    bonded = np.asarray(topology.bonded_to_next)
    first, second, limit = local_contact_pairs(
        names, topology.element, residue_of, bonded, np.asarray(structure.coords)
    )
    pairs = {(names[a], names[b]) for a, b in zip(first, second, strict=True)}
    assert ("C", "C") in pairs and ("N", "N") in pairs and ("O", "CB") in pairs and ("CB", "N") in pairs
    assert not pairs & {("CA", "N"), ("C", "N"), ("O", "N"), ("C", "CA"), ("CA", "CA"), ("O", "CA")}
    assert np.all(residue_of[second] == residue_of[first] + 1) and np.all(bonded[residue_of[first]])
    assert np.all(limit <= 3.0)
    index = (torch.as_tensor(first), torch.as_tensor(second), torch.as_tensor(limit))
    base = torch.as_tensor(structure.coords, dtype=torch.float64)
    assert local_contact_penalty(base, *index).item() == 0.0

    residue = 5
    phi_before = phi_psi(np.asarray(structure.coords)[None], topology)
    row = list(phi_before[2]).index(residue)
    turned = _turn_phi(structure, residue, -float(phi_before[0][0, row]))
    phi_after = phi_psi(turned[None], topology)[0][0, row]
    assert abs(phi_after) < 1e-6
    c = topology.atom_index("C")
    assert np.linalg.norm(turned[c[residue - 1]] - turned[c[residue]]) < 3.0
    distance = np.linalg.norm(turned[first] - turned[second], axis=-1)
    expected = (np.clip(limit - distance, 0.0, None) ** 2).sum()
    got = local_contact_penalty(torch.as_tensor(turned), *index).item()
    assert got == pytest.approx(expected, rel=1e-12) and got > 0.01

    x = torch.as_tensor(turned).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: local_contact_penalty(c, *index), (x,))
