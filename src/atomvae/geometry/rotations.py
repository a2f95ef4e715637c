"""Rotation matrices: 6D -> SO(3) by Gram-Schmidt (paper section 9) and uniform random rotations.

Matrices act on column vectors (``x_out = R @ x``). Everything is batched over leading dimensions
and keeps the input's device and dtype.
"""

from __future__ import annotations

import roma
import torch


def _norm_clamped(v: torch.Tensor, floor: float) -> torch.Tensor:
    """Euclidean norm over the last axis, kept >= ``floor`` so that neither the value nor its
    gradient is ever inf/NaN (``torch.linalg.norm`` has a NaN gradient at exactly 0)."""
    return torch.sqrt(torch.clamp_min((v * v).sum(-1, keepdim=True), floor * floor))


def _unit_scale(v: torch.Tensor) -> torch.Tensor:
    """v divided by its largest absolute component (left at 0 if v is 0), so that norms neither
    underflow nor overflow. Gram-Schmidt ignores positive scale, so the scale is detached: the
    gradient through it is zero anyway."""
    scale = v.detach().abs().amax(-1, keepdim=True)
    return v / torch.where(scale > 0, scale, torch.ones_like(scale))


def _any_perpendicular(e1: torch.Tensor) -> torch.Tensor:
    """A unit vector perpendicular to the unit vector ``e1`` (..., 3): e1 projected out of the
    coordinate axis least aligned with it."""
    axis_index = e1.detach().abs().argmin(dim=-1, keepdim=True)
    axis = torch.zeros_like(e1).scatter_(-1, axis_index, 1.0)
    u = axis - e1 * (e1 * axis).sum(-1, keepdim=True)
    return u / _norm_clamped(u, 0.5)  # |u| >= sqrt(2/3) by the choice of axis


def gram_schmidt(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Rotation matrix with columns e1, e2, e3 from two vectors, exactly as paper section 9:

    e1 = v1/|v1|,  u2 = v2 - e1 (e1 . v2),  e2 = u2/|u2|,  e3 = e1 x e2,  R = (e1, e2, e3).

    v1, v2: (..., 3) (broadcast together) -> R: (..., 3, 3) with det +1. Differentiable.

    roma.special_gramschmidt computes the same columns, but for degenerate input (v2 parallel to v1,
    or a zero vector) it returns a zero column and NaN gradients. The network can produce such
    inputs, so we write the few lines ourselves. u2 is projected twice ("twice is enough") so e2 stays
    orthogonal to e1 when v2 is almost parallel to v1. Entries that are degenerate (v1 or u2 vanishing
    relative to machine precision, or too small to square) are recomputed by a slower robust path;
    the common case costs about what roma's does, plus one reduction for the check (a device sync on
    GPU).
    """
    v1, v2 = torch.broadcast_tensors(v1, v2)
    finfo = torch.finfo(v1.dtype)
    floor = float(finfo.tiny) ** 0.5  # squared norms below this: treat as degenerate (keeps rsqrt' finite)
    eps = 16 * float(finfo.eps)  # below this relative size the direction of u2 is rounding noise
    n1_sq = (v1 * v1).sum(-1, keepdim=True)
    e1 = v1 * torch.rsqrt(n1_sq.clamp_min(floor))
    u2 = v2 - e1 * (e1 * v2).sum(-1, keepdim=True)
    u2 = u2 - e1 * (e1 * u2).sum(-1, keepdim=True)
    n2_sq = (u2 * u2).sum(-1, keepdim=True)
    e2 = u2 * torch.rsqrt(n2_sq.clamp_min(floor))
    R = torch.stack((e1, e2, torch.linalg.cross(e1, e2, dim=-1)), dim=-1)
    with torch.no_grad():
        bad = (n1_sq <= floor) | (n2_sq <= floor) | (n2_sq <= eps * eps * (v2 * v2).sum(-1, keepdim=True))
    if bad.any():
        R = torch.where(bad.unsqueeze(-1), _gram_schmidt_robust(v1, v2), R)
    return R


def _gram_schmidt_robust(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt that returns a rotation with finite gradients for any input: inputs are rescaled to
    unit max-component (tiny or huge vectors work), norms are clamped, and where v1 or u2 vanishes a
    fixed perpendicular direction takes its place. Equal to the formula away from degeneracy."""
    v1, v2 = torch.broadcast_tensors(_unit_scale(v1), _unit_scale(v2))
    eps = 16 * float(torch.finfo(v1.dtype).eps)

    n1 = _norm_clamped(v1, 0.5)  # after rescaling |v1| is 0 or in [1, sqrt 3]
    x_axis = torch.zeros_like(v1)
    x_axis[..., 0] = 1.0
    e1 = torch.where(n1 > 0.5, v1 / n1, x_axis)

    u2 = v2 - e1 * (e1 * v2).sum(-1, keepdim=True)
    u2 = u2 - e1 * (e1 * u2).sum(-1, keepdim=True)
    n2 = _norm_clamped(u2, eps)
    e2 = torch.where(n2 > eps, u2 / n2, _any_perpendicular(e1))

    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack((e1, e2, e3), dim=-1)


def six_d_to_rotation(x: torch.Tensor) -> torch.Tensor:
    """x: (..., 6) with v1 = x[..., :3], v2 = x[..., 3:] -> (..., 3, 3) by :func:`gram_schmidt`."""
    return gram_schmidt(x[..., :3], x[..., 3:])


def rotation_to_six_d(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`six_d_to_rotation` up to scale: R (..., 3, 3) -> its first two columns (..., 6)."""
    return torch.cat((R[..., :, 0], R[..., :, 1]), dim=-1)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n rotation matrices (n, 3, 3) drawn uniformly (Haar measure) on SO(3).

    Uses roma's Shoemake quaternion sampler; the explicit ``generator`` makes the draw reproducible.
    ``device`` defaults to the generator's device.
    """
    if device is None and generator is not None:
        device = generator.device
    quat = roma.random_unitquat(n, dtype=dtype, device=device, generator=generator)
    return roma.unitquat_to_rotmat(quat)
