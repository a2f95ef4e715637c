"""RELION Euler angles (ZYZ, rlnAngleRot/Tilt/Psi in degrees) and origins <-> our rotations and shifts.

This is the only place in atomvae that knows the RELION convention. RELION's matrix

    A = (Rz(rot) Ry(tilt) Rz(psi))^T = scipy Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).inv()

maps model coordinates into the image frame (``x_img = A @ x_model``) and the image is the projection
along +z of the rotated model, so A is our rotation R. Example: rot = psi = 0, tilt = 90 projects
along the model's x axis. ``rlnOriginX/YAngst`` is the translation that re-centres the particle, so
the particle (and our rendered projection) sits at shift ``t = -origin`` in the image.

All functions accept torch tensors or numpy arrays / Python floats: torch in -> torch out (same
device and dtype, differentiable where stated), anything else -> numpy float64 out.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, True
    return torch.as_tensor(np.asarray(x, dtype=np.float64)), False


def _out(x: torch.Tensor, was_torch: bool):
    return x if was_torch else x.detach().cpu().numpy()


def relion_to_matrix(rot, tilt, psi):
    """RELION Euler angles (...) in degrees -> R (..., 3, 3) mapping model coordinates to the image frame.

    rot, tilt, psi broadcast together; if any is a torch tensor the result is torch on its device.
    Differentiable for torch input. Written out (RELION's
    ``Euler_angles2matrix``) rather than through scipy so it stays in torch and batched.
    """
    like = next((a for a in (rot, tilt, psi) if isinstance(a, torch.Tensor)), None)
    was_torch = like is not None
    rot, tilt, psi = (_as_tensor(a)[0] for a in (rot, tilt, psi))
    if was_torch:  # mixed input: follow the tensor's device and (floating) dtype
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        rot, tilt, psi = (a.to(device=like.device, dtype=dtype) for a in (rot, tilt, psi))
    rot, tilt, psi = torch.broadcast_tensors(*(torch.deg2rad(a) for a in (rot, tilt, psi)))
    ca, sa = torch.cos(rot), torch.sin(rot)
    cb, sb = torch.cos(tilt), torch.sin(tilt)
    cg, sg = torch.cos(psi), torch.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = (
        (cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb),
        (-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb),
        (sc, ss, cb),
    )
    R = torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)
    return _out(R, was_torch)


def matrix_to_relion(R):
    """R (..., 3, 3) rotation(s) -> RELION angles (..., 3) in degrees: (rot, tilt, psi).

    tilt is in [0, 180]; rot and psi in (-180, 180]. rot and tilt come from R's third row (the
    projection direction), then psi from what is left, ``R @ relion_to_matrix(rot, tilt, 0)^T``,
    an in-plane rotation Rz(-psi). So ``relion_to_matrix(*matrix_to_relion(R))`` reproduces R to
    rounding even at and near gimbal lock (tilt 0 or 180, where only rot +/- psi is defined); exactly
    at lock rot is set to 0, as RELION does. Not meant to be differentiated (atan2 branches).
    """
    R, was_torch = _as_tensor(R)
    row_xy = torch.sqrt(R[..., 2, 0] ** 2 + R[..., 2, 1] ** 2)  # |sin tilt|
    tilt = torch.atan2(row_xy, R[..., 2, 2])
    locked = row_xy <= 16 * float(torch.finfo(R.dtype).eps)
    rot = torch.where(locked, torch.zeros_like(tilt), torch.atan2(R[..., 2, 1], R[..., 2, 0]))
    without_psi = relion_to_matrix(torch.rad2deg(rot), torch.rad2deg(tilt), torch.zeros_like(rot))
    in_plane = R @ without_psi.transpose(-1, -2)  # = Rz(-psi)
    psi = torch.atan2(in_plane[..., 0, 1], in_plane[..., 0, 0])
    angles = torch.rad2deg(torch.stack((rot, tilt, psi), dim=-1))
    return _out(angles, was_torch)


def relion_origin_to_shift(origin_xy_A):
    """(rlnOriginXAngst, rlnOriginYAngst) (..., 2) -> our projection shift t (..., 2) in A: t = -origin."""
    origin, was_torch = _as_tensor(origin_xy_A)
    return _out(-origin, was_torch)


def shift_to_relion_origin(shift_xy_A):
    """Our projection shift t (..., 2) in A -> (rlnOriginXAngst, rlnOriginYAngst) (..., 2): origin = -t."""
    shift, was_torch = _as_tensor(shift_xy_A)
    return _out(-shift, was_torch)
