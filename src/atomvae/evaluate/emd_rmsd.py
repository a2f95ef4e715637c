"""EMD-RMSD (paper section 4) and its two references: the base structure alone and the finite-sample floor.

EMD-RMSD between two ensembles of N structures each: the RMSD after optimal rigid superposition for
all N x N pairs (closed form, ``geometry.superpose.pairwise_rmsd``), the optimal one-to-one assignment
of the pairs (Hungarian / LAPJV via ``scipy.optimize.linear_sum_assignment``), and the mean RMSD of the
assigned pairs, in Angstrom.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from atomvae.errors import InputError
from atomvae.geometry.superpose import pairwise_rmsd

__all__ = ["EmdResult", "EmdComparison", "emd_rmsd", "draw_samples", "compare_ensembles"]


@dataclass(frozen=True)
class EmdResult:
    """emd_rmsd: mean assigned RMSD (A); assigned_rmsd (N,) per assigned pair, in pred order;
    gt_index (N,): the gt structure assigned to each pred structure; seconds spent per phase;
    rmsd_matrix (N, N): RMSD of every pred (row) and gt (column) structure, for COV / MAT."""

    emd_rmsd: float
    n: int
    assigned_rmsd: np.ndarray
    gt_index: np.ndarray
    rmsd_seconds: float = 0.0
    assignment_seconds: float = 0.0
    rmsd_matrix: np.ndarray | None = field(default=None, repr=False, compare=False)


def emd_rmsd(pred: np.ndarray, gt: np.ndarray, chunk: int | None = None) -> EmdResult:
    """EMD-RMSD between ``pred (N, A, 3)`` and ``gt (N, A, 3)`` in A (same atoms, same order).

    Invariant to the order of structures and to any rigid motion of any structure.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"emd_rmsd needs two (N, A, 3) arrays of one shape, got {pred.shape} and {gt.shape}")
    t0 = time.perf_counter()
    cost = pairwise_rmsd(pred, gt, chunk=chunk)
    t1 = time.perf_counter()
    rows, cols = linear_sum_assignment(cost)
    t2 = time.perf_counter()
    assigned = cost[rows, cols]
    return EmdResult(
        emd_rmsd=float(assigned.mean()),
        n=len(pred),
        assigned_rmsd=assigned,
        gt_index=cols,
        rmsd_seconds=t1 - t0,
        assignment_seconds=t2 - t1,
        rmsd_matrix=cost,
    )


def _structures(count: int) -> str:
    return f"{count} structure" + ("" if count == 1 else "s")


def draw_samples(count: int, n: int, rng: np.random.Generator, path, what: str) -> np.ndarray:
    """Indices of ``n`` of ``count`` structures drawn without replacement (InputError naming ``path``
    if there are fewer than ``n``)."""
    if n < 1:
        raise InputError(None, f"--n must be at least 1, got {n}")
    if count < n:
        raise InputError(path, f"{what} holds {_structures(count)}, fewer than the {n} requested with --n")
    return rng.choice(count, size=n, replace=False)


@dataclass(frozen=True)
class EmdComparison:
    """EMD-RMSD of a prediction with its references, all against the same ground-truth draw.

    model: EMD-RMSD(pred draw, gt draw). base_rmsd (N,): RMSD of the base structure to each gt
    structure (None without a base); base_only = its mean (EMD of N copies of the base). floor:
    EMD-RMSD of two disjoint gt draws (None when gt has fewer than 2N structures).
    recovered_fraction = (base_only - model) / (base_only - floor), when both references exist.
    """

    model: EmdResult
    n: int
    n_atoms: int
    base_rmsd: np.ndarray | None = None
    floor: EmdResult | None = None
    pred_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    gt_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    notes: tuple[str, ...] = ()

    @property
    def base_only(self) -> float | None:
        return None if self.base_rmsd is None else float(self.base_rmsd.mean())

    @property
    def recovered_fraction(self) -> float | None:
        if self.base_only is None or self.floor is None:
            return None
        gap = self.base_only - self.floor.emd_rmsd
        # No headroom: the base is already as close as a second gt draw; the fraction means nothing.
        return None if gap <= 0 else (self.base_only - self.model.emd_rmsd) / gap

    def to_dict(self) -> dict:
        out = {
            "emd_rmsd": self.model.emd_rmsd,
            "n": self.n,
            "n_atoms_compared": self.n_atoms,
            "assigned_rmsd_median": float(np.median(self.model.assigned_rmsd)),
            "assigned_rmsd_max": float(self.model.assigned_rmsd.max()),
            "timing_seconds": {
                "rmsd_matrix": self.model.rmsd_seconds,
                "assignment": self.model.assignment_seconds,
            },
        }
        if self.base_only is not None:
            out["base_only"] = self.base_only
        if self.floor is not None:
            out["floor"] = self.floor.emd_rmsd
        if self.recovered_fraction is not None:
            out["recovered_fraction"] = self.recovered_fraction
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def compare_ensembles(
    pred: np.ndarray,
    gt: np.ndarray,
    n: int,
    seed: int,
    base: np.ndarray | None = None,
    pred_path=None,
    gt_path=None,
) -> EmdComparison:
    """Draw N structures from ``pred (P, A, 3)`` and N (or 2N, for the floor) from ``gt (G, A, 3)``
    without replacement using ``seed``, and compute EMD-RMSD with its references.

    base: (A, 3) base structure or None. The floor is computed only when G >= 2N: the first gt draw
    (used for the model and the base) and a second, disjoint one.
    """
    for coords, path, what in ((pred, pred_path, "predicted"), (gt, gt_path, "ground-truth")):
        bad = ~np.isfinite(coords).reshape(len(coords), -1).all(axis=1)
        if bad.any():  # e.g. samples of a diverged model; the assignment cannot rank NaN
            raise InputError(
                path,
                f"{int(bad.sum())} structures of the {what} ensemble have non-finite "
                f"coordinates (the first is structure {int(np.argmax(bad))})",
            )
    rng = np.random.default_rng(seed)
    pred_index = draw_samples(len(pred), n, rng, pred_path, "the predicted ensemble")
    if len(gt) < n:
        raise InputError(
            gt_path,
            f"the ground-truth ensemble holds {_structures(len(gt))}, fewer than the {n} requested with --n",
        )
    order = rng.permutation(len(gt))
    gt_index = order[:n]
    gt_draw = gt[gt_index]
    model = emd_rmsd(pred[pred_index], gt_draw)
    notes = []
    base_rmsd = None
    if base is not None:
        base_rmsd = pairwise_rmsd(np.asarray(base, np.float64)[None], gt_draw)[0]
    floor = None
    if len(gt) >= 2 * n:
        floor = emd_rmsd(gt[order[n : 2 * n]], gt_draw)
    elif base is not None:
        notes.append(f"no floor: the ground truth holds {len(gt)} structures, fewer than 2N = {2 * n}")
    result = EmdComparison(
        model=model,
        n=n,
        n_atoms=pred.shape[1],
        base_rmsd=base_rmsd,
        floor=floor,
        pred_index=pred_index,
        gt_index=gt_index,
        notes=tuple(notes),
    )
    if base is not None and floor is not None and result.recovered_fraction is None:
        notes.append("no recovered fraction: the base-only EMD-RMSD is not above the floor")
        result = replace(result, notes=tuple(notes))
    return result
