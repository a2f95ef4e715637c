"""Ensemble comparisons beside EMD-RMSD: coverage and matching (COV / MAT) and per-residue RMSF.

COV and MAT (used by CryoSTAR, after molecular conformation generation, e.g. GeoMol): from the RMSD
after superposition between every predicted and every ground-truth structure,

- COV-R (recall): the fraction of ground-truth structures with some predicted structure within the
  threshold; MAT-R: the mean over ground-truth structures of the RMSD to the closest predicted one;
- COV-P (precision) and MAT-P: the same with the roles swapped (predicted structures that some
  ground-truth structure is close to).

High COV and low MAT are good; recall penalises missed states, precision implausible ones.

RMSF: each structure superposed on the ensemble's mean (refined a few times from the first structure),
then the RMS deviation of each atom from its mean position. Superposing within each ensemble makes the
comparison independent of the frames the two ensembles are given in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CoverageMatching", "coverage_matching", "ensemble_rmsf", "compare_rmsf"]


@dataclass(frozen=True)
class CoverageMatching:
    threshold: float  # A
    cov_recall: float
    mat_recall: float  # A
    cov_precision: float
    mat_precision: float  # A

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def coverage_matching(rmsd: np.ndarray, threshold: float) -> CoverageMatching:
    """COV / MAT from ``rmsd (N_pred, N_gt)`` A (e.g. ``geometry.superpose.pairwise_rmsd(pred, gt)``)."""
    rmsd = np.asarray(rmsd, dtype=np.float64)
    if rmsd.ndim != 2 or 0 in rmsd.shape:
        raise ValueError(f"need a non-empty (N_pred, N_gt) RMSD matrix, got {rmsd.shape}")
    closest_pred = rmsd.min(axis=0)  # per gt structure
    closest_gt = rmsd.min(axis=1)  # per predicted structure
    return CoverageMatching(
        threshold=float(threshold),
        cov_recall=float((closest_pred < threshold).mean()),
        mat_recall=float(closest_pred.mean()),
        cov_precision=float((closest_gt < threshold).mean()),
        mat_precision=float(closest_gt.mean()),
    )


def ensemble_rmsf(coords: np.ndarray, iterations: int = 3) -> np.ndarray:
    """RMSF (A, (A,)) of the atoms of ``coords (M, A, 3)`` after superposing every structure on the
    ensemble's mean (the mean is recomputed after each of ``iterations`` superpositions, starting from
    the first structure)."""
    from atomvae.geometry.superpose import kabsch

    x = torch.as_tensor(np.asarray(coords, dtype=np.float64))
    reference = x[0]
    for _ in range(max(1, iterations)):
        rotation, translation = kabsch(x, reference.expand_as(x))
        aligned = x @ rotation.transpose(-1, -2) + translation[:, None, :]
        reference = aligned.mean(dim=0)
    deviation = (aligned - reference).numpy()
    return np.sqrt((deviation**2).sum(-1).mean(0))


def compare_rmsf(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Per-atom RMSF of both ensembles (same atoms, in order) and how they agree: Pearson r and the mean
    absolute difference (A). ``pred (N, A, 3)``, ``gt (M, A, 3)``."""
    rmsf_pred, rmsf_gt = ensemble_rmsf(pred), ensemble_rmsf(gt)
    pc, gc = rmsf_pred - rmsf_pred.mean(), rmsf_gt - rmsf_gt.mean()
    denom = np.sqrt((pc * pc).sum() * (gc * gc).sum())
    return {
        "pred": rmsf_pred,
        "gt": rmsf_gt,
        "pearson_r": float((pc * gc).sum() / denom) if denom > 0 else float("nan"),
        "mean_abs_difference": float(np.abs(rmsf_pred - rmsf_gt).mean()),
    }
