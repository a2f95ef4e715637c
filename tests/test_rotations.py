"""Gram-Schmidt (paper section 9), 6D rotations, uniform random rotations."""

import math

import numpy as np
import pytest
import roma
import torch
from scipy import stats

from atomvae.geometry.rotations import (
    _gram_schmidt_robust,
    gram_schmidt,
    random_rotations,
    rotation_to_six_d,
    six_d_to_rotation,
)


def _paper_formula(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    e1 = v1 / np.linalg.norm(v1)
    u2 = v2 - e1 * (e1 @ v2)
    e2 = u2 / np.linalg.norm(u2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)


def _assert_rotation(R: torch.Tensor, atol: float):
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    assert torch.isfinite(R).all()
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=atol)
    assert torch.allclose(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol)


def test_gram_schmidt_is_the_paper_formula_with_columns():
    gen = torch.Generator().manual_seed(0)
    v1 = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    v2 = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    R = gram_schmidt(v1, v2)
    expected = np.stack([_paper_formula(a, b) for a, b in zip(v1.numpy(), v2.numpy(), strict=True)])
    np.testing.assert_allclose(R.numpy(), expected, atol=1e-12)
    # Columns: e1 is v1's direction, e2 lies in the span of v1, v2 on v2's side.
    np.testing.assert_allclose(R[..., :, 0].numpy(), (v1 / v1.norm(dim=-1, keepdim=True)).numpy(), atol=1e-12)
    assert ((R[..., :, 1] * v2).sum(-1) > 0).all()
    # roma computes the same columns for well-conditioned inputs.
    torch.testing.assert_close(R, roma.special_gramschmidt(torch.stack([v1, v2], dim=-1)))
    _assert_rotation(R, 1e-12)


def test_gram_schmidt_broadcasts_and_keeps_dtype():
    v1 = torch.randn(4, 1, 3)
    v2 = torch.randn(1, 5, 3)
    R = gram_schmidt(v1, v2)
    assert R.shape == (4, 5, 3, 3) and R.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_schmidt_near_degenerate_inputs_give_rotations_and_finite_gradients(dtype):
    gen = torch.Generator().manual_seed(1)
    v1 = torch.randn(8, 3, generator=gen, dtype=dtype)
    noise = torch.randn(8, 3, generator=gen, dtype=dtype)
    cases = {
        "parallel": (v1, 2.5 * v1),
        "antiparallel": (v1, -v1),
        "almost parallel": (v1, v1 + 1e-9 * noise),
        "zero v2": (v1, torch.zeros_like(v1)),
        "zero v1": (torch.zeros_like(v1), noise),
        "both zero": (torch.zeros_like(v1), torch.zeros_like(v1)),
        "tiny": (1e-20 * v1, 1e-20 * noise),
        "huge": (1e15 * v1, 1e15 * noise),
        "axis parallel": (torch.tensor([[0.0, 0, 1]], dtype=dtype), torch.tensor([[0.0, 0, 3]], dtype=dtype)),
    }
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, (a, b) in cases.items():
        a = a.clone().requires_grad_(True)
        b = b.clone().requires_grad_(True)
        R = gram_schmidt(a, b)
        _assert_rotation(R.detach(), atol)
        (R * torch.arange(9, dtype=dtype).view(3, 3)).sum().backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), name


def test_mixed_batch_degenerate_entries_do_not_disturb_the_others():
    gen = torch.Generator().manual_seed(7)
    v1 = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    v2 = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    v2[3] = 2 * v1[3]
    v1[6] = 0.0
    a, b = v1.clone().requires_grad_(True), v2.clone().requires_grad_(True)
    R = gram_schmidt(a, b)
    _assert_rotation(R.detach(), 1e-12)
    good = [i for i in range(10) if i not in (3, 6)]
    expected = np.stack([_paper_formula(v1[i].numpy(), v2[i].numpy()) for i in good])
    np.testing.assert_allclose(R[good].detach().numpy(), expected, atol=1e-12)
    R.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # The gradient of a good entry is the same as when computed alone.
    a1, b1 = v1[:1].clone().requires_grad_(True), v2[:1].clone().requires_grad_(True)
    gram_schmidt(a1, b1).sum().backward()
    torch.testing.assert_close(a.grad[:1], a1.grad)
    # The robust path alone is the same formula on generic input.
    torch.testing.assert_close(_gram_schmidt_robust(v1[good], v2[good]), R[good].detach())


def test_gram_schmidt_tiny_inputs_keep_their_direction():
    v1 = torch.tensor([[1e-20, 0.0, 0.0]])
    v2 = torch.tensor([[1e-20, 1e-20, 0.0]])
    torch.testing.assert_close(gram_schmidt(v1, v2)[0], torch.eye(3))


def test_gram_schmidt_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    v1 = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v2 = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram_schmidt, (v1, v2))
    # Also close to (but not at) degeneracy, where the Jacobian is large but smooth.
    close = v1.detach() + 1e-3 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    v2_close = close.requires_grad_(True)
    assert torch.autograd.gradcheck(gram_schmidt, (v1, v2_close))
    # The robust path (used for degenerate entries) has the same derivatives where both apply.
    assert torch.autograd.gradcheck(_gram_schmidt_robust, (v1, v2))
    # Tiny inputs (robust path): R is scale invariant, so the gradient at s*v is the gradient at v / s.
    weights = torch.randn(6, 3, 3, generator=gen, dtype=torch.float64)
    grads = []
    for scale in (1.0, 1e-100):  # 1e-100 squared is below the fast path's floor
        a = (scale * v1.detach()).requires_grad_(True)
        (gram_schmidt(a, v2.detach()) * weights).sum().backward()
        grads.append(a.grad * scale)
    torch.testing.assert_close(grads[1], grads[0])


def test_six_d_round_trip():
    R = random_rotations(20, torch.Generator().manual_seed(3), dtype=torch.float64)
    six = rotation_to_six_d(R)
    assert six.shape == (20, 6)
    torch.testing.assert_close(six_d_to_rotation(six), R)
    # Scaling and adding any multiple of v1 to v2 does not change the rotation.
    v1, v2 = six[:, :3], six[:, 3:]
    torch.testing.assert_close(six_d_to_rotation(torch.cat([3 * v1, 0.5 * v2 - 2 * v1], -1)), R)


def test_random_rotations_are_rotations_and_reproducible():
    R = random_rotations(1000, torch.Generator().manual_seed(4), dtype=torch.float64)
    assert R.shape == (1000, 3, 3) and R.dtype == torch.float64
    _assert_rotation(R, 1e-12)

    def draw(seed):
        return random_rotations(1000, torch.Generator().manual_seed(seed), dtype=torch.float64)

    torch.testing.assert_close(R, draw(4))
    assert not torch.allclose(R, draw(5))


def test_random_rotations_are_haar_uniform():
    n = 20000
    R = random_rotations(n, torch.Generator().manual_seed(6), dtype=torch.float64).numpy()
    # Haar on SO(3): every entry has mean 0 and variance 1/3; E[tr R] = 0 and E[(tr R)^2] = 1.
    np.testing.assert_allclose(R.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose((R**2).mean(0), 1 / 3, atol=0.02)
    trace = np.trace(R, axis1=1, axis2=2)
    assert abs(trace.mean()) < 0.03
    assert abs((trace**2).mean() - 1.0) < 0.05
    # Rotation angle theta has CDF (theta - sin theta) / pi.
    theta = np.arccos(np.clip((trace - 1) / 2, -1, 1))
    p_value = stats.kstest(theta, lambda t: (t - np.sin(t)) / math.pi).pvalue
    assert p_value > 1e-3
    # Axes are isotropic: the rotated z axis is uniform on the sphere, so its z component is U(-1, 1).
    assert stats.kstest(R[:, 2, 2], "uniform", args=(-1, 2)).pvalue > 1e-3
