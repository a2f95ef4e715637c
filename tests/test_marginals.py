"""Distance marginals, W1, cutoffs and mode proportions on hand-made ensembles with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomvae.errors import InputError
from atomvae.evaluate.conditional import (
    Latents,
    conditional_distance_correlation,
    latent_pca,
    posterior_distances,
    read_latents,
)
from atomvae.evaluate.marginals import (
    atom_distances,
    compare_marginal,
    mode_proportions,
    parse_distance,
    shared_bins,
)


def _two_atom_ensemble(lengths):
    """Structures of 3 atoms: atom 0 at the origin, atom 1 on +x at the given length, atom 2 fixed."""
    coords = np.zeros((len(lengths), 3, 3))
    coords[:, 1, 0] = lengths
    coords[:, 2] = [0.0, 3.0, 4.0]  # always 5 A from atom 0
    return coords


def test_atom_distances_hand_made():
    coords = _two_atom_ensemble([1.0, 2.5, 7.0])
    d = atom_distances(coords, np.array([[0, 1], [0, 2], [1, 2]]))
    assert d.shape == (3, 3)
    np.testing.assert_allclose(d[:, 0], [1.0, 2.5, 7.0])
    np.testing.assert_allclose(d[:, 1], 5.0)
    np.testing.assert_allclose(d[:, 2], np.sqrt((np.array([1.0, 2.5, 7.0])) ** 2 + 25.0))


def test_compare_marginal_known_w1_and_cutoff_fractions():
    gt = np.array([4.0, 5.0, 6.0, 40.0])
    shifted = gt + 2.0  # a pure shift moves every quantile by 2: W1 = 2
    cmp = compare_marginal(shifted, gt, "d", cutoff=6.5)
    assert cmp.wasserstein_1 == pytest.approx(2.0)
    assert cmp.gt_below == pytest.approx(0.75) and cmp.pred_below == pytest.approx(0.25)
    d = cmp.to_dict()
    assert d["gt_at_or_above"] == pytest.approx(0.25) and d["pred_at_or_above"] == pytest.approx(0.75)
    assert cmp.gt_mean == pytest.approx(13.75) and cmp.pred_mean == pytest.approx(15.75)
    # A value equal to the cutoff counts as "at or above".
    assert compare_marginal(np.array([6.5]), np.array([6.4]), "d", cutoff=6.5).pred_below == 0.0
    assert "cutoff" not in compare_marginal(gt, gt, "d").to_dict()
    assert compare_marginal(gt, gt, "d").wasserstein_1 == 0.0


def test_compare_marginal_w1_of_different_sizes():
    # {0, 1} vs {0.5}: every mass moves 0.5.
    assert compare_marginal(np.array([0.0, 1.0]), np.array([0.5]), "d").wasserstein_1 == pytest.approx(0.5)


def test_mode_proportions_paper_style_quadrants():
    d = np.array([[5.0, 30.0], [5.0, 40.0], [8.0, 40.0], [8.0, 41.0], [6.0, 36.9]])
    got = mode_proportions(d, [6.5, 37.0], ["x", "y"])
    assert got == {
        "x < 6.5, y < 37": pytest.approx(0.4),
        "x < 6.5, y >= 37": pytest.approx(0.2),
        "x >= 6.5, y < 37": pytest.approx(0.0),
        "x >= 6.5, y >= 37": pytest.approx(0.4),
    }
    assert sum(got.values()) == pytest.approx(1.0)
    assert mode_proportions(d[:, :1], [6.5], ["x"]) == {
        "x < 6.5": pytest.approx(0.6),
        "x >= 6.5": pytest.approx(0.4),
    }


def test_shared_bins_cover_both_samples():
    edges = shared_bins(np.array([3.0, 4.0]), np.array([10.0, 1.0]), n_bins=9)
    assert len(edges) == 10 and edges[0] == 1.0 and edges[-1] == 10.0
    flat = shared_bins(np.array([2.0]), np.array([2.0]), n_bins=4)
    assert flat[0] < 2.0 < flat[-1]


def test_parse_distance():
    spec = parse_distance("A:284:CA, A:225:CA")
    assert (spec.atom_a, spec.atom_b, spec.label) == ("A:284:CA", "A:225:CA", "A:284:CA-A:225:CA")
    for bad in ("A:284:CA", "A:1:CA,A:2:CA,A:3:CA", ",A:1:CA", "A:1:CA,A:1:CA"):
        with pytest.raises(InputError, match="--distance"):
            parse_distance(bad)


def test_conditional_correlation_hand_cases():
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    assert conditional_distance_correlation(2 * truth + 1, truth) == pytest.approx(1.0)
    assert conditional_distance_correlation(-truth, truth) == pytest.approx(-1.0)
    # Posterior samples (N, S): each sample is paired with its particle's truth.
    samples = np.stack([truth + 1.0, truth - 1.0], axis=1)
    x = np.repeat(truth, 2)
    y = samples.reshape(-1)
    expected = np.corrcoef(x, y)[0, 1]
    assert conditional_distance_correlation(samples, truth) == pytest.approx(expected)
    with pytest.raises(ValueError):
        conditional_distance_correlation(np.ones((3, 2)), truth)
    assert np.isnan(conditional_distance_correlation(np.ones(4), truth))  # no spread: undefined


def _rod_decoder(z: torch.Tensor) -> torch.Tensor:
    """z (..., 2) -> 2 atoms (..., 2, 3): the origin and (z0, z1, 0); their distance is |z|."""
    coords = torch.zeros(*z.shape[:-1], 2, 3, dtype=z.dtype)
    coords[..., 1, :2] = z
    return coords


def test_posterior_distances_with_a_known_decoder():
    mu = np.array([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]], dtype=np.float32)
    exact = Latents(mu=mu, sigma=np.zeros_like(mu), index=np.arange(3))
    d = posterior_distances(_rod_decoder, exact, np.array([[0, 1]]), n_samples=4, seed=0, batch=2)
    assert d.shape == (3, 4, 1)
    np.testing.assert_allclose(d[..., 0], np.array([[5.0] * 4, [10.0] * 4, [1.0] * 4]), rtol=1e-6)
    noisy = Latents(mu=mu, sigma=np.full_like(mu, 0.5), index=np.arange(3))
    a = posterior_distances(_rod_decoder, noisy, np.array([[0, 1]]), n_samples=64, seed=3, batch=2)
    b = posterior_distances(_rod_decoder, noisy, np.array([[0, 1]]), n_samples=64, seed=3, batch=3)
    np.testing.assert_allclose(a[:2], b[:2])  # same seed, same first batch -> same samples
    assert np.all(np.abs(a[1].mean() - 10.0) < 0.5)
    truth = np.array([5.0, 10.0, 1.0])
    assert conditional_distance_correlation(a[..., 0], truth) > 0.9


def test_read_latents_and_errors(tmp_path):
    path = tmp_path / "latents.npz"
    np.savez(path, mu=np.zeros((5, 32)), sigma=np.ones((5, 32)), index=np.arange(5))
    lat = read_latents(tmp_path)  # a run folder means RUN/latents.npz
    assert lat.mu.shape == (5, 32) and lat.index.tolist() == [0, 1, 2, 3, 4]
    np.savez(path, mu=np.zeros((5, 32)), index=np.arange(5))
    with pytest.raises(InputError, match="lacks the keys sigma"):
        read_latents(path)
    np.savez(path, mu=np.zeros((5, 32)), sigma=np.ones((4, 32)), index=np.arange(5))
    with pytest.raises(InputError, match=r"latents.npz: expected mu and sigma"):
        read_latents(path)
    with pytest.raises(InputError, match="not found"):
        read_latents(tmp_path / "nothing.npz")


def test_latent_pca_finds_the_spread_axis():
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    direction = np.zeros(32)
    direction[[3, 7]] = [0.6, -0.8]
    mu = t[:, None] * 5.0 * direction + rng.normal(size=(200, 32)) * 0.01
    proj, explained = latent_pca(mu, 2)
    assert proj.shape == (200, 2) and explained[0] > 0.99
    assert abs(np.corrcoef(proj[:, 0], t)[0, 1]) > 0.999
    # The sign convention: the largest loading (|-0.8| on axis 7) is positive, so proj ~ -5 t.
    assert np.corrcoef(proj[:, 0], t)[0, 1] < 0
