"""After training: the states a run found, its main motions, their maps and movies, and particle subsets.

``analyze(AnalyzeConfig)`` (behind ``atomvae analyze``) writes into one folder::

    states.pdb          K models: the decoded centres of K-means clusters of the particles' posterior
                        means (state k = MODEL k, k = 1..K, numbered by decreasing particle count); the
                        B-factor column holds each residue's RMSF (A, C-alpha) over sampled structures
    states.json         per state: particles, fraction, latent centre, C-alpha RMSD to the base; the RMSF
                        per residue; the traversals; the map grid
    states.npz          index (N,) particle rows, state (N,) 1..K, centres (K, D): ``atomvae export
                        --state`` reads it
    traversal_pc1.pdb   structures along the first (second) principal axis of the posterior means,
    traversal_pc2.pdb   between the 1st and 99th percentiles of the particles' projections (RMSF B-factors)
    state_<k>.mrc       a density map of each state: atoms as Gaussians (ChimeraX molmap's width for
                        the resolution) on the particles' box and pixel size, placed in the base's frame so
                        that the box centre is the run's rotation centre, where a reconstruction from
                        the particles' poses has its centre (see ``atomvae.physics.density``)
    rmsf.png, latent_states.png   figures (also embedded in index.html)
    movie.cxc           ChimeraX script: the PC1 traversal as a movie coloured by RMSF, with the maps
    index.html          one self-contained page with all of it

The sampled structures behind the RMSF are one posterior draw ``z = mu + sigma * eps`` of each of up to
``n_rmsf_samples`` particles, decoded and superposed on their mean by their C-alpha atoms.

``select_particles`` / ``export_particles`` (behind ``atomvae export``) pick particles by state, by a
distance in their posterior-mean structure, or by an index list, and write them with
``atomvae.data.export.write_particle_subset`` (all original metadata kept).
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from atomvae.errors import InputError, atomic_path, atomic_write_text
from atomvae.evaluate.clustering import KMeansResult, kmeans
from atomvae.evaluate.conditional import latent_pca, read_latents
from atomvae.evaluate.report import ReportFigure, ReportSection, html_page, write_json

__all__ = [
    "AnalyzeConfig",
    "analyze",
    "ExportConfig",
    "select_particles",
    "export_particles",
    "per_residue_rmsf",
    "decode_to_base_frame",
    "STATES_NPZ",
]

STATES_NPZ = "states.npz"
PAUSE_FRAMES = 6  # graphics frames per structure of a traversal in movie.cxc (about 5 structures/s)
STATE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


@dataclass(frozen=True)
class AnalyzeConfig:
    """``atomvae analyze``. run: run folder; out: output folder. Latents come from ``latents`` (an
    ``encode`` output), else by encoding ``particles``, else RUN/latents.npz, else by encoding the run's own
    particle file. map_resolution A; traversal_steps structures per axis; percentile: traversal ends."""

    run: Path
    out: Path
    states: int = 5
    particles: Path | None = None
    latents: Path | None = None
    map_resolution: float = 4.0
    traversal_steps: int = 10
    percentile: float = 1.0
    n_rmsf_samples: int = 1000
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 256
    overwrite: bool = False


@torch.no_grad()
def decode_to_base_frame(run, z: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Latent points z (M, D) -> all-atom structures (M, A, 3) float64 A in the base's frame."""
    points = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=run.device)
    parts = [
        run.model.to_base_frame(run.model.decode(points[i : i + chunk], "all")).double().cpu().numpy()
        for i in range(0, len(points), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, run.topology.n_atoms, 3))


def per_residue_rmsf(coords: np.ndarray, topology) -> np.ndarray:
    """C-alpha RMSF per residue (R,) A of structures ``coords (M, A, 3)``, each superposed on the ensemble's
    mean by its C-alpha atoms (``ensemble_metrics.ensemble_rmsf``)."""
    from atomvae.evaluate.ensemble_metrics import ensemble_rmsf

    return ensemble_rmsf(np.asarray(coords)[:, topology.atom_index("CA")])


def _ca_rmsd(a: np.ndarray, b: np.ndarray, topology) -> float:
    """C-alpha RMSD (A) of two structures (A, 3) in the same frame (no superposition: both are decoded in
    the base's frame, where their placement in the particle box is part of the difference)."""
    ca = topology.atom_index("CA")
    return float(np.sqrt(((a[ca] - b[ca]) ** 2).sum(-1).mean()))


def _check_output_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "output folder is not empty (use --overwrite to write into it)")


def _latents_for_run(run, config: AnalyzeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
    """(mu (N, D), sigma (N, D), index (N,), particles path or "", where the latents came from)."""
    from atomvae.train.inference import encode_particles

    run_particles = str(run.info.get("particles") or "")
    if config.latents is not None:
        latents = read_latents(config.latents)
        particles = str(config.particles) if config.particles is not None else run_particles
        return latents.mu, latents.sigma, latents.index, particles, str(config.latents)
    if config.particles is not None:
        encoded = encode_particles(run, config.particles, batch_size=config.batch_size)
        return encoded["mu"], encoded["sigma"], encoded["index"], str(config.particles), "encoded"
    stored = Path(run.run_dir) / "latents.npz"
    if stored.is_file():
        latents = read_latents(stored)
        return latents.mu, latents.sigma, latents.index, run_particles, str(stored)
    if not run_particles or not Path(run_particles).is_file():
        raise InputError(
            run.run_dir,
            f"the run's particle file ({run_particles or 'unknown'}) is not "
            "available and there is no RUN/latents.npz; pass --particles or "
            "--latents",
        )
    encoded = encode_particles(run, run_particles, batch_size=config.batch_size)
    return encoded["mu"], encoded["sigma"], encoded["index"], run_particles, "encoded"


def _check_latents(mu: np.ndarray, dim: int, source: str) -> None:
    if mu.ndim != 2 or mu.shape[1] != dim:
        raise InputError(source, f"latents must be (N, {dim}) for this run, got {mu.shape}")
    if len(mu) < 2:
        raise InputError(source, f"need at least 2 particles to analyse, got {len(mu)}")


def _map_grid(run) -> tuple[int, float, np.ndarray]:
    """(box, voxel size A, origin A): the particles' original box and pixel size, voxel box//2 at the run's
    rotation centre in the base's frame (RELION's centre pixel convention)."""
    box = int(run.info["box"])
    original_box = int(run.info.get("original_box") or box)
    voxel_size = float(run.info["pixel_size"]) * box / original_box  # Fourier cropping keeps the extent
    centre = run.model.base_center.double().cpu().numpy()
    return original_box, voxel_size, centre - (original_box // 2) * voxel_size


def _latent_states_figure(
    projection: np.ndarray, explained: np.ndarray, labels: np.ndarray, centre_projection: np.ndarray
) -> Figure:
    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.subplots()
    size = float(np.clip(2000.0 / max(len(projection), 1), 1.0, 20.0))
    for k in range(len(centre_projection)):
        members = labels == k
        colour = STATE_COLOURS[k % len(STATE_COLOURS)]
        ax.scatter(
            projection[members, 0],
            projection[members, 1],
            s=size,
            alpha=0.5,
            linewidths=0,
            color=colour,
            label=f"state {k + 1} ({members.sum()})",
        )
        ax.scatter(
            centre_projection[k, 0],
            centre_projection[k, 1],
            s=120,
            marker="X",
            color=colour,
            edgecolors="black",
            linewidths=0.8,
        )
        ax.annotate(
            str(k + 1), centre_projection[k], xytext=(6, 6), textcoords="offset points", fontweight="bold"
        )
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)" if len(explained) > 1 else "")
    ax.set_title(f"posterior means of {len(projection)} particles and the {len(centre_projection)} states")
    ax.legend(fontsize="small", markerscale=max(1.0, (30.0 / size) ** 0.5))  # legible legend dots
    return fig


def _rmsf_figure(rmsf: np.ndarray, topology) -> Figure:
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    ax = fig.subplots()
    chains = np.asarray(topology.chain_id).astype(str)
    position = np.arange(len(rmsf))
    for chain in dict.fromkeys(chains):
        members = chains == chain
        ax.plot(position[members], rmsf[members], lw=1.2, label=f"chain {chain}")
    ticks = position[:: max(1, len(position) // 12)]
    ax.set_xticks(ticks, [f"{chains[i]}{topology.res_seq[i]}" for i in ticks], fontsize="small")
    ax.set_xlabel("residue")
    ax.set_ylabel("C-alpha RMSF (Å)")
    ax.set_title("per-residue flexibility of sampled structures")
    if len(set(chains)) > 1:
        ax.legend(fontsize="small")
    return fig


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class='v'>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def movie_script(traversals: list[str], maps: list[str], steps: int, rmsf_max: float) -> str:
    """ChimeraX commands: open the traversals as trajectories (model #1, #2, ...) coloured by the RMSF in
    their B-factor column, the state maps hidden, and play the first traversal back and forth. ChimeraX
    runs a .cxc with its own folder as the current directory, so the file names are relative."""
    top = max(rmsf_max, 0.1)
    lines = [
        "# atomvae analyze: open in ChimeraX (File > Open, or `open movie.cxc`).",
        "# Traversals along the principal axes of the latent space, coloured by per-residue RMSF",
        f"# (A, B-factor column; blue 0 to red {top:.1f} A). Maps of the states are opened hidden.",
        "",
    ]
    for i, name in enumerate(traversals, start=1):
        lines.append(f"open {name} coordsets true")
        lines.append(f"rename #{i} {Path(name).stem}")
    n_structures = len(traversals)
    for j, name in enumerate(maps, start=n_structures + 1):
        lines.append(f"open {name}")
        lines.append(f"volume #{j} style surface transparency 0.6")
        lines.append(f"hide #{j} models")
    lines += [
        "hide atoms",
        "show cartoons",
        f"color bfactor #1-{n_structures} palette blue:white:red range 0,{top:.2f}",
    ]
    for i in range(2, n_structures + 1):
        lines.append(f"hide #{i} models")
    lines += [
        "view",
        "",
        f"# play PC1 back and forth; for PC2: `hide #1 models; show #2 models; coordset #2 1,{steps}`",
        f"coordset #1 1,{steps} pauseFrames {PAUSE_FRAMES} loop 3 bounce true",
        "",
        "# to record a video instead, run:",
        f"# movie record; coordset #1 1,{steps} pauseFrames {PAUSE_FRAMES} bounce true; "
        f"wait {2 * steps * PAUSE_FRAMES}; movie encode traversal_pc1.mp4",
        "",
    ]
    return "\n".join(lines)


def analyze(config: AnalyzeConfig) -> dict:
    """``atomvae analyze``: write states, traversals, RMSF, maps, movie.cxc and index.html into config.out
    (layout in the module docstring). Returns the content of states.json."""
    from atomvae.physics.density import atomic_numbers, gaussian_map, write_map
    from atomvae.structure.io import write_ensemble
    from atomvae.train.inference import latent_line, principal_axis_endpoints
    from atomvae.train.run import load_run

    out = Path(config.out)
    _check_output_folder(out, config.overwrite)
    if config.map_resolution <= 0:
        raise InputError("--map-resolution", f"must be positive, got {config.map_resolution}")
    if config.traversal_steps < 2:
        raise InputError("--traversal-steps", f"need at least 2 structures, got {config.traversal_steps}")
    if config.n_rmsf_samples < 2:
        raise InputError("--rmsf-samples", f"need at least 2 structures, got {config.n_rmsf_samples}")
    run = load_run(config.run, device=config.device)
    topology = run.topology
    mu, sigma, index, particles, latents_source = _latents_for_run(run, config)
    _check_latents(mu, run.config.model.latent_conf, latents_source)
    clusters: KMeansResult = kmeans(mu, config.states, seed=config.seed)
    states = decode_to_base_frame(run, clusters.centres, config.batch_size)
    base = run.base_coords

    # RMSF over one posterior draw of each of up to n_rmsf_samples particles (seeded subset).
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(mu), size=min(config.n_rmsf_samples, len(mu)), replace=False))
    draws = mu[chosen] + sigma[chosen] * rng.standard_normal(mu[chosen].shape).astype(mu.dtype)
    rmsf = per_residue_rmsf(decode_to_base_frame(run, draws, config.batch_size), topology)
    b_factors = rmsf[topology.residue_index]

    out.mkdir(parents=True, exist_ok=True)
    write_ensemble(out / "states.pdb", topology, states, b_factors=b_factors)

    projection, explained = latent_pca(mu, 2)
    traversals = []
    for component in range(min(2, mu.shape[1], len(mu) - 1)):
        start, end = principal_axis_endpoints(mu, config.percentile, component)
        line = latent_line(torch.as_tensor(start), torch.as_tensor(end), config.traversal_steps).numpy()
        coords = decode_to_base_frame(run, line, config.batch_size)
        name = f"traversal_pc{component + 1}.pdb"
        write_ensemble(out / name, topology, coords, b_factors=b_factors)
        variance = float(explained[component]) if component < len(explained) else float("nan")
        traversals.append(
            {
                "file": name,
                "axis": component + 1,
                "explained_variance": variance,
                "start": start.tolist(),
                "end": end.tolist(),
                "steps": config.traversal_steps,
                "ca_rmsd_end_to_end": _ca_rmsd(coords[0], coords[-1], topology),
            }
        )

    box, voxel_size, origin = _map_grid(run)
    weights = atomic_numbers(topology.element)
    maps = []
    for k, coords in enumerate(states):
        name = f"state_{k + 1}.mrc"
        write_map(
            out / name,
            gaussian_map(coords, weights, box, voxel_size, origin, config.map_resolution),
            voxel_size,
            origin,
        )
        maps.append(name)

    n = len(mu)
    with atomic_path(out / STATES_NPZ) as tmp:
        np.savez(
            tmp,
            index=index.astype(np.int64),
            state=(clusters.labels + 1).astype(np.int64),
            centres=clusters.centres.astype(np.float32),
            particles=np.array(particles),
        )
    residues = [
        f"{c}:{s}{i.strip()}"
        for c, s, i in zip(topology.chain_id, topology.res_seq, topology.ins_code, strict=True)
    ]
    summary = {
        "run": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "particles": particles,
        "latents": latents_source,
        "n_particles": n,
        "k": config.states,
        "seed": config.seed,
        "states": [
            {
                "state": k + 1,
                "model": k + 1,
                "count": int(clusters.counts[k]),
                "fraction": float(clusters.counts[k] / n),
                "map": maps[k],
                "ca_rmsd_to_base": _ca_rmsd(states[k], base, topology),
                "centre": clusters.centres[k].tolist(),
            }
            for k in range(config.states)
        ],
        "rmsf": {
            "atoms": "CA",
            "unit": "A",
            "n_structures": len(chosen),
            "residues": residues,
            "values": rmsf.tolist(),
        },
        "traversals": traversals,
        "map": {
            "box": box,
            "voxel_size": voxel_size,
            "origin": origin.tolist(),
            "resolution": config.map_resolution,
            "weights": "atomic number",
            "sigma": config.map_resolution / (np.pi * np.sqrt(2.0)),
        },
    }
    write_json(out / "states.json", summary)
    atomic_write_text(
        out / "movie.cxc",
        movie_script([t["file"] for t in traversals], maps, config.traversal_steps, float(rmsf.max())),
    )
    _write_index_html(out, summary, projection, explained, clusters, rmsf, topology)
    return summary


def _write_index_html(
    out: Path,
    summary: dict,
    projection: np.ndarray,
    explained: np.ndarray,
    clusters: KMeansResult,
    rmsf: np.ndarray,
    topology,
) -> None:
    k = len(clusters.centres)
    # a centre is its members' mean and the projection is linear: the centre's projection is theirs
    centre_projection = np.stack(
        [
            projection[clusters.labels == c].mean(axis=0)
            if (clusters.labels == c).any()
            else np.zeros(projection.shape[1])
            for c in range(k)
        ]
    )
    if projection.shape[1] == 1:
        projection = np.concatenate([projection, np.zeros_like(projection)], axis=1)
        centre_projection = np.concatenate([centre_projection, np.zeros_like(centre_projection)], axis=1)
    state_rows = [
        [
            str(s["state"]),
            str(s["count"]),
            f"{s['fraction']:.1%}",
            f"{s['ca_rmsd_to_base']:.2f}",
            f"MODEL {s['model']}",
            s["map"],
        ]
        for s in summary["states"]
    ]
    top = np.argsort(-rmsf)[:5]
    residues = summary["rmsf"]["residues"]
    traversal_rows = [
        [
            t["file"],
            f"PC{t['axis']}",
            f"{t['explained_variance']:.1%}",
            str(t["steps"]),
            f"{t['ca_rmsd_end_to_end']:.2f}",
        ]
        for t in summary["traversals"]
    ]
    grid = summary["map"]
    sections = [
        ReportSection(
            "States",
            paragraphs=[
                f"K-means (K = {k}, k-means++ starts, seed {summary['seed']}) of the posterior "
                f"means of {summary['n_particles']} particles; each state is the structure decoded "
                "at its cluster's centre (states.pdb, MODEL k = state k). The cross marks each "
                "cluster's mean position in this projection. Select a state's particles with "
                "`atomvae export RUN PARTICLES --state K --analysis THIS_FOLDER -o subset.star`."
            ],
            figures=[
                ReportFigure(
                    "latent_states",
                    _latent_states_figure(projection, explained, clusters.labels, centre_projection),
                    "Principal components of the posterior means, coloured by state.",
                )
            ],
            html=[
                _html_table(
                    ["state", "particles", "fraction", "C-alpha RMSD to base (Å)", "in states.pdb", "map"],
                    state_rows,
                )
            ],
        ),
        ReportSection(
            "Flexibility (RMSF)",
            paragraphs=[
                f"C-alpha RMSF of {summary['rmsf']['n_structures']} sampled structures (one "
                "posterior draw per particle, superposed on their mean), also in the B-factor column "
                "of states.pdb and the traversals (in Å, not converted to B-factors).",
                "Most flexible: " + ", ".join(f"{residues[i]} {rmsf[i]:.2f} Å" for i in top),
            ],
            figures=[ReportFigure("rmsf", _rmsf_figure(rmsf, topology), "Per-residue C-alpha RMSF.")],
        ),
        ReportSection(
            "Traversals",
            paragraphs=[
                "Structures along the principal axes of the posterior means, between the 1st and "
                "99th percentiles of the particles' projections. Open movie.cxc in ChimeraX to play "
                "them coloured by RMSF."
            ],
            html=[
                _html_table(
                    ["file", "axis", "variance", "structures", "C-alpha RMSD end to end (Å)"], traversal_rows
                )
            ],
        ),
        ReportSection(
            "Maps",
            paragraphs=[
                "state_<k>.mrc: atoms as Gaussians weighted by atomic number on the particles' box "
                "and pixel size, in the base's frame (they overlay the base and states.pdb; the box "
                "centre is the run's rotation centre, like a reconstruction from the particles' "
                "poses)."
            ],
            rows=[
                ("box", f"{grid['box']} voxels"),
                ("voxel size", f"{grid['voxel_size']:.4g} Å"),
                ("resolution", f"{grid['resolution']:g} Å (Gaussian sigma {grid['sigma']:.3g} Å)"),
                ("origin (voxel 0)", ", ".join(f"{v:.2f}" for v in grid["origin"]) + " Å"),
            ],
        ),
    ]
    inputs = [
        ("run", summary["run"]),
        ("checkpoint", summary["checkpoint"]),
        ("particles", summary["particles"] or "unknown"),
        ("latents", summary["latents"]),
    ]
    page, _ = html_page(out, "atomvae analyze", sections, inputs, None)
    atomic_write_text(out / "index.html", page)


# ------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportConfig:
    """``atomvae export``: exactly one selection of state (with analysis, the analyze folder), distance
    (two atoms, with below and/or above in A) or index_file."""

    run: Path
    particles: Path
    out: Path
    state: int | None = None
    analysis: Path | None = None
    distance: str | None = None
    below: float | None = None
    above: float | None = None
    index_file: Path | None = None
    latents: Path | None = None
    device: str = "cpu"
    batch_size: int = 256
    overwrite: bool = False


def _rows_of_state(config: ExportConfig, wanted: int) -> tuple[np.ndarray, str]:
    """Rows of the particles in state ``wanted`` (1-based) of config.analysis."""
    if config.analysis is None:
        raise InputError("--state", "needs --analysis, the folder atomvae analyze wrote")
    path = Path(config.analysis)
    path = path / STATES_NPZ if path.is_dir() else path
    if not path.is_file():
        raise InputError(
            path, f"not found (--analysis is the folder atomvae analyze wrote, with {STATES_NPZ})"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            index, state, recorded = data["index"], data["state"], str(data["particles"])
    except (KeyError, ValueError, OSError) as err:
        raise InputError(path, f"not an atomvae analyze states file: {err}") from None
    k = int(state.max()) if len(state) else 0
    if not 1 <= wanted <= k:
        raise InputError("--state", f"states are numbered 1..{k} in {path}, got {wanted}")
    if recorded and Path(recorded).resolve() != Path(config.particles).resolve():
        print(
            f"atomvae: note: the states were computed for {recorded}; selecting the same rows of "
            f"{config.particles}",
            file=sys.stderr,
        )
    return index[state == wanted], f"state {wanted} of {k}"


def _rows_by_distance(config: ExportConfig, distance: str) -> tuple[np.ndarray, str]:
    """Rows of the particles whose decoded ``distance`` (an atom pair) is below/above config's cutoffs."""
    from atomvae.evaluate.marginals import atom_distances, parse_distance
    from atomvae.train.inference import encode_particles
    from atomvae.train.run import base_structure_path, load_run

    if config.below is None and config.above is None:
        raise InputError("--distance", "give --below and/or --above (A)")
    spec = parse_distance(distance)
    run = load_run(config.run, device=config.device)
    pair = np.array([spec.atom_indices(run.topology, base_structure_path(run.run_dir))])
    if config.latents is not None:
        latents = read_latents(config.latents)
        mu, index = latents.mu, latents.index
    else:
        encoded = encode_particles(run, config.particles, batch_size=config.batch_size)
        mu, index = encoded["mu"], encoded["index"]
    distances = np.concatenate(
        [
            atom_distances(decode_to_base_frame(run, mu[i : i + config.batch_size]), pair)[:, 0]
            for i in range(0, len(mu), config.batch_size)
        ]
    )
    keep = np.ones(len(distances), dtype=bool)
    parts = []
    if config.below is not None:
        keep &= distances < config.below
        parts.append(f"< {config.below:g} A")
    if config.above is not None:
        keep &= distances > config.above
        parts.append(f"> {config.above:g} A")
    return index[keep], f"{spec.label} {' and '.join(parts)} in the posterior-mean structure"


def select_particles(config: ExportConfig) -> tuple[np.ndarray, str]:
    """(0-based particle rows, a description of the selection) for exactly one selection in config."""
    from atomvae.data.export import read_index_list

    chosen = [
        name
        for name, value in (
            ("--state", config.state),
            ("--distance", config.distance),
            ("--latent-file", config.index_file),
        )
        if value is not None
    ]
    if len(chosen) != 1:
        raise InputError(
            None,
            "choose exactly one selection: --state, --distance or --latent-file"
            + (f" (got {', '.join(chosen)})" if chosen else ""),
        )
    if config.distance is None and (config.below is not None or config.above is not None):
        raise InputError("--below/--above", "only go with --distance")
    if config.state is not None:
        return _rows_of_state(config, config.state)
    if config.distance is not None:
        return _rows_by_distance(config, config.distance)
    assert config.index_file is not None  # exactly one selection was given (checked above)
    return read_index_list(config.index_file), f"rows listed in {config.index_file}"


def export_particles(config: ExportConfig) -> tuple[int, int, str]:
    """``atomvae export``: write the selected particles of config.particles (.star/.cs) to config.out with
    all their metadata. Returns (particles written, particles in the file, selection description)."""
    from atomvae.data.export import write_particle_subset

    out = Path(config.out)
    if out.exists() and not config.overwrite:  # checked before any encoding work
        raise InputError(out, "exists (use --overwrite to replace it)")
    rows, description = select_particles(config)
    written, total = write_particle_subset(config.particles, rows, out, overwrite=config.overwrite)
    return written, total, description
