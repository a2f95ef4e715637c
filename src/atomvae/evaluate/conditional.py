"""Conditional accuracy (paper figure 9) and the latent space of a trained run.

Array level (no model needed): ``conditional_distance_correlation`` and ``latent_pca``.
Run level, the only place that touches a trained model: ``read_latents`` reads the ``latents.npz`` of
``atomvae encode`` (keys ``mu (N, L)``, ``sigma (N, L)``, ``index (N,)`` = particle indices into the
particle file), and ``posterior_distances`` decodes posterior samples ``z = mu + sigma * eps`` with any
``decode(z (..., L)) -> coords (..., A, 3)`` (a run's ``AtomVAE.decode``) and measures distances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomvae.errors import InputError

__all__ = [
    "Latents",
    "read_latents",
    "conditional_distance_correlation",
    "posterior_distances",
    "latent_pca",
]


def conditional_distance_correlation(pred_distances: np.ndarray, true_distances: np.ndarray) -> float:
    """Pearson r between predicted and true distances of the same particles.

    pred_distances: (N,) one prediction per particle, or (N, S) S posterior samples per particle (each
    sample is paired with its particle's true distance, as the points of paper figure 9); true_distances:
    (N,) in A. NaN when either side has no spread (r is undefined).
    """
    pred = np.asarray(pred_distances, np.float64)
    truth = np.asarray(true_distances, np.float64).reshape(-1)
    if pred.shape[0] != truth.shape[0] or pred.ndim not in (1, 2):
        raise ValueError(f"need pred (N,) or (N, S) and truth (N,), got {pred.shape} and {truth.shape}")
    if pred.ndim == 2:
        truth = np.repeat(truth, pred.shape[1])
        pred = pred.reshape(-1)
    pc, tc = pred - pred.mean(), truth - truth.mean()
    denom = np.sqrt((pc * pc).sum() * (tc * tc).sum())
    return float((pc * tc).sum() / denom) if denom > 0 else float("nan")


@dataclass(frozen=True)
class Latents:
    """Posterior of each encoded particle: mu, sigma (N, L); index (N,) into the particle file."""

    mu: np.ndarray
    sigma: np.ndarray
    index: np.ndarray


def read_latents(path: str | Path) -> Latents:
    """Read ``latents.npz`` (from ``atomvae encode``); a run folder means ``RUN/latents.npz``."""
    path = Path(path)
    if path.is_dir():
        path = path / "latents.npz"
    if not path.is_file():
        raise InputError(path, "latents file not found (run `atomvae encode` on the run first)")
    try:
        with np.load(path) as data:
            missing = [k for k in ("mu", "sigma", "index") if k not in data]
            if missing:
                raise InputError(path, f"latents file lacks the keys {', '.join(missing)}")
            mu, sigma, index = data["mu"], data["sigma"], data["index"]
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable .npz file: {err}") from None
    if mu.ndim != 2 or sigma.shape != mu.shape or index.shape != (len(mu),):
        raise InputError(
            path, f"expected mu and sigma (N, L) and index (N,), got {mu.shape}, {sigma.shape}, {index.shape}"
        )
    return Latents(mu=mu.astype(np.float32), sigma=sigma.astype(np.float32), index=index.astype(np.int64))


@torch.no_grad()
def posterior_distances(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: Latents,
    pairs: np.ndarray,
    n_samples: int,
    seed: int,
    batch: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Distances in posterior samples: ``(N, S, P)`` for ``pairs (P, 2)`` atom indices of decode's output.

    Each particle's S latents are ``mu + sigma * eps`` with eps from a generator seeded by ``seed``;
    decoded ``batch`` particles at a time so memory stays at ``batch * S`` structures.
    """
    pairs_t = torch.as_tensor(np.asarray(pairs, np.int64).reshape(-1, 2), device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    n, dim = latents.mu.shape
    out = np.empty((n, n_samples, len(pairs_t)), dtype=np.float64)
    for start in range(0, n, batch):
        mu = torch.as_tensor(latents.mu[start : start + batch], device=device)
        sigma = torch.as_tensor(latents.sigma[start : start + batch], device=device)
        eps = torch.randn(len(mu), n_samples, dim, generator=generator, device=device, dtype=mu.dtype)
        coords = decode(mu[:, None] + sigma[:, None] * eps)  # (b, S, A, 3)
        diff = coords[..., pairs_t[:, 0], :] - coords[..., pairs_t[:, 1], :]
        out[start : start + len(mu)] = diff.norm(dim=-1).double().cpu().numpy()
    return out


def latent_pca(mu: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project posterior means ``mu (N, L)`` on their first principal axes.

    Returns (projection (N, k), explained variance ratio (k,)); axis signs are fixed so the largest
    loading of each component is positive (the picture does not flip between runs).
    """
    x = np.asarray(mu, np.float64)
    x = x - x.mean(axis=0)
    k = min(n_components, *x.shape)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    total = (s**2).sum()
    explained = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return x @ vt.T, explained
