"""Figures of an evaluation, each a matplotlib ``Figure`` (no pyplot state, no GUI backend needed).

Every function takes plain arrays/results and returns a Figure; ``report.py`` turns them into PNGs and
embeds them in the HTML report.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from atomvae.evaluate.emd_rmsd import EmdComparison
from atomvae.evaluate.marginals import MarginalComparison, shared_bins

__all__ = [
    "emd_figure",
    "distance_histograms",
    "distance_scatter",
    "conditional_figure",
    "latent_figure",
    "training_curves_figure",
    "rmsf_figure",
]

PRED_COLOUR, GT_COLOUR, BASE_COLOUR, FLOOR_COLOUR = "#d62728", "#1f77b4", "#7f7f7f", "#2ca02c"


def _marker_size(n_points: int) -> float:
    """Scatter marker area: large for a handful of points, small for thousands (so clouds stay readable)."""
    return float(np.clip(3000.0 / max(n_points, 1), 3.0, 25.0))


def _n_bins(n_samples: int) -> int:
    """Histogram bins for n samples: ~1.5 sqrt(n), between 10 and 60 (a few samples per bin)."""
    return int(np.clip(1.5 * np.sqrt(n_samples), 10, 60))


def emd_figure(cmp: EmdComparison, atoms: str = "CA") -> Figure:
    """EMD-RMSD of the model beside its references (left) and the distribution of the per-pair RMSDs
    behind each number (right)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_bar, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    names, values, colours = ["model"], [cmp.model.emd_rmsd], [PRED_COLOUR]
    if cmp.base_only is not None:
        names.append("base only")
        values.append(cmp.base_only)
        colours.append(BASE_COLOUR)
    if cmp.floor is not None:
        names.append("floor (2nd GT draw)")
        values.append(cmp.floor.emd_rmsd)
        colours.append(FLOOR_COLOUR)
    bars = ax_bar.bar(names, values, color=colours)
    ax_bar.bar_label(bars, fmt="%.2f Å")
    ax_bar.set_ylabel(f"EMD-RMSD ({atoms} atoms, Å)")
    title = f"EMD-RMSD, N = {cmp.n}, {cmp.n_atoms} atoms"
    if cmp.recovered_fraction is not None:
        title += f"\nrecovered fraction {cmp.recovered_fraction:.2f}"
    ax_bar.set_title(title)
    ax_bar.set_ylim(0, max(values) * 1.2 if max(values) > 0 else 1)

    series = [("model: assigned pairs", cmp.model.assigned_rmsd, PRED_COLOUR)]
    if cmp.base_rmsd is not None:
        series.append(("base to each GT structure", cmp.base_rmsd, BASE_COLOUR))
    if cmp.floor is not None:
        series.append(("floor: assigned pairs", cmp.floor.assigned_rmsd, FLOOR_COLOUR))
    all_values = np.concatenate([s[1] for s in series])
    bins = shared_bins(all_values, all_values, n_bins=_n_bins(cmp.n))
    for label, values_i, colour in series:
        ax_hist.hist(values_i, bins=bins, histtype="step", lw=1.8, color=colour, label=label)
    ax_hist.set_xlabel("RMSD after superposition (Å)")
    ax_hist.set_ylabel("pairs")
    ax_hist.set_title("per-pair RMSD")
    ax_hist.legend(fontsize=8)
    return fig


def distance_histograms(pred: np.ndarray, gt: np.ndarray, comparisons: list[MarginalComparison]) -> Figure:
    """One panel per distance: predicted vs true histograms on shared bins, W1 in the title, cutoff dashed.

    pred: (M, P), gt: (K, P) distances in A; comparisons: P results of ``compare_marginal``.
    """
    n = len(comparisons)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.5 * cols, 3.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for k, (ax, c) in enumerate(zip(axes, comparisons, strict=False)):
        bins = shared_bins(pred[:, k], gt[:, k], n_bins=_n_bins(min(len(pred), len(gt))))
        ax.hist(gt[:, k], bins=bins, density=True, alpha=0.45, color=GT_COLOUR, label="ground truth")
        ax.hist(
            pred[:, k], bins=bins, density=True, histtype="step", lw=2, color=PRED_COLOUR, label="prediction"
        )
        if c.cutoff is not None:
            ax.axvline(
                c.cutoff,
                ls="--",
                color="k",
                lw=1,
                label=f"cutoff {c.cutoff:g} Å: < {c.pred_below:.0%} pred, {c.gt_below:.0%} GT",
            )
        ax.set_title(f"{c.label}\nW1 = {c.wasserstein_1:.2f} Å", fontsize=10)
        ax.set_xlabel("distance (Å)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def distance_scatter(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: list[str],
    cutoffs: list[float | None],
    proportions: dict[str, dict[str, float]] | None = None,
) -> Figure:
    """Paper figure 8: each structure a point at two distances (A); ground truth and prediction side by
    side on the same axes, cutoffs dashed; with ``proportions`` ({"prediction": {group: fraction},
    "ground truth": {...}}) a bar chart of the groups."""
    panels = 3 if proportions else 2
    fig = Figure(figsize=(5 * panels, 4.5), layout="constrained")
    axes = fig.subplots(1, panels)
    both = np.concatenate([pred, gt])
    lo, hi = both.min(axis=0), both.max(axis=0)
    for i, c in enumerate(cutoffs[:2]):  # keep the cutoff lines in view
        if c is not None:
            lo[i], hi[i] = min(lo[i], c), max(hi[i], c)
    pad = 0.05 * (hi - lo + 1e-9)
    lims = [(lo[i] - pad[i], hi[i] + pad[i]) for i in range(2)]
    size = _marker_size(len(both))
    for ax, data, name, colour in (
        (axes[0], gt, "ground truth", GT_COLOUR),
        (axes[1], pred, "prediction", PRED_COLOUR),
    ):
        ax.scatter(data[:, 0], data[:, 1], s=size, alpha=0.4, color=colour, linewidths=0)
        if cutoffs[0] is not None:
            ax.axvline(cutoffs[0], ls="--", color="k", lw=1)
        if cutoffs[1] is not None:
            ax.axhline(cutoffs[1], ls="--", color="k", lw=1)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_xlabel(f"{labels[0]} (Å)")
        ax.set_ylabel(f"{labels[1]} (Å)")
        ax.set_title(f"{name} ({len(data)} structures)")
    if proportions:
        ax = axes[2]
        groups = list(next(iter(proportions.values())))
        x = np.arange(len(groups))
        width = 0.8 / len(proportions)
        colours = {"prediction": PRED_COLOUR, "ground truth": GT_COLOUR}
        for k, (name, fractions) in enumerate(proportions.items()):
            bars = ax.bar(
                x + (k - (len(proportions) - 1) / 2) * width,
                [fractions[g] for g in groups],
                width,
                label=name,
                color=colours.get(name),
            )
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(x, [g.replace(", ", "\n") for g in groups], fontsize=7)
        ax.set_ylabel("fraction of structures")
        ax.set_title("mode proportions")
        ax.legend(fontsize=8)
    return fig


def conditional_figure(samples: np.ndarray, truth: np.ndarray, label: str, r: float) -> Figure:
    """Paper figure 9: distance in posterior samples (N, S) against the particle's true distance (N,)."""
    fig = Figure(figsize=(4.8, 4.5), layout="constrained")
    ax = fig.subplots()
    samples = np.asarray(samples).reshape(len(truth), -1)
    ax.scatter(
        np.repeat(truth, samples.shape[1]),
        samples.reshape(-1),
        s=_marker_size(samples.size),
        alpha=0.3,
        color=PRED_COLOUR,
        linewidths=0,
    )
    lo = float(min(truth.min(), samples.min()))
    hi = float(max(truth.max(), samples.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect")
    ax.set_xlabel(f"true {label} (Å)")
    ax.set_ylabel(f"posterior sample {label} (Å)")
    ax.set_title(f"conditional samples, Pearson r = {r:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def latent_figure(
    projection: np.ndarray,
    explained: np.ndarray,
    colour: np.ndarray | None = None,
    colour_label: str = "true frame",
) -> Figure:
    """PCA of posterior means (N, 2), optionally coloured by a per-particle value (e.g. the true frame)."""
    fig = Figure(figsize=(5.8, 4.8), layout="constrained")
    ax = fig.subplots()
    size = _marker_size(len(projection))
    if colour is None:
        ax.scatter(projection[:, 0], projection[:, 1], s=size, alpha=0.5, linewidths=0)
    else:
        points = ax.scatter(
            projection[:, 0], projection[:, 1], s=size, c=colour, cmap="viridis", linewidths=0
        )
        fig.colorbar(points, ax=ax, label=colour_label)
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    if projection.shape[1] > 1:
        ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.set_title(f"latent space: posterior means of {len(projection)} particles")
    return fig


def rmsf_figure(pred: np.ndarray, gt: np.ndarray, residues: list[str]) -> Figure:
    """Per-residue RMSF (A) of the prediction and the ground truth over the residues (labels) compared."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax = fig.subplots()
    position = np.arange(len(residues))
    ax.plot(position, gt, color=GT_COLOUR, lw=1.5, label="ground truth")
    ax.plot(position, pred, color=PRED_COLOUR, lw=1.5, label="prediction")
    ticks = position[:: max(1, len(position) // 12)]
    ax.set_xticks(ticks, [residues[i] for i in ticks], fontsize="small")
    ax.set_xlabel("residue")
    ax.set_ylabel("C-alpha RMSF (Å)")
    ax.legend(fontsize=8)
    return fig


def training_curves_figure(records: list[dict]) -> Figure | None:
    """Every numeric key of a metrics.jsonl over ``step``, one panel per key, one colour per stage.

    None when there is nothing to plot."""
    skip = {"step", "stage", "epoch", "seed", "time", "wall_time", "timestamp"}
    keys = []
    for r in records:
        for k, v in r.items():
            if k not in skip and k not in keys and isinstance(v, int | float) and not isinstance(v, bool):
                keys.append(k)
    records = [r for r in records if isinstance(r.get("step"), int | float)]
    if not keys or not records:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    stages = sorted({r.get("stage") for r in records}, key=str)
    for ax, key in zip(axes, keys, strict=False):
        for k, stage in enumerate(stages):
            pts = [
                (r["step"], r[key])
                for r in records
                if r.get("stage") == stage and isinstance(r.get(key), int | float) and math.isfinite(r[key])
            ]
            if not pts:
                continue
            steps, values = (np.asarray(v, dtype=float) for v in zip(*pts, strict=True))
            if len(pts) < 30:
                ax.plot(steps, values, lw=0.9, marker="o", ms=3, color=f"C{k}", label=f"stage {stage}")
                continue
            # Per-step values are noisy: show them faintly, with a running mean over ~2% of the steps.
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps, values, lw=0.5, alpha=0.3, color=f"C{k}")
            ax.plot(steps[window - 1 :], smooth, lw=1.2, color=f"C{k}", label=f"stage {stage}")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        if len(stages) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    return fig
