"""K-means of latent points (seeded k-means++ starts, Lloyd iterations, best of several restarts).

Plain numpy: the latents are at most a few 10^5 points of a few dozen dimensions, where this takes
seconds. Clusters are numbered by size (0 = the most populated) so the numbering does not depend on the
order k-means++ happened to pick them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atomvae.errors import InputError


@dataclass(frozen=True)
class KMeansResult:
    """centres (K, D); labels (N,) in 0..K-1, cluster 0 the largest; counts (K,); inertia: the sum of
    squared distances of the points to their centres."""

    centres: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    inertia: float


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances, by the expansion |x|^2 - 2 x.c + |c|^2 (clipped at 0)."""
    d2 = (points * points).sum(1)[:, None] - 2.0 * points @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting centres: the first uniformly, each next one with probability proportional to the squared
    distance to the nearest centre chosen so far (Arthur & Vassilvitskii 2007)."""
    centres = [points[rng.integers(len(points))]]
    nearest = _squared_distances(points, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        # all remaining points coincide with a centre: any point will do (duplicates are handled by Lloyd)
        pick = rng.integers(len(points)) if total <= 0 else rng.choice(len(points), p=nearest / total)
        centres.append(points[pick])
        nearest = np.minimum(nearest, _squared_distances(points, points[pick][None])[:, 0])
    return np.stack(centres)


def _lloyd(
    points: np.ndarray, centres: np.ndarray, max_iterations: int, tolerance: float
) -> tuple[np.ndarray, np.ndarray, float]:
    for _ in range(max_iterations):
        labels = _squared_distances(points, centres).argmin(axis=1)
        updated = centres.copy()
        for c in range(len(centres)):
            members = labels == c
            if members.any():  # an emptied cluster keeps its centre
                updated[c] = points[members].mean(axis=0)
        shift = float(((updated - centres) ** 2).sum())
        centres = updated
        if shift <= tolerance:
            break
    d2 = _squared_distances(points, centres)
    labels = d2.argmin(axis=1)
    return centres, labels, float(d2[np.arange(len(points)), labels].sum())


def kmeans(
    points: np.ndarray,
    k: int,
    seed: int = 0,
    restarts: int = 10,
    max_iterations: int = 300,
    tolerance: float = 1e-8,
) -> KMeansResult:
    """Cluster ``points (N, D)`` into ``k`` clusters; the best (lowest inertia) of ``restarts`` k-means++
    starts drawn from a generator seeded by ``seed``. Clusters are renumbered by decreasing size."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or not np.all(np.isfinite(points)):
        raise InputError("latents", f"need finite points of shape (N, D) to cluster, got {points.shape}")
    if not 1 <= k <= len(points):
        raise InputError("--states", f"need 1 <= K <= the number of particles ({len(points)}), got {k}")
    rng = np.random.default_rng(seed)
    # relative tolerance: the same stopping point whatever the latents' scale
    scale = float(points.var(axis=0).sum()) or 1.0
    starts = (
        _lloyd(points, _kmeans_plus_plus(points, k, rng), max_iterations, tolerance * scale)
        for _ in range(max(1, restarts))
    )
    centres, labels, inertia = min(starts, key=lambda result: result[2])  # ties: the first start
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(-counts, kind="stable")
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    return KMeansResult(
        centres=centres[order], labels=renumber[labels], counts=counts[order], inertia=inertia
    )
