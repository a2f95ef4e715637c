"""``atomvae evaluate`` as one library call: read the ensembles, compute EMD-RMSD with its references,
distance marginals, optionally a trained run's latent space, conditional accuracy and training curves,
and write the report (HTML + PNGs + JSON).

Inputs of the optional run part (see ``conditional.py``):
  RUN/                    a run folder (``atomvae train``): the model for posterior samples and
                          ``seed_*/metrics.jsonl`` for training curves;
  latents.npz             ``atomvae encode`` output (mu, sigma (N, L), index (N,) into the particles);
                          default RUN/latents.npz;
  truth.npz               ``atomvae simulate`` output: per particle, the index of its true structure in
                          the simulated ensemble (ENSEMBLE, the file given to simulate).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomvae.errors import InputError
from atomvae.evaluate import plots
from atomvae.evaluate.atom_matching import match_atoms
from atomvae.evaluate.conditional import (
    Latents,
    conditional_distance_correlation,
    latent_pca,
    posterior_distances,
    read_latents,
)
from atomvae.evaluate.emd_rmsd import EmdComparison, compare_ensembles
from atomvae.evaluate.ensemble_metrics import compare_rmsf, coverage_matching
from atomvae.evaluate.marginals import (
    DistanceSpec,
    atom_distances,
    compare_marginal,
    mode_proportions,
    parse_distance,
)
from atomvae.evaluate.report import ReportFigure, ReportSection, write_json, write_report
from atomvae.evaluate.stereochemistry import stereochemistry_summary
from atomvae.structure.io import read_ensemble, read_structure

__all__ = ["EvaluateConfig", "evaluate", "read_truth_frames", "run_metrics_records"]

# truth.npz (atomvae simulate): "frame" (N,) = each particle's structure index in the simulated ensemble.
TRUTH_FRAME_KEY = "frame"


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything ``atomvae evaluate`` needs; paths as given by the user (errors name them)."""

    pred: Path
    gt: Path
    pred_topology: Path | None = None
    gt_topology: Path | None = None
    n: int = 2048
    atoms: str = "CA"
    seed: int = 0
    cov_threshold: float = 2.0  # A, RMSD threshold of COV-R / COV-P
    base: Path | None = None
    distances: tuple[str, ...] = ()
    cutoffs: tuple[float, ...] = ()
    out_dir: Path = Path("evaluation")
    json_path: Path | None = None
    run: Path | None = None
    latents: Path | None = None
    particles: Path | None = None
    truth: Path | None = None
    ensemble_source: Path | None = None
    ensemble_source_topology: Path | None = None
    posterior_samples: int = 16
    conditional_particles: int = 2048  # particles (a seeded random subset) decoded for conditional accuracy
    device: str = "cpu"
    write_report: bool = True
    # Score on the atoms the inputs share when some are missing from one of them (reported); by default
    # that is an error: an EMD-RMSD over a subset says nothing about the atoms left out.
    allow_missing_atoms: bool = False
    notes: tuple[str, ...] = ()  # free text for the top of the report and the JSON (e.g. how data were made)


def _read(path: Path, topology_path: Path | None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MDAnalysis chatter; real problems raise InputError
        return read_ensemble(path, topology_path)


def score_ensemble(
    pred: Path,
    pred_topology: Path | None,
    gt: Path,
    gt_topology: Path | None,
    base: Path,
    n: int,
    seed: int = 0,
) -> dict:
    """EMD-RMSD on C-alpha (A) and recovered fraction of one more ensemble (e.g. the prior's samples beside
    the aggregate posterior's), against the same draw of ``n`` ground-truth structures as ``evaluate``
    with the same ``n`` and ``seed``."""
    pred_top, pred_coords = _read(pred, pred_topology)
    gt_top, gt_coords = _read(gt, gt_topology)
    ca = pred_top.select("CA")
    result = compare_ensembles(
        pred_coords[:, ca],
        gt_coords[:, gt_top.select("CA")],
        n,
        seed,
        base=read_structure(base).coords[ca],
        pred_path=pred,
        gt_path=gt,
    )
    return {"emd_rmsd": result.model.emd_rmsd, "recovered_fraction": result.recovered_fraction}


def read_truth_frames(truth_path: Path, particle_index: np.ndarray | None = None) -> np.ndarray:
    """Per particle (N,) the index of its true structure in the simulated ensemble, from truth.npz.

    particle_index: rows to take (a latents file's ``index``); InputError if out of range.
    """
    truth_path = Path(truth_path)
    if not truth_path.is_file():
        raise InputError(truth_path, "truth file not found")
    try:
        with np.load(truth_path) as data:
            if TRUTH_FRAME_KEY not in data:
                raise InputError(
                    truth_path,
                    f"has no '{TRUTH_FRAME_KEY}' array (it has "
                    f"{', '.join(data.files)}); expected the truth.npz of "
                    "atomvae simulate",
                )
            frames = np.asarray(data[TRUTH_FRAME_KEY]).astype(np.int64).reshape(-1)
    except (OSError, ValueError) as err:
        raise InputError(truth_path, f"not a readable .npz file: {err}") from None
    if particle_index is None:
        return frames
    if len(particle_index) and (particle_index.max() >= len(frames) or particle_index.min() < 0):
        raise InputError(
            truth_path,
            f"holds {len(frames)} particles but the latents refer to particle "
            f"{int(particle_index.max())}; are they from the same data set?",
        )
    return frames[particle_index]


def run_metrics_records(run_dir: Path) -> list[dict]:
    """Training metrics of a run: the best (else first) seed's metrics.jsonl, or RUN/metrics.jsonl."""
    from atomvae.train.metrics import read_metrics

    run_dir = Path(run_dir)
    candidates = [run_dir / "metrics.jsonl"]
    try:
        from atomvae.train.run import best_checkpoint_path, seed_dir

        seed, _ = best_checkpoint_path(run_dir)
        candidates.insert(0, seed_dir(run_dir, seed) / "metrics.jsonl")
    except InputError:
        pass
    candidates += sorted(run_dir.glob("seed_*/metrics.jsonl"))
    for path in candidates:
        if path.is_file():
            return read_metrics(path)
    return []


def _fmt(x, unit=" Å"):
    return "n/a" if x is None else f"{x:.3f}{unit}"


def _emd_section(cmp: EmdComparison, config: EvaluateConfig, atom_note: str) -> ReportSection:
    rows = [
        ("EMD-RMSD (model)", _fmt(cmp.model.emd_rmsd)),
        ("N per ensemble", str(cmp.n)),
        ("atoms compared", atom_note),
    ]
    if cmp.base_only is not None:
        rows.append(("base structure only", _fmt(cmp.base_only)))
    if cmp.floor is not None:
        rows.append(("finite-sample floor", _fmt(cmp.floor.emd_rmsd)))
    if cmp.recovered_fraction is not None:
        rows.append(("recovered fraction", f"{cmp.recovered_fraction:.3f}"))
    rows.append(
        (
            "median / max assigned RMSD",
            f"{np.median(cmp.model.assigned_rmsd):.3f} / {cmp.model.assigned_rmsd.max():.3f} Å",
        )
    )
    paragraphs = [
        "EMD-RMSD (paper section 4): N structures drawn without replacement from each ensemble, RMSD after "
        "optimal rigid superposition for every pair, optimal one-to-one assignment, mean assigned RMSD. "
        "Lower is better."
    ]
    if config.base is not None:
        paragraphs.append(
            "References on the same ground-truth draw: 'base structure only' is the EMD-RMSD of N copies "
            "of the base structure (no heterogeneity learnt); the 'floor' is the EMD-RMSD between two "
            "disjoint ground-truth draws (the best a perfect model could score at this N); recovered "
            "fraction = (base - model) / (base - floor): 0 means nothing learnt beyond the base, 1 means "
            "as good as the ground truth itself."
        )
    paragraphs += list(cmp.notes)
    fig = ReportFigure(
        "emd_rmsd",
        plots.emd_figure(cmp, config.atoms),
        "Left: EMD-RMSD of the model and its references. Right: the per-pair RMSDs they average.",
    )
    return ReportSection("EMD-RMSD", rows=rows, paragraphs=paragraphs, figures=[fig])


def _coverage_section(cmp: EmdComparison, config: EvaluateConfig) -> tuple[ReportSection, dict]:
    """COV / MAT (``ensemble_metrics.coverage_matching``) on the EMD-RMSD draws' RMSD matrix."""
    if cmp.model.rmsd_matrix is None:
        raise ValueError("COV / MAT need the RMSD matrix of the EMD-RMSD draws")
    result = coverage_matching(cmp.model.rmsd_matrix, config.cov_threshold)
    rows = [
        (f"COV-R (ground truth covered, RMSD < {result.threshold:g} Å)", f"{result.cov_recall:.1%}"),
        ("MAT-R (mean RMSD of each GT structure to its closest prediction)", _fmt(result.mat_recall)),
        (
            f"COV-P (predictions near the ground truth, RMSD < {result.threshold:g} Å)",
            f"{result.cov_precision:.1%}",
        ),
        ("MAT-P (mean RMSD of each prediction to its closest GT structure)", _fmt(result.mat_precision)),
    ]
    text = [
        f"On the same draws and {config.atoms} atoms as EMD-RMSD (CryoSTAR's ensemble metrics): recall "
        "asks whether every true conformation has a predicted one nearby, precision whether every "
        "prediction is near a true one. Higher COV and lower MAT are better; set the threshold with "
        "--cov-threshold."
    ]
    return ReportSection("Coverage and matching (COV / MAT)", rows=rows, paragraphs=text), result.as_dict()


def _rmsf_section(
    pred_top, pred_coords, gt_top, gt_coords, config: EvaluateConfig
) -> tuple[ReportSection | None, dict]:
    """Per-residue C-alpha RMSF of the drawn predicted and true structures (each ensemble superposed on its
    own mean), residues matched by chain, number and insertion code."""
    match = match_atoms({"gt": (gt_top, config.gt), "pred": (pred_top, config.pred)}, "CA")
    if match.n_atoms < 3:
        return None, {}
    result = compare_rmsf(pred_coords[:, match.indices["pred"]], gt_coords[:, match.indices["gt"]])
    residues = [key.rsplit(":", 1)[0] for key in match.keys]
    summary = {
        "residues": residues,
        "pred": result["pred"].tolist(),
        "gt": result["gt"].tolist(),
        "pearson_r": result["pearson_r"],
        "mean_abs_difference": result["mean_abs_difference"],
    }
    rows = [
        ("residues compared", str(len(residues))),
        ("Pearson r (predicted vs true RMSF)", f"{result['pearson_r']:.3f}"),
        ("mean |RMSF difference|", _fmt(result["mean_abs_difference"])),
    ]
    fig = ReportFigure(
        "rmsf",
        plots.rmsf_figure(result["pred"], result["gt"], residues),
        "Per-residue C-alpha RMSF of the predicted and true ensembles (each superposed on its own mean).",
    )
    text = [
        "Where the model puts its flexibility: the RMS fluctuation of each C-alpha about its mean "
        "position, in the drawn structures of each ensemble."
    ]
    return ReportSection("Flexibility (RMSF)", rows=rows, paragraphs=text, figures=[fig]), summary


def _distance_part(
    specs: list[DistanceSpec],
    cutoffs: list[float | None],
    pred_top,
    pred_coords,
    gt_top,
    gt_coords,
    config: EvaluateConfig,
):
    pred_pairs = np.array([s.atom_indices(pred_top, config.pred) for s in specs])
    gt_pairs = np.array([s.atom_indices(gt_top, config.gt) for s in specs])
    pred_d = atom_distances(pred_coords, pred_pairs)
    gt_d = atom_distances(gt_coords, gt_pairs)
    comparisons = [
        compare_marginal(pred_d[:, k], gt_d[:, k], s.label, cutoffs[k]) for k, s in enumerate(specs)
    ]
    summary: dict[str, Any] = {"distances": [c.to_dict() for c in comparisons]}
    figures = [
        ReportFigure(
            "distance_histograms",
            plots.distance_histograms(pred_d, gt_d, comparisons),
            "Distance marginals on shared bins; W1 = 1D Wasserstein-1 distance between "
            "predicted and true distributions (Å, lower is better).",
        )
    ]
    rows = [
        (
            c.label,
            f"W1 {c.wasserstein_1:.3f} Å; mean pred {c.pred_mean:.2f} vs GT {c.gt_mean:.2f} Å; "
            f"sd pred {c.pred_std:.2f} vs GT {c.gt_std:.2f} Å",
        )
        for c in comparisons
    ]
    for c in comparisons:
        if c.cutoff is not None:
            rows.append((f"{c.label} < {c.cutoff:g} Å", f"pred {c.pred_below:.1%}, GT {c.gt_below:.1%}"))
    with_cut = [k for k, c in enumerate(cutoffs) if c is not None]
    if with_cut:
        labels = [f"d{k + 1}" for k in with_cut]
        cuts = [c for c in cutoffs if c is not None]
        props = {
            "prediction": mode_proportions(pred_d[:, with_cut], cuts, labels),
            "ground truth": mode_proportions(gt_d[:, with_cut], cuts, labels),
        }
        summary["mode_proportions"] = props
        for group in props["prediction"]:
            rows.append(
                (
                    f"mode {group}",
                    f"pred {props['prediction'][group]:.1%}, GT {props['ground truth'][group]:.1%}",
                )
            )
    else:
        props = None
    if len(specs) >= 2:
        pair_props = props if with_cut == [0, 1] else None
        figures.append(
            ReportFigure(
                "distance_scatter",
                plots.distance_scatter(
                    pred_d[:, :2], gt_d[:, :2], [s.label for s in specs[:2]], cutoffs[:2], pair_props
                ),
                "Each structure as a point at the first two distances (paper figure 8); dashed lines are the "
                "cutoffs; the bars give the fraction of structures in each group.",
            )
        )
    names = ", ".join(f"d{k + 1} = {s.label}" for k, s in enumerate(specs))
    section = ReportSection(
        "Distance marginals",
        rows=rows,
        figures=figures,
        paragraphs=[f"Distances between atom pairs across the same N-structure draws as EMD-RMSD ({names})."],
    )
    return section, summary


# Structures checked for bonds and clashes per ensemble: enough for fractions to ~2% (binomial error).
PLAUSIBILITY_STRUCTURES = 512


def _plausibility_section(ensembles: dict[str, tuple]) -> tuple[ReportSection | None, dict]:
    """Peptide bonds and clashes (``evaluate.stereochemistry``) of the drawn structures of each ensemble
    that has backbone N and C atoms; the ground truth calibrates what a plausible ensemble scores."""
    rows, summary, skipped = [], {}, []
    for name, (topology, coords) in ensembles.items():
        if not ((topology.atom_index("N") >= 0).all() and (topology.atom_index("C") >= 0).all()):
            skipped.append(name)
            continue
        s = stereochemistry_summary(coords[:PLAUSIBILITY_STRUCTURES], topology)
        summary[name] = s.as_dict()
        rows.append(
            (
                name,
                f"{s.fraction_ok:.1%} of {s.n_structures} structures pass (bonds ok "
                f"{s.fraction_bonds_ok:.1%}, no clash {s.fraction_no_clash:.1%}); C-N bond "
                f"{s.bond_length_mean:.3f} Å, rms deviation {s.bond_length_rms_deviation:.3f} Å",
            )
        )
        rows.append(
            (
                f"{name}: backbone angles",
                f"rms deviation {s.angle_rms_deviation:.2f}°, outliers {s.angle_outlier_fraction:.2%} "
                f"of angles; {s.fraction_no_angle_outlier:.1%} of structures have none",
            )
        )
        rama = (
            "not checked (needs MDAnalysis)"
            if np.isnan(s.ramachandran_outlier_fraction)
            else f"outliers {s.ramachandran_outlier_fraction:.2%} of residues; "
            f"{s.fraction_no_ramachandran_outlier:.1%} of structures have none"
        )
        rows.append((f"{name}: Ramachandran", rama))
    if not rows:
        return None, {}
    text = [
        "A structure passes when every C(i)-N(i+1) peptide bond is within 0.2 Å of 1.33 Å and no two "
        "heavy atoms of residues that are not sequence neighbours are closer than 2.0 Å.",
        "Beside it: backbone angles N-CA-C, CA-C-N, C-N-CA against Engh & Huber (outliers beyond 4 "
        "standard deviations), and Ramachandran outliers: non-glycine residues outside the allowed "
        "region holding 99.8% of the Top500 reference residues (from MDAnalysis Rama_ref). The ground "
        "truth shows what a physical ensemble scores.",
    ]
    if skipped:
        text.append(f"Not checked (no backbone N and C atoms): {', '.join(skipped)}.")
    return ReportSection("Physical plausibility", rows=rows, paragraphs=text), summary


def _run_part(config: EvaluateConfig, run_dir: Path, specs: list[DistanceSpec]):
    """Latent space, conditional accuracy and training curves of the trained run in ``run_dir``."""
    sections, summary, missing = [], {}, []
    records = run_metrics_records(run_dir)
    latents_path = config.latents if config.latents is not None else Path(run_dir) / "latents.npz"
    latents = read_latents(latents_path) if (config.latents is not None or latents_path.is_file()) else None
    frames = None
    if latents is not None:
        if config.truth is not None:
            frames = read_truth_frames(config.truth, latents.index)
        proj, explained = latent_pca(latents.mu, 2)
        fig = plots.latent_figure(proj, explained, frames)
        coloured = (
            ", coloured by the index of each particle's true structure in the simulated ensemble "
            "(a smooth colour gradient means the latent space orders conformations)."
        )
        text = [
            "PCA of the posterior means of the encoded particles" + (coloured if frames is not None else ".")
        ]
        caption = f"{len(latents.mu)} particles, {latents.mu.shape[1]} latent dimensions."
        sections.append(
            ReportSection(
                "Latent space",
                paragraphs=text,
                figures=[ReportFigure("latent_pca", fig, caption)],
                rows=[("explained variance PC1, PC2", ", ".join(f"{e:.1%}" for e in explained))],
            )
        )
        summary["latent_pca_explained_variance"] = explained.tolist()
    if latents is None:
        missing.append(
            f"No latent space or conditional accuracy: no {latents_path} (make it with "
            "`atomvae encode RUN particles.star -o latents.npz`, then pass --latents)."
        )
    elif not (frames is not None and specs and config.ensemble_source is not None):
        missing.append(
            "No conditional accuracy: it needs --truth (truth.npz of atomvae simulate), "
            "--ensemble-source (the simulated ensemble) and at least one --distance."
        )
    if latents is not None and frames is not None and specs and config.ensemble_source is not None:
        from atomvae.train.run import load_run

        source_top, source_coords = _read(config.ensemble_source, config.ensemble_source_topology)
        if frames.max() >= len(source_coords) or frames.min() < 0:
            raise InputError(
                config.truth,
                f"refers to structure {int(frames.max())} but "
                f"{config.ensemble_source} holds {len(source_coords)}",
            )
        run = load_run(run_dir, device=config.device)
        true_pairs = np.array([s.atom_indices(source_top, config.ensemble_source) for s in specs])
        model_pairs = np.array([s.atom_indices(run.topology, run_dir) for s in specs])
        keep = np.arange(len(frames))
        if len(keep) > config.conditional_particles:  # decoding N * S structures is the cost here
            rng = np.random.default_rng(config.seed)
            keep = np.sort(rng.choice(len(keep), size=config.conditional_particles, replace=False))
        subset = Latents(mu=latents.mu[keep], sigma=latents.sigma[keep], index=latents.index[keep])
        truth_d = atom_distances(source_coords[frames[keep]], true_pairs)  # (N, P)
        samples = posterior_distances(
            lambda z: run.model.decode(z, "all"),
            subset,
            model_pairs,
            config.posterior_samples,
            config.seed,
            device=run.device,
        )  # (N, S, P)
        r = {
            s.label: conditional_distance_correlation(samples[:, :, k], truth_d[:, k])
            for k, s in enumerate(specs)
        }
        summary["conditional"] = {
            "pearson_r": r,
            "n_particles": len(keep),
            "posterior_samples": config.posterior_samples,
        }
        undefined = [label for label, value in r.items() if not np.isfinite(value)]
        notes = (
            [
                f"Pearson r is undefined for {', '.join(undefined)}: the posterior samples (or the "
                "truth) do not vary, e.g. a run still in stage 1 decodes only the base structure."
            ]
            if undefined
            else []
        )
        figs = [
            ReportFigure(
                f"conditional_d{k + 1}",
                plots.conditional_figure(samples[:, :, k], truth_d[:, k], s.label, r[s.label]),
                f"Posterior samples of {s.label} against the particle's true value.",
            )
            for k, s in enumerate(specs)
        ]
        sections.append(
            ReportSection(
                "Conditional accuracy",
                figures=figs,
                rows=[(k, f"Pearson r = {v:.3f}") for k, v in r.items()],
                paragraphs=[
                    "Per particle, distances in posterior samples (z = mu + sigma * eps, decoded) "
                    "against the distance in that particle's true structure (paper figure 9). r near 1: "
                    "each image alone pins down its conformation; near 0: only the ensemble is "
                    "recovered.",
                    *notes,
                ],
            )
        )
    if records:
        curves = plots.training_curves_figure(records)
        if curves is not None:
            sections.append(
                ReportSection(
                    "Training curves",
                    figures=[
                        ReportFigure(
                            "training_curves",
                            curves,
                            "Every numeric metric of the run's metrics.jsonl over "
                            "training steps, one colour per stage.",
                        )
                    ],
                    rows=[("records", str(len(records))), ("last step", str(records[-1].get("step")))],
                )
            )
    else:
        missing.append(f"No training curves: no metrics.jsonl in {run_dir}.")
    if missing:
        sections.append(ReportSection("Not shown", paragraphs=missing))
        summary["run_notes"] = missing
    return sections, summary


def _check_atom_coverage(tops: dict, match, config: EvaluateConfig) -> None:
    """Every selected atom of the prediction and the ground truth must have its partner (matched by chain,
    residue number, insertion code and name) unless ``allow_missing_atoms``: a score over the shared
    subset alone would read as a full comparison (a 150-residue prediction against a 214-residue truth
    would score on the 150 only)."""
    if config.allow_missing_atoms:
        return
    for label in ("pred", "gt"):
        topology, source = tops[label]
        selected = np.asarray(topology.select(config.atoms))
        n_selected = len(selected)
        if n_selected > match.n_atoms:
            # the input(s) lacking them: the other ensemble, or (when only it restricts) the base structure
            others = [
                lab
                for lab in tops
                if lab != label
                and match_atoms({label: tops[label], lab: tops[lab]}, config.atoms).n_atoms < n_selected
            ]
            other = " and ".join(str(tops[lab][1]) for lab in others) or "the other inputs"
            unmatched = np.setdiff1d(selected, match.indices[label])
            first = topology.residue_label(int(topology.residue_index[unmatched[0]]))
            raise InputError(
                source,
                f"{n_selected - match.n_atoms} of its {n_selected} {config.atoms} atoms "
                f"have no partner in {other} (first: residue {first}); compare the same "
                "residues, or pass --allow-missing-atoms to score the shared "
                f"{match.n_atoms} only",
            )


def evaluate(config: EvaluateConfig) -> dict:
    """Run the evaluation; write the report (out_dir/report.html, PNGs, summary.json) and
    ``config.json_path``; return the summary dict (the CLI prints it with ``report.summary_text``)."""
    if len(config.cutoffs) > len(config.distances):
        raise InputError(
            None,
            f"{len(config.cutoffs)} --cutoff values for {len(config.distances)} "
            "--distance; give at most one cutoff per distance, in the same order",
        )
    specs = [parse_distance(d) for d in config.distances]
    cutoffs: list[float | None] = list(config.cutoffs) + [None] * (len(specs) - len(config.cutoffs))
    if (
        config.truth is not None or config.ensemble_source is not None or config.latents is not None
    ) and config.run is None:
        raise InputError(None, "--latents, --truth and --ensemble-source need --run")

    pred_top, pred_coords = _read(config.pred, config.pred_topology)
    gt_top, gt_coords = _read(config.gt, config.gt_topology)
    tops = {"gt": (gt_top, config.gt), "pred": (pred_top, config.pred)}
    base_coords = None
    if config.base is not None:
        base = read_structure(config.base)
        tops["base"] = (base.topology, config.base)
    match = match_atoms(tops, config.atoms)
    _check_atom_coverage(tops, match, config)
    pred_sel = pred_coords[:, match.indices["pred"]]
    gt_sel = gt_coords[:, match.indices["gt"]]
    if config.base is not None:
        base_coords = base.coords[match.indices["base"]]
    cmp = compare_ensembles(pred_sel, gt_sel, config.n, config.seed, base_coords, config.pred, config.gt)

    n_sel = {"gt": len(gt_top.select(config.atoms)), "pred": len(pred_top.select(config.atoms))}
    atom_note = f"{match.n_atoms} {config.atoms} atoms"
    if len(set(n_sel.values()) | {match.n_atoms}) > 1:
        atom_note += f" in common (pred has {n_sel['pred']}, GT {n_sel['gt']})"
        atom_note = "ONLY " + atom_note
        warnings.warn(f"{config.pred}: EMD-RMSD compares only {atom_note[5:]}", UserWarning, stacklevel=2)
    if match.ignored_chain_ids:
        atom_note += "; chain IDs differ and were ignored"

    summary = {
        "emd_rmsd": cmp.model.emd_rmsd,
        "n": config.n,
        "atoms": config.atoms,
        "seed": config.seed,
        **cmp.to_dict(),
        "atoms_note": atom_note,
        "inputs": {
            "pred": str(config.pred),
            "gt": str(config.gt),
            "base": None if config.base is None else str(config.base),
        },
    }
    if config.notes:
        summary["about"] = list(config.notes)
    sections = [_emd_section(cmp, config, atom_note)]
    coverage, summary["coverage"] = _coverage_section(cmp, config)
    sections.append(coverage)
    rmsf, rmsf_summary = _rmsf_section(
        pred_top, pred_coords[cmp.pred_index], gt_top, gt_coords[cmp.gt_index], config
    )
    if rmsf is not None:
        sections.append(rmsf)
        summary["rmsf"] = rmsf_summary
    if specs:
        distances, dist_summary = _distance_part(
            specs, cutoffs, pred_top, pred_coords[cmp.pred_index], gt_top, gt_coords[cmp.gt_index], config
        )
        sections.append(distances)
        summary.update(dist_summary)
    plausibility_section, plausibility = _plausibility_section(
        {
            "prediction": (pred_top, pred_coords[cmp.pred_index]),
            "ground truth": (gt_top, gt_coords[cmp.gt_index]),
        }
    )
    if plausibility_section is not None:
        sections.append(plausibility_section)
        summary["plausibility"] = plausibility
    if config.run is not None:
        run_sections, run_summary = _run_part(config, config.run, specs)
        sections += run_sections
        summary.update(run_summary)
        summary["inputs"]["run"] = str(config.run)

    if config.write_report:
        inputs = [("prediction", str(config.pred)), ("ground truth", str(config.gt))]
        if config.base is not None:
            inputs.append(("base structure", str(config.base)))
        for name, value in (
            ("run", config.run),
            ("latents", config.latents),
            ("particles", config.particles),
            ("truth", config.truth),
            ("simulated ensemble", config.ensemble_source),
        ):
            if value is not None:
                inputs.append((name, str(value)))
        inputs.append(
            (
                "settings",
                f"--n {config.n} --atoms {config.atoms} --seed {config.seed} "
                f"--cov-threshold {config.cov_threshold:g}",
            )
        )
        written = write_report(
            config.out_dir, "atomvae evaluation", sections, summary, inputs, notes=list(config.notes)
        )
        summary["report"] = str(written["html"])
    if config.json_path is not None:
        write_json(config.json_path, summary)
    return summary
