"""Optimal rigid superposition (Kabsch) and RMSD, single pairs and all pairs of two ensembles.

Conventions: coordinates ``(..., A, 3)`` in Angstrom, rotations act on column vectors, so the
superposed mobile structure is ``mobile @ R^T + t``.

``kabsch``/``rmsd`` wrap roma's Kabsch-Umeyama registration (differentiable, any batch shape).
``pairwise_rmsd`` is the all-pairs version used by EMD-RMSD: it never loops over pairs. After
centring, the optimal RMSD of a pair depends only on the 3x3 correlation matrix ``H = X^T Y``; all
``N*M`` of them come from one matrix product, and the largest eigenvalue of Horn's 4x4 quaternion
matrix of each ``H`` (the maximal ``trace(R H)``) is found by Newton's method on its characteristic
polynomial (Theobald's QCP, Acta Cryst. A61, 2005). That is elementwise arithmetic on all pairs at
once, much faster here than a batched 3x3 SVD, and accurate to float64 rounding except where that
eigenvalue is a double root (collinear atoms), where it is good to ~1e-8 relative.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import overload

import numpy as np
import roma
import torch

__all__ = ["kabsch", "rmsd", "pairwise_rmsd", "centered"]


def centered(coords: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract the (weighted) centroid: ``coords (..., A, 3)`` -> ``(..., A, 3)``."""
    if weights is None:
        return coords - coords.mean(dim=-2, keepdim=True)
    w = weights / weights.sum(dim=-1, keepdim=True)
    return coords - (w.unsqueeze(-1) * coords).sum(dim=-2, keepdim=True)


def kabsch(
    mobile: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proper rotation ``R (..., 3, 3)`` and translation ``t (..., 3)`` minimising
    ``sum_a w_a |R mobile_a + t - target_a|^2``, so that ``mobile @ R^T + t ~ target``.

    mobile, target: (..., A, 3) in A (batch shapes broadcast); weights: (..., A), non-negative.
    Differentiable (through roma's SVD).
    """
    mobile, target = torch.broadcast_tensors(mobile, target)
    if weights is not None:
        weights = weights.to(mobile.dtype).expand(mobile.shape[:-1])
    return roma.rigid_points_registration(mobile, target, weights=weights)


def rmsd(
    a: torch.Tensor, b: torch.Tensor, superpose: bool = True, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSD in A between ``a (..., A, 3)`` and ``b (..., A, 3)`` -> ``(...)``.

    With ``superpose`` the optimal rigid motion of ``a`` onto ``b`` is applied first (Kabsch);
    otherwise the coordinates are compared as given. ``weights (..., A)`` gives a weighted RMSD.
    """
    a, b = torch.broadcast_tensors(a, b)
    if superpose:
        rot, trans = kabsch(a, b, weights)
        a = a @ rot.transpose(-1, -2) + trans.unsqueeze(-2)
    sq = ((a - b) ** 2).sum(dim=-1)
    if weights is None:
        return sq.mean(dim=-1).sqrt()
    w = weights.to(sq.dtype).expand(sq.shape)
    return ((w * sq).sum(dim=-1) / w.sum(dim=-1)).sqrt()


def _as_float64_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)


@overload
def pairwise_rmsd(
    X: np.ndarray,
    Y: torch.Tensor | np.ndarray,
    chunk: int | None = None,
    max_newton_steps: int = 100,
    workers: int | None = None,
) -> np.ndarray: ...
@overload
def pairwise_rmsd(
    X: torch.Tensor,
    Y: torch.Tensor | np.ndarray,
    chunk: int | None = None,
    max_newton_steps: int = 100,
    workers: int | None = None,
) -> torch.Tensor: ...
def pairwise_rmsd(
    X: torch.Tensor | np.ndarray,
    Y: torch.Tensor | np.ndarray,
    chunk: int | None = None,
    max_newton_steps: int = 100,
    workers: int | None = None,
) -> torch.Tensor | np.ndarray:
    """Superposed RMSD in A for every pair: ``X (N, A, 3)``, ``Y (M, A, 3)`` -> ``(N, M)``.

    Computed in float64 on the inputs' device; returns a numpy array if ``X`` is one, else a tensor.
    Structures are centred, then for each pair ``RMSD^2 = (|X_i|^2 + |Y_j|^2 - 2 lambda_max) / A``
    with ``lambda_max`` = max over rotations of ``trace(R H_ij)``; clamped at 0.

    ``chunk`` rows of X are processed at a time (memory ~``chunk * M * 300`` bytes). On CPU the default
    keeps each elementwise operand at ~16k entries, small enough that torch runs it on one thread and
    it stays in cache, and ``workers`` (default: torch's thread count) Python threads take chunks in
    turn. Chunks in parallel rather than torch's per-operation threads: the ~100 small elementwise
    operations per chunk each end in an OpenMP barrier, which on a loaded machine made the computation
    several times slower (BENCHMARKS.md, section "EMD-RMSD"). On a GPU the default is one large chunk
    at a time.
    """
    return_numpy = not isinstance(X, torch.Tensor)
    Xt, Yt = _as_float64_tensor(X), _as_float64_tensor(Y)
    Yt = Yt.to(Xt.device)
    if Xt.ndim != 3 or Yt.ndim != 3 or Xt.shape[1:] != Yt.shape[1:] or Xt.shape[-1] != 3:
        shapes = f"{tuple(Xt.shape)} and {tuple(Yt.shape)}"
        raise ValueError(f"pairwise_rmsd needs (N, A, 3) and (M, A, 3), got {shapes}")
    n, n_atoms, _ = Xt.shape
    m = Yt.shape[0]
    on_cpu = Xt.device.type == "cpu"
    if chunk is None:
        chunk = max(1, (16384 if on_cpu else 4_194_304) // max(m, 1))
    if workers is None:
        workers = torch.get_num_threads() if on_cpu else 1
    Xc, Yc = centered(Xt), centered(Yt)
    gx = (Xc**2).sum(dim=(1, 2))  # (N,)
    gy = (Yc**2).sum(dim=(1, 2))  # (M,)
    # Y as one (A, 3M) matrix so each chunk of X needs a single GEMM: (3c, A) @ (A, 3M).
    y_mat = Yc.permute(1, 0, 2).reshape(n_atoms, 3 * m)
    out = torch.empty(n, m, dtype=torch.float64, device=Xt.device)

    def rows(start: int) -> None:
        xs = Xc[start : start + chunk]
        c = xs.shape[0]
        h = (xs.transpose(1, 2).reshape(3 * c, n_atoms) @ y_mat).reshape(c, 3, m, 3)
        # (3, 3, c, M), contiguous: each of the 9 entries is then a dense (c, M) array for the
        # elementwise work below (strided views would make every one of ~100 operations slower).
        h = h.permute(1, 3, 0, 2).contiguous()
        g = gx[start : start + c, None] + gy[None, :]
        lam = _max_trace(h, 0.5 * g, max_newton_steps)
        out[start : start + c] = ((g - 2.0 * lam) / n_atoms).clamp_min(0.0).sqrt()

    starts = range(0, n, chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(rows, starts):  # iterating re-raises a worker's exception
                pass
    else:
        for start in starts:
            rows(start)
    return out.cpu().numpy() if return_numpy else out


def _max_trace(h: torch.Tensor, upper: torch.Tensor, max_steps: int) -> torch.Tensor:
    """Largest eigenvalue of Horn's key matrix for correlation matrices ``h (3, 3, ...)`` (the matrix
    indices lead, so each entry ``h[i, j]`` is a dense array), i.e. the
    maximum over proper rotations R of ``trace(R h)``; ``upper (...)`` must bound it from above
    (``(|X|^2 + |Y|^2) / 2`` does, by Cauchy-Schwarz).

    The key matrix K is symmetric and traceless, so its characteristic polynomial is
    ``l^4 + c2 l^2 + c1 l + c0`` with ``c2 = -2 |h|_F^2``, ``c1 = -8 det(h)``, ``c0 = det(K)``. All its
    roots are real, so Newton's method started above the largest root decreases monotonically onto it.
    """
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = h
    c2 = -2.0 * (h * h).sum(dim=(0, 1))
    det_h = sxx * (syy * szz - syz * szy) - sxy * (syx * szz - syz * szx) + sxz * (syx * szy - syy * szx)
    c1 = -8.0 * det_h
    # Horn's symmetric 4x4 matrix, rows a0..a3; det by Laplace expansion over 2x2 minors.
    a00, a01, a02, a03 = sxx + syy + szz, syz - szy, szx - sxz, sxy - syx
    a11, a12, a13 = sxx - syy - szz, sxy + syx, szx + sxz
    a22, a23 = -sxx + syy - szz, syz + szy
    a33 = -sxx - syy + szz
    a10, a20, a21, a30, a31, a32 = a01, a02, a12, a03, a13, a23
    s0, s1, s2 = a00 * a11 - a10 * a01, a00 * a12 - a10 * a02, a00 * a13 - a10 * a03
    s3, s4, s5 = a01 * a12 - a11 * a02, a01 * a13 - a11 * a03, a02 * a13 - a12 * a03
    k5, k4, k3 = a22 * a33 - a32 * a23, a21 * a33 - a31 * a23, a21 * a32 - a31 * a22
    k2, k1, k0 = a20 * a33 - a30 * a23, a20 * a32 - a30 * a22, a20 * a31 - a30 * a21
    c0 = s0 * k5 - s1 * k4 + s2 * k3 + s3 * k2 - s4 * k1 + s5 * k0

    lam = upper.clone()
    tol = 1e-13 * upper.abs().clamp_min(1e-300)
    for _ in range(max_steps):
        lam2 = lam * lam
        p = (lam2 + c2) * lam2 + c1 * lam + c0
        dp = 4.0 * lam2 * lam + 2.0 * c2 * lam + c1
        # dp > 0 right of the largest root; where it vanishes (a double root) the step is 0 and we are done.
        step = torch.where(dp > 0, p / torch.where(dp > 0, dp, torch.ones_like(dp)), torch.zeros_like(p))
        lam = lam - step
        if bool((step.abs() <= tol).all()):
            break
    return lam
