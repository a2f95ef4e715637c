"""The "searched" pose route: poses from the images and the base structure alone, by projection matching
alternated with short training runs (heterogeneous refinement, as cryoDRGN2 and cryoSPARC do it).

Round 1 fits ``fit.n_fitted`` references to the particles: the base with its dynamic domains moved as
rigid bodies (``train.domain_references``), plus ``path_points`` structures on the way from the base to
each; every particle is searched against all of them (``pose_search.search_poses``). With
``fit.n_fitted`` 0 it searches against the base alone. Each later round:

1. a run (``round_epochs`` stage-2 epochs, given poses, started from the previous round's weights) learns
   conformations from the latest poses;
2. each particle is encoded and its posterior mean decoded: its own conformation;
3. references spread along what was learnt: the base, round 1's fitted references and ``n_references``
   decoded particles chosen by farthest-point sampling (C-alpha RMSD) from the base;
4. a global search of each particle against only the ``n_nearest`` references nearest its own
   conformation (a closed particle is never offered the open base, an open one never a closed state:
   with every reference allowed, the extra states steal particles whose own state they do not hold);
5. a local refinement against the particle's own decoded conformation (``refine``: in the last round only
   by default), starting from the better of the new pose and the previous round's by their score against
   that conformation: a round never loses a pose its predecessor had right.

The last round's poses are best when its learning run is long (a model trained 6 epochs decodes
conformations that pose the closed state of adenylate kinase better than one trained 1): the shipped
benchmark route runs ``round_epochs`` (1, 6) over three rounds and continues the final training from the
last learning run's weights (``last_learning_run``), so the 6 epochs are not paid twice.

Templates are rendered with the training's image model: residue pseudo-atoms weighted by their scattering
and (from round 2) the run's learnt width; the score is amplitude-free (normalised cross-correlation),
as the per-image amplitude of training is. The final model is then trained on the last round's poses by
the caller (``--poses given`` or ``refine``).

Frames: every reference is centred on the base's centre of atoms, the rotation centre of a run trained
without --pose-center, so the poses written here need no --pose-center either.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomvae.errors import atomic_path, atomic_write_text
from atomvae.physics.coarse_grain import group_residues
from atomvae.structure.domains import move_domains
from atomvae.train.domain_references import DomainFitConfig, fit_domain_references
from atomvae.train.pose_search import (
    PoseSearchConfig,
    refine_poses,
    search_poses,
    write_search_result,
)

REFINE_ROUNDS = ("every", "last", "none")


@dataclass(frozen=True)
class SearchedRouteConfig:
    """Numbers of the route. rounds: pose searches (the first against the base); round_epochs: stage-2
    epochs of each learning run between searches, one value for all or one per run (the last repeats);
    n_references / n_nearest: learnt states searched against, and how many of them (nearest the
    particle's own conformation) each particle may match; refine: the local refinement against each
    particle's own conformation after the later searches, "every" one, the "last" one (earlier rounds
    only feed a learning run, which tolerates a few degrees) or "none";
    fit: round 1's references fitted to the particles as rigid domain motions of the base, and structures
    on the rigid path to each (``domain_references.DomainFitConfig``; n_fitted 0: the base alone);
    render_sigma: A, the templates' width in round 1 (later rounds take the run's learnt width);
    resolution: A, low-pass of the round-1 search; later rounds step down to ``final_resolution``."""

    rounds: int = 2
    round_epochs: int | tuple[int, ...] = 4
    fit: DomainFitConfig = DomainFitConfig()
    n_references: int = 4
    n_nearest: int = 3
    refine: str = "last"
    render_sigma: float = 1.5
    resolution: float = 8.0
    final_resolution: float = 6.0
    image_size: int = 64
    max_decoded: int = 100000  # particles decoded at most (all of them at benchmark sizes)

    def __post_init__(self) -> None:
        epochs = self._epochs_per_run
        if self.rounds < 1 or not epochs or min(epochs) < 1 or self.n_references < 0 or self.n_nearest < 1:
            raise ValueError("rounds, round_epochs, n_nearest >= 1 and n_references >= 0")
        if self.refine not in REFINE_ROUNDS:
            raise ValueError(f"refine must be one of {', '.join(REFINE_ROUNDS)}, got {self.refine!r}")

    @property
    def _epochs_per_run(self) -> tuple[int, ...]:
        return self.round_epochs if isinstance(self.round_epochs, tuple) else (self.round_epochs,)

    def epochs_of_run(self, index: int) -> int:
        """Stage-2 epochs of learning run ``index`` (1-based: the run before round index + 1)."""
        epochs = self._epochs_per_run
        return epochs[min(index, len(epochs)) - 1]

    def refines(self, round_index: int) -> bool:
        """Whether round ``round_index`` (2, 3, ...) refines against the particles' own conformations."""
        return self.refine == "every" or (self.refine == "last" and round_index == self.rounds)


def last_learning_run(folder: Path, route: SearchedRouteConfig) -> Path | None:
    """The route's last learning run (its weights learnt the conformations the last poses were refined
    against; a final training may continue from them), None with a single round."""
    return Path(folder) / f"run_round{route.rounds - 1}" if route.rounds > 1 else None


def render_atoms_of_base(coords: np.ndarray, topology) -> tuple[torch.Tensor, torch.Tensor]:
    """The training's residue pseudo-atoms of a structure: coords (A, 3) A (already centred on the
    rotation centre) -> positions (G, 3) float32 A and masses (G,) in units of their mean."""
    from atomvae.physics.coarse_grain import coarse_grained_density
    from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates

    coords64 = torch.as_tensor(np.asarray(coords), dtype=torch.float64)
    local = local_coordinates(coords64, topology).numpy()
    positions, residue, mass = coarse_grained_density(local, topology)
    rot, trans = backbone_frames(coords64, topology)
    placed = frames_to_coordinates(rot, trans, torch.as_tensor(positions), residue)
    return placed.float(), torch.as_tensor(mass / mass.mean(), dtype=torch.float32)


@dataclass
class DecodedParticles:
    """Each particle's own conformation from a trained run, in the base-centred frame.

    render (N, G, 3) A: its rendered pseudo-atoms; ca (N, R, 3) A: its C-alphas; masses (G,); sigma (A)
    the run's learnt width; mu (N, D) the posterior means; in dataset order."""

    render: torch.Tensor
    ca: torch.Tensor
    masses: torch.Tensor
    sigma: float
    mu: np.ndarray


@torch.no_grad()
def decode_particles(run_dir: Path, particles: Path, rows: np.ndarray) -> DecodedParticles:
    """Encode the particles (file rows ``rows``, the dataset's order) with the run and decode their
    posterior means (pseudo-atoms and C-alphas), centred on the base's centre of atoms."""
    from atomvae.train.inference import encode_particles
    from atomvae.train.run import load_run

    run = load_run(run_dir)
    encoded = encode_particles(run, particles, indices=np.asarray(rows))
    order = {int(r): i for i, r in enumerate(encoded["index"])}
    mu = encoded["mu"][[order[int(r)] for r in rows]]
    model = run.model
    # model frame -> base-centred frame (they differ only when the run had a --pose-center)
    offset = (model.base_center - torch.as_tensor(run.base_coords, dtype=torch.float32).mean(0)).float()
    ca_index = torch.as_tensor(run.topology.select("CA"))
    render, ca = [], []
    for chunk in torch.as_tensor(mu, dtype=torch.float32).split(512):
        render.append(model.decode(chunk, "render") + offset)
        ca.append(model.decode(chunk, "all")[:, ca_index] + offset)
    sigma = model.render_sigma
    masses = model.render_mass
    if masses is None:
        raise ValueError(
            "the searched route needs a run rendering residue pseudo-atoms (render_atoms: residue)"
        )
    return DecodedParticles(
        render=torch.cat(render),
        ca=torch.cat(ca),
        masses=masses.float(),
        sigma=float(sigma),
        mu=mu,
    )


def _rmsd_to(ca: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """C-alpha RMSD (no superposition: one frame) of each of ca (N, R, 3) to reference (R, 3): (N,)."""
    return (ca - reference).square().sum(-1).mean(-1).sqrt()


def spread_references(ca: torch.Tensor, base_ca: torch.Tensor, n: int) -> list[int]:
    """Indices of ``n`` particles whose conformations (ca (N, R, 3)) spread over the learnt manifold:
    farthest-point sampling starting from the base (base_ca (R, 3)), by C-alpha RMSD in the common frame."""
    nearest = _rmsd_to(ca, base_ca)
    chosen: list[int] = []
    for _ in range(min(n, len(ca))):
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, _rmsd_to(ca, ca[chosen[-1]]))
    return chosen


def nearest_allowed(ca: torch.Tensor, reference_ca: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) bool: for each particle (ca (N, R, 3)) its ``k`` references (reference_ca (M, R, 3)) of
    smallest C-alpha RMSD."""
    distance = torch.stack([_rmsd_to(ca, r) for r in reference_ca], dim=1)
    k = min(k, len(reference_ca))
    allowed = torch.zeros_like(distance, dtype=torch.bool)
    allowed.scatter_(1, distance.topk(k, dim=1, largest=False).indices, True)
    return allowed


def searched_poses(
    particles: Path,
    base_path: Path,
    folder: Path,
    train_config,
    route: SearchedRouteConfig = SearchedRouteConfig(),
    search: PoseSearchConfig = PoseSearchConfig(),
    on_round: Callable[[str, Path], None] | None = None,
    progress: bool | None = False,
) -> tuple[Path, dict]:
    """Run the route in ``folder`` (resumable: a round whose STAR file exists is not redone); returns the
    last round's STAR file and the wall seconds per step. train_config: the TrainConfig of the learning
    runs (its stage 2 is shortened to ``route.round_epochs``; poses given; no --pose-center).
    on_round(name, npz): called after each round's poses are written (diagnostics)."""
    from atomvae.data.dataset import ParticleDataset
    from atomvae.data.metadata import read_particles
    from atomvae.structure.io import read_structure
    from atomvae.train.loop import train

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = read_particles(particles)
    dataset = ParticleDataset(metadata, downsample_to=route.image_size)
    base = read_structure(base_path)
    base_coords = np.asarray(base.coords, dtype=np.float64)
    base_coords = base_coords - base_coords.mean(axis=0)
    base_render, masses = render_atoms_of_base(base_coords, base.topology)
    base_ca = torch.as_tensor(base_coords[base.topology.select("CA")], dtype=torch.float32)
    seconds: dict[str, float] = {}

    star = folder / "round1.star"
    fitted_file = folder / "round1_references.npz"
    round1_config = dataclasses.replace(search, sigma=route.render_sigma, resolution=route.resolution)
    if route.fit.n_fitted and not fitted_file.exists():
        start = time.perf_counter()
        fitted = fit_domain_references(
            dataset,
            base_render,
            group_residues(base.topology),
            base_ca.double().numpy(),
            masses,
            route.fit,
            round1_config,
            log=lambda line: print(f"[search poses] {line}", flush=True),
        )
        atom_domain = torch.as_tensor(fitted.labels)
        fitted_ca = move_domains(
            base_ca.double(), atom_domain, torch.as_tensor(fitted.centres), torch.as_tensor(fitted.motions)
        )
        with atomic_path(fitted_file) as tmp:
            np.savez(
                tmp,
                references=fitted.references.numpy(),
                ca=fitted_ca.float().numpy(),
                motions=fitted.motions,
                centres=fitted.centres,
                labels=fitted.labels,
                gain=np.asarray(fitted.gain),
                kind=np.asarray(fitted.kind),
            )
        seconds["fit_references"] = time.perf_counter() - start
    if fitted_file.exists():
        with np.load(fitted_file) as saved:
            round1_references = torch.as_tensor(saved["references"])
            round1_ca = torch.as_tensor(saved["ca"])
    else:
        round1_references, round1_ca = base_render[None], base_ca[None]
    if not star.exists():
        start = time.perf_counter()
        result = search_poses(dataset, round1_references, round1_config, progress=progress, masses=masses)
        write_search_result(metadata, dataset.rows, result, star)
        seconds["search1"] = time.perf_counter() - start
    if on_round:
        on_round("round1", star.with_suffix(".npz"))
    previous: Path | None = None
    for index in range(2, route.rounds + 1):
        learn_run = folder / f"run_round{index - 1}"
        if not (learn_run / "best.yaml").is_file():
            start = time.perf_counter()
            config = dataclasses.replace(
                train_config,
                pose_mode="given",
                init_from=None if previous is None else str(previous),
                stage2=train_config.stage2.with_epochs(route.epochs_of_run(index - 1)),
                data=dataclasses.replace(train_config.data, pose_center=None),
            )
            resume = (learn_run / "config.yaml").is_file()
            train(config, star, base_path, learn_run, resume=resume, show_progress=progress)
            seconds[f"train{index - 1}"] = time.perf_counter() - start
        previous = learn_run
        next_star = folder / f"round{index}.star"
        if not next_star.exists():
            start = time.perf_counter()
            decoded = decode_particles(learn_run, star, np.asarray(dataset.rows))
            chosen = spread_references(decoded.ca, base_ca, route.n_references)
            # round 1's references (the base first) stay, in the run's learnt width from now on
            references = torch.cat([round1_references, decoded.render[chosen]])
            reference_ca = torch.cat([round1_ca, decoded.ca[chosen]])
            allowed = nearest_allowed(decoded.ca, reference_ca, route.n_nearest)
            # coarse to fine: the low-pass steps from route.resolution to final_resolution over the rounds
            fraction = (index - 1) / max(route.rounds - 1, 1)
            resolution = route.resolution + fraction * (route.final_resolution - route.resolution)
            config = dataclasses.replace(search, sigma=decoded.sigma, resolution=resolution)
            result = search_poses(
                dataset, references, config, progress=progress, masses=decoded.masses, allowed=allowed
            )
            if route.refines(index):
                searched_reference = result.reference
                with np.load(star.with_suffix(".npz")) as last:
                    order = {int(r): i for i, r in enumerate(last["index"])}
                    previous_rotation = torch.as_tensor(
                        last["rotation"][[order[int(r)] for r in dataset.rows]]
                    )
                result = refine_poses(
                    dataset,
                    decoded.render,
                    torch.stack([result.rotation, previous_rotation.float()], dim=1),
                    result.shift,
                    config,
                    masses=decoded.masses,
                    progress=progress,
                )
                result.reference = searched_reference
            write_search_result(metadata, dataset.rows, result, next_star)
            atomic_write_text(
                next_star.with_suffix(".json"),
                json.dumps(
                    {
                        "resolution": resolution,
                        "sigma": decoded.sigma,
                        "reference_rmsd_to_base": _rmsd_to(reference_ca, base_ca).tolist(),
                        "particles_per_reference": np.bincount(
                            result.reference.numpy(), minlength=len(references)
                        ).tolist(),
                    },
                    indent=2,
                ),
            )
            seconds[f"search{index}"] = time.perf_counter() - start
        star = next_star
        if on_round:
            on_round(f"round{index}", star.with_suffix(".npz"))
    return star, seconds
