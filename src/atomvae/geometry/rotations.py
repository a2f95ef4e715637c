"""Rotation matrices: 6D -> SO(3) by Gram-Schmidt (paper section 9) and uniform random rotations.

Matrices act on column vectors (``x_out = R @ x``). Everything is batched over leading dimensions
and keeps the input's device and dtype.
"""

from __future__ import annotations

import roma
import torch


def _norm_clamped(v: torch.Tensor, tiny: float) -> torch.Tensor:
    """Euclidean norm over the last axis, kept >= ``tiny`` so that neither the value nor its
    gradient is ever inf/NaN (``torch.linalg.norm`` has a NaN gradient at exactly 0)."""
    return torch.sqrt(torch.clamp_min((v * v).sum(-1, keepdim=True), tiny * tiny))


def _any_perpendicular(e1: torch.Tensor) -> torch.Tensor:
    """A unit vector perpendicular to the unit vector ``e1`` (..., 3), chosen smoothly per input:
    project out e1 from the coordinate axis least aligned with it."""
    axis_index = e1.detach().abs().argmin(dim=-1, keepdim=True)
    axis = torch.zeros_like(e1).scatter_(-1, axis_index, 1.0)
    u = axis - e1 * (e1 * axis).sum(-1, keepdim=True)
    return u / _norm_clamped(u, 1e-30)


def gram_schmidt(v1: torch.Tensor, v2: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Rotation matrix with columns e1, e2, e3 from two vectors, exactly as paper section 9:

    e1 = v1/|v1|,  u2 = v2 - e1 (e1 . v2),  e2 = u2/|u2|,  e3 = e1 x e2,  R = (e1, e2, e3).

    v1, v2: (..., 3) (broadcast together) -> R: (..., 3, 3) with det +1.

    roma.special_gramschmidt computes the same columns, but for degenerate input (v2 parallel to v1,
    or a zero vector) it returns a zero column and NaN gradients. The network can produce such
    inputs, so we write the few lines ourselves: the norm is clamped at ``eps`` (finite gradients),
    u2 is projected twice ("twice is enough") so e2 stays orthogonal to e1 even when v2 is almost
    parallel to v1, and when v1 or u2 vanishes (|.| < eps relative to the inputs' scale) a fixed
    perpendicular direction takes its place. Far from degeneracy the result is the formula above.
    """
    v1, v2 = torch.broadcast_tensors(v1, v2)
    finfo = torch.finfo(v1.dtype)
    # Relative threshold: below this the direction of u2 is rounding noise.
    eps = float(finfo.eps) * 4 if eps is None else eps
    tiny = float(finfo.tiny) ** 0.5

    n1 = _norm_clamped(v1, tiny)
    x_axis = torch.zeros_like(v1)
    x_axis[..., 0] = 1.0
    e1 = torch.where(n1 > tiny, v1 / n1, x_axis)

    u2 = v2 - e1 * (e1 * v2).sum(-1, keepdim=True)
    u2 = u2 - e1 * (e1 * u2).sum(-1, keepdim=True)
    n2 = _norm_clamped(u2, tiny)
    scale = _norm_clamped(v2, tiny).detach()
    degenerate = n2 <= eps * scale
    e2 = torch.where(degenerate, _any_perpendicular(e1), u2 / n2)

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
