"""Distance marginals (paper figures 7-8): inter-atomic distances across an ensemble, compared between
prediction and ground truth by the 1D Wasserstein-1 distance and by mode proportions under cutoffs.

A distance is named by two atom selections, ``"A:284:CA,A:225:CA"`` (chain:residue:atom, parsed by
``structure.select.parse_atom_selection``), so the same distance is found in ensembles whose atom
numbering differs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.stats import wasserstein_distance

from atomvae.errors import InputError
from atomvae.structure.select import parse_atom_selection

__all__ = [
    "DistanceSpec",
    "MarginalComparison",
    "parse_distance",
    "atom_distances",
    "compare_marginal",
    "shared_bins",
    "mode_proportions",
]


@dataclass(frozen=True)
class DistanceSpec:
    """Two atoms by selection string, e.g. ``DistanceSpec("A:284:CA", "A:225:CA")``."""

    atom_a: str
    atom_b: str

    @property
    def label(self) -> str:
        return f"{self.atom_a}-{self.atom_b}"

    def atom_indices(self, topology, source=None) -> tuple[int, int]:
        """Atom indices of both ends in ``topology`` (InputError naming ``source`` if one is absent)."""
        return (
            parse_atom_selection(self.atom_a, topology, source),
            parse_atom_selection(self.atom_b, topology, source),
        )


def parse_distance(text: str) -> DistanceSpec:
    """``"A:284:CA,A:225:CA"`` -> DistanceSpec. InputError when it is not two comma-separated selections."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise InputError(
            None, f"--distance {text!r}: expected two atoms separated by a comma, e.g. A:284:CA,A:225:CA"
        )
    if parts[0] == parts[1]:
        raise InputError(None, f"--distance {text!r}: both ends are the same atom")
    return DistanceSpec(parts[0], parts[1])


def atom_distances(coords: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Distances in A: ``coords (M, A, 3)``, ``pairs (P, 2)`` atom indices -> ``(M, P)``."""
    coords = np.asarray(coords, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.linalg.norm(coords[:, pairs[:, 0]] - coords[:, pairs[:, 1]], axis=-1)


@dataclass(frozen=True)
class MarginalComparison:
    """One distance: W1 between the predicted and true marginals (A), their summaries and, with a
    cutoff, the fraction of structures below it (``*_below``; the rest is at or above)."""

    label: str
    wasserstein_1: float
    pred_mean: float
    pred_std: float
    gt_mean: float
    gt_std: float
    cutoff: float | None = None
    pred_below: float | None = None
    gt_below: float | None = None

    def to_dict(self) -> dict:
        out = {
            k: getattr(self, k)
            for k in ("label", "wasserstein_1", "pred_mean", "pred_std", "gt_mean", "gt_std")
        }
        if self.cutoff is not None:
            assert self.pred_below is not None and self.gt_below is not None  # set with every cutoff
            out.update(
                cutoff=self.cutoff,
                pred_below=self.pred_below,
                pred_at_or_above=1 - self.pred_below,
                gt_below=self.gt_below,
                gt_at_or_above=1 - self.gt_below,
            )
        return out


def compare_marginal(
    pred: np.ndarray, gt: np.ndarray, label: str, cutoff: float | None = None
) -> MarginalComparison:
    """Compare one distance: ``pred (M,)`` and ``gt (K,)`` distances in A."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    below = {}
    if cutoff is not None:
        below = dict(pred_below=float(np.mean(pred < cutoff)), gt_below=float(np.mean(gt < cutoff)))
    return MarginalComparison(
        label=label,
        wasserstein_1=float(wasserstein_distance(pred, gt)),
        pred_mean=float(pred.mean()),
        pred_std=float(pred.std()),
        gt_mean=float(gt.mean()),
        gt_std=float(gt.std()),
        cutoff=None if cutoff is None else float(cutoff),
        **below,
    )


def shared_bins(pred: np.ndarray, gt: np.ndarray, n_bins: int = 40) -> np.ndarray:
    """``n_bins + 1`` equal-width edges spanning both samples, so the two histograms are comparable."""
    lo = float(min(np.min(pred), np.min(gt)))
    hi = float(max(np.max(pred), np.max(gt)))
    if hi - lo < 1e-9:  # a constant distance still needs a visible bin
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def mode_proportions(distances: np.ndarray, cutoffs: list[float], labels: list[str]) -> dict[str, float]:
    """Fraction of structures in each group of the cutoffs' grid (paper figure 8b).

    distances: (M, P) for P distances, each with its cutoff (A). Groups are every combination of
    ``< cutoff`` / ``>= cutoff`` per distance, named e.g. ``"d1 < 6.5, d2 >= 37"``; fractions sum to 1.
    """
    distances = np.asarray(distances, np.float64).reshape(len(distances), -1)
    if distances.shape[1] != len(cutoffs) or len(labels) != len(cutoffs):
        raise ValueError("mode_proportions needs one cutoff and one label per distance column")
    below = distances < np.asarray(cutoffs, np.float64)
    out = {}
    for combo in itertools.product((True, False), repeat=len(cutoffs)):
        name = ", ".join(
            f"{lab} {'<' if b else '>='} {c:g}" for lab, b, c in zip(labels, combo, cutoffs, strict=True)
        )
        out[name] = float(np.mean(np.all(below == np.array(combo), axis=1)))
    return out
