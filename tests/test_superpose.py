"""Kabsch / RMSD / all-pairs RMSD against scipy's Rotation.align_vectors and by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomvae.geometry.superpose import kabsch, pairwise_rmsd, rmsd


def _scipy_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: centre both, best rotation from scipy, plain RMSD."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    rot, _ = Rotation.align_vectors(b, a)
    return float(np.sqrt(((rot.apply(a) - b) ** 2).sum(1).mean()))


def _ensembles(seed: int, n: int, m: int, n_atoms: int, noise: float):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_atoms, 3)) * 8.0
    x = base + rng.normal(size=(n, n_atoms, 3)) * noise
    y = base + rng.normal(size=(m, n_atoms, 3)) * noise
    # Move every Y structure rigidly: RMSD after superposition must not see it.
    rots = Rotation.random(m, random_state=seed).as_matrix()
    y = np.einsum("nij,naj->nai", rots, y) + rng.normal(size=(m, 1, 3)) * 25.0
    return x, y


@pytest.mark.parametrize("seed,n_atoms,noise", [(0, 214, 1.5), (1, 5, 3.0), (2, 40, 0.05), (3, 3, 10.0)])
def test_pairwise_rmsd_matches_scipy_align_vectors(seed, n_atoms, noise):
    x, y = _ensembles(seed, 7, 6, n_atoms, noise)
    got = pairwise_rmsd(x, y, chunk=3)  # chunk smaller than N exercises the chunking
    ref = np.array([[_scipy_rmsd(a, b) for b in y] for a in x])
    assert isinstance(got, np.ndarray) and got.shape == (7, 6)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_pairwise_rmsd_handles_mirror_images():
    """A mirror image cannot be reached by a proper rotation: the det(H) < 0 branch must be taken."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(30, 3)) * 5.0
    mirrored = a * np.array([1.0, 1.0, -1.0])
    got = pairwise_rmsd(a[None], mirrored[None])[0, 0]
    assert got > 0.5
    assert got == pytest.approx(_scipy_rmsd(a, mirrored), rel=1e-9)


def test_pairwise_rmsd_zero_for_rigid_copies_and_tensor_io():
    x, _ = _ensembles(4, 5, 1, 50, 1.0)
    rots = torch.as_tensor(Rotation.random(5, random_state=9).as_matrix())
    xt = torch.as_tensor(x)
    moved = xt @ rots.transpose(-1, -2) + torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
    got = pairwise_rmsd(xt, moved)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(torch.diagonal(got).numpy(), 0.0, atol=1e-5)
    assert (got + torch.eye(5) * 1e3).min() > 0.1  # off-diagonal pairs are different structures


def test_pairwise_rmsd_accepts_float32_and_rejects_bad_shapes():
    x, y = _ensembles(6, 3, 4, 20, 1.0)
    got = pairwise_rmsd(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(got, pairwise_rmsd(x, y), atol=1e-4)
    with pytest.raises(ValueError):
        pairwise_rmsd(x, y[:, :10])


def test_kabsch_recovers_a_known_rigid_motion():
    rng = np.random.default_rng(7)
    mobile = torch.as_tensor(rng.normal(size=(4, 25, 3)) * 6.0)
    rot = torch.as_tensor(Rotation.random(4, random_state=3).as_matrix())
    trans = torch.as_tensor(rng.normal(size=(4, 3)) * 10.0)
    target = mobile @ rot.transpose(-1, -2) + trans[:, None]
    r_fit, t_fit = kabsch(mobile, target)
    torch.testing.assert_close(r_fit, rot, atol=1e-10, rtol=0)
    torch.testing.assert_close(t_fit, trans, atol=1e-9, rtol=0)
    assert torch.allclose(torch.linalg.det(r_fit), torch.ones(4, dtype=torch.float64))


def test_rmsd_agrees_with_pairwise_and_scipy():
    x, y = _ensembles(8, 4, 3, 30, 2.0)
    got = rmsd(torch.as_tensor(x)[:, None], torch.as_tensor(y)[None])  # broadcast to (4, 3)
    np.testing.assert_allclose(got.numpy(), pairwise_rmsd(x, y), rtol=1e-9)
    plain = rmsd(torch.as_tensor(x[0]), torch.as_tensor(y[0]), superpose=False)
    assert float(plain) == pytest.approx(np.sqrt(((x[0] - y[0]) ** 2).sum(1).mean()))


def test_weighted_rmsd_matches_repeated_atoms():
    """Integer weights equal repeating atoms: a hand-checkable definition of the weighted RMSD."""
    rng = np.random.default_rng(11)
    a = torch.as_tensor(rng.normal(size=(6, 3)) * 4.0)
    b = torch.as_tensor(rng.normal(size=(6, 3)) * 4.0)
    w = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    reps = w.long()
    weighted = rmsd(a, b, weights=w)
    repeated = rmsd(a.repeat_interleave(reps, 0), b.repeat_interleave(reps, 0))
    assert float(weighted) == pytest.approx(float(repeated), rel=1e-10)


def test_rmsd_gradient_matches_finite_differences():
    rng = np.random.default_rng(12)
    a = torch.as_tensor(rng.normal(size=(8, 3)) * 3.0).requires_grad_(True)
    b = torch.as_tensor(rng.normal(size=(8, 3)) * 3.0)
    assert torch.autograd.gradcheck(lambda p: rmsd(p, b), (a,), eps=1e-6, atol=1e-6)


def test_pairwise_rmsd_same_result_for_any_chunking_and_workers():
    x, y = _ensembles(13, 11, 9, 30, 1.5)
    ref = pairwise_rmsd(x, y, chunk=11, workers=1)
    for chunk, workers in ((1, 1), (2, 3), (4, 2), (None, None)):
        # Equal up to rounding: GEMM blocking and the Newton stopping step depend on the chunk's shape.
        np.testing.assert_allclose(pairwise_rmsd(x, y, chunk=chunk, workers=workers), ref, rtol=1e-12)
