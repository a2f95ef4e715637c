"""References for the pose search fitted to the particles: the base with its domains moved as bodies.

Why: a particle is posed only against a reference near its own state (a closed adenylate-kinase particle
searched against the open base is within 10 degrees of its true view 5% of the time; against the base's
domains moved rigidly onto the closed state, 76%: BENCHMARKS.md, "Searched poses"). The base's domains
come from its elastic network (``structure.domains``); their motions are fitted here to the particles,
as a multi-reference classification fits its references, with the base held as the first reference.

Each new reference (greedy, ``n_fitted`` of them) maximises the *gain* of a fixed subset of particles:
the mean over the subset of max(0, s_new - s_old), where s is a particle's best normalised
cross-correlation over a uniform grid of views (the search's global stage, so no pose is assumed) and
s_old its best over the references already kept. Particles the old references explain are indifferent
to the new one; the new reference is pulled towards the state of the rest.

1. Coarse: amplitudes of the rigid parts of the ``n_modes`` slowest elastic modes (each domain moving as
   a body along them), by Nelder-Mead from the best of +-``start_amplitude`` along the first three modes.
2. Fine: every domain but the largest gets its own six rigid-body parameters, fitted by gradient ascent
   of the subset's cross-correlation at poses searched against the current reference (expectation-
   maximisation: the particles that gain are re-posed, the motions re-fitted, ``em_rounds`` times).

The references handed to the search are the base, the fitted ones, and ``path_points`` structures on the
rigid path from the base to each fitted one (for the states in between).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

from atomvae.data.dataset import ParticleDataset, fourier_crop
from atomvae.physics.render import render_projections
from atomvae.structure.domains import domain_centres, dynamic_domains, move_domains, rigid_mode_parts
from atomvae.train.pose_search import (
    PoseSearchConfig,
    _rfft_weights,
    _Scorer,
    grid_templates,
    search_poses,
    super_fibonacci_rotations,
)


@dataclass(frozen=True)
class DomainFitConfig:
    """Numbers of the fit. n_domains: dynamic domains of the base; n_modes: elastic modes of the coarse
    fit; n_fitted: references fitted besides the base; path_points: references between the base and each
    fitted one; subset: particles scoring the fit; start_amplitude: A RMSD of the coarse fit's starts;
    coarse_evaluations: Nelder-Mead evaluations; em_rounds / em_steps / em_lr: the fine fit (rounds of
    pose search and gradient steps, Adam's step in rad and A)."""

    n_domains: int = 3
    n_modes: int = 5
    n_fitted: int = 1
    path_points: int = 2
    subset: int = 384
    start_amplitude: float = 3.0
    coarse_evaluations: int = 150
    em_rounds: int = 4
    em_steps: int = 40
    em_lr: float = 0.01
    n_rotations: int = 5000
    search_box: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_domains < 2 or self.n_modes < 1 or self.n_fitted < 0 or self.path_points < 0:
            raise ValueError("n_domains >= 2, n_modes >= 1, n_fitted >= 0, path_points >= 0")
        if self.subset < 1 or self.coarse_evaluations < 1 or self.em_rounds < 0 or self.em_steps < 0:
            raise ValueError("subset, coarse_evaluations >= 1; em_rounds, em_steps >= 0")


@dataclass
class FittedReferences:
    """references (M, G, 3) A pseudo-atoms (the base first); motions (M, D, 6) each one's domain motions
    (w rad, v A, about centres (D, 3)); labels (R,) each residue's domain; gain (M,) of each fitted
    reference over those before it (the base's is 0); kind: "base", "fitted" or "path" per reference."""

    references: torch.Tensor
    motions: np.ndarray
    centres: np.ndarray
    labels: np.ndarray
    gain: list[float]
    kind: list[str]


class _SubsetScores:
    """Best normalised cross-correlation over a grid of views (zero shift, coarse box) of a fixed subset
    of particles against any reference: the global stage of ``pose_search.search_poses``."""

    def __init__(
        self, dataset: ParticleDataset, rows: np.ndarray, config: DomainFitConfig, search: PoseSearchConfig
    ):
        self.box, self.pixel_size = int(dataset.box), float(dataset.pixel_size)
        self.search_box = min(config.search_box, self.box)
        self.grid = super_fibonacci_rotations(config.n_rotations, torch.float32)
        self.scorer = _Scorer(
            self.search_box, self.pixel_size * self.box / self.search_box, search.resolution
        )
        batch = dataset.__getitems__(rows.tolist())
        self.filtered, self.ctf_power = self.scorer.filtered_images(
            fourier_crop(batch["image"].float(), self.search_box), batch["ctf"]
        )
        self.sigma = search.sigma

    @torch.no_grad()
    def __call__(self, reference: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
        """reference (G, 3) A -> (N,) each particle's best score over the grid."""
        templates = grid_templates(
            reference, self.grid, self.box, self.pixel_size, self.sigma, masses, self.search_box
        )
        power = torch.fft.rfft2(templates).abs().square().flatten(1)
        scores = self.scorer.global_scores(self.filtered, self.ctf_power, templates.flatten(1), power)
        return scores.max(dim=1).values


class _PoseScores:
    """Normalised cross-correlation of particles ``rows`` with a reference at fixed poses, on the model's
    grid below 1/resolution: the fine fit's objective, differentiable in the reference."""

    def __init__(self, dataset: ParticleDataset, rows: np.ndarray, search: PoseSearchConfig):
        self.box, self.pixel_size = int(dataset.box), float(dataset.pixel_size)
        self.scorer = _Scorer(self.box, self.pixel_size, search.resolution)
        batch = dataset.__getitems__(rows.tolist())
        self.filtered, self.ctf_power = self.scorer.filtered_images(batch["image"].float(), batch["ctf"])
        self.sigma = search.sigma
        self.multiplicity = _rfft_weights(self.box)

    def __call__(
        self, reference: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor, masses: torch.Tensor
    ) -> torch.Tensor:
        """reference (G, 3) A, rotation (N, 3, 3), shift (N, 2) A -> (N,) scores."""
        templates = render_projections(
            reference, rotation, shift, self.box, self.pixel_size, self.sigma, masses
        )
        spectra = torch.fft.rfft2(templates)
        # <T, M C y> by Parseval over the half spectrum (the mask is in filtered, the multiplicities here)
        numerator = ((spectra.conj() * self.filtered).real * self.multiplicity).sum(
            dim=(-2, -1)
        ) / self.box**2
        norm = (self.ctf_power * spectra.abs().square()).sum(dim=(-2, -1)).clamp_min(1e-30) / self.box**2
        return numerator / norm.sqrt()


def fit_domain_references(
    dataset: ParticleDataset,
    base_render: torch.Tensor,
    render_residue: np.ndarray,
    base_ca: np.ndarray,
    masses: torch.Tensor,
    config: DomainFitConfig = DomainFitConfig(),
    search: PoseSearchConfig = PoseSearchConfig(),
    log=None,
) -> FittedReferences:
    """Fit ``config.n_fitted`` references to the particles of ``dataset`` (see the module docstring).

    base_render (G, 3) A: the base's rendered pseudo-atoms centred on the rotation centre;
    render_residue (G,): the residue of each; base_ca (R, 3) A its C-alphas in the same frame; masses (G,)
    the pseudo-atoms' weights; search: the low-pass (resolution) and width (sigma) of the scores.
    log(str): progress lines (default none)."""
    say = log or (lambda _line: None)
    base_render = torch.as_tensor(base_render, dtype=torch.float32)
    masses = torch.as_tensor(masses, dtype=torch.float32)
    labels = dynamic_domains(base_ca, config.n_domains)
    centres = domain_centres(base_ca, labels)
    parts = rigid_mode_parts(base_ca, labels, config.n_modes)  # (K, D, 6)
    atom_domain = torch.as_tensor(labels[np.asarray(render_residue)])
    centres_t = torch.as_tensor(centres, dtype=torch.float32)
    say(f"domains of the base (elastic network): {np.bincount(labels).tolist()} residues")

    def moved(motion: np.ndarray | torch.Tensor) -> torch.Tensor:
        return move_domains(base_render, atom_domain, centres_t, torch.as_tensor(motion, dtype=torch.float32))

    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(len(dataset), min(config.subset, len(dataset)), replace=False))
    subset_scores = _SubsetScores(dataset, rows, config, search)
    best_so_far = subset_scores(base_render, masses)
    motions = [np.zeros((len(centres), 6))]
    gains = [0.0]
    for index in range(config.n_fitted):

        def gain_of(motion: np.ndarray, floor: torch.Tensor = best_so_far) -> float:
            return float((subset_scores(moved(motion), masses) - floor).clamp_min(0).mean())

        # 1. coarse: rigid parts of the slowest modes
        def coarse_loss(amplitudes: np.ndarray) -> float:
            return -gain_of(np.tensordot(amplitudes, parts, axes=1))

        starts = []
        for j in range(min(3, config.n_modes)):
            for sign in (1.0, -1.0):
                start = np.zeros(config.n_modes)
                start[j] = sign * config.start_amplitude
                starts.append(start)
        start = min(starts, key=coarse_loss)
        simplex = start + np.vstack(
            [np.zeros(config.n_modes), (2.0 / 3.0) * config.start_amplitude * np.eye(config.n_modes)]
        )
        coarse = minimize(
            coarse_loss,
            start,
            method="Nelder-Mead",
            options={
                "maxfev": config.coarse_evaluations,
                "initial_simplex": simplex,
                "xatol": 0.05,
                "fatol": 1e-4,
            },
        )
        motion = np.tensordot(coarse.x, parts, axes=1)
        say(f"reference {index + 1}: elastic-mode fit, gain {-coarse.fun:.4f} ({coarse.nfev} evaluations)")
        # 2. fine: six parameters per domain, expectation-maximisation over poses
        motion = _fine_fit(
            dataset, rows, motion, moved, subset_scores, best_so_far, masses, config, search, say
        )
        gain = gain_of(motion)
        say(f"reference {index + 1}: fitted, gain {gain:.4f}")
        motions.append(motion)
        gains.append(gain)
        best_so_far = torch.maximum(best_so_far, subset_scores(moved(motion), masses))

    references, all_motions, kind = [base_render], [motions[0]], ["base"]
    for motion in motions[1:]:
        for t in np.linspace(0.0, 1.0, config.path_points + 2)[1:-1]:
            references.append(moved(t * motion))
            all_motions.append(t * motion)
            kind.append("path")
        references.append(moved(motion))
        all_motions.append(motion)
        kind.append("fitted")
    return FittedReferences(
        references=torch.stack([r.detach() for r in references]),
        motions=np.stack(all_motions),
        centres=centres,
        labels=labels,
        gain=gains,
        kind=kind,
    )


def _fine_fit(dataset, rows, motion, moved, subset_scores, floor, masses, config, search, say) -> np.ndarray:
    """EM over the particles of ``rows`` that the current motion explains better than ``floor``: search
    their poses against moved(motion), then Adam on every non-largest domain's (w, v) at those poses."""
    free = torch.zeros(len(motion), 6, dtype=torch.bool)
    free[1:] = True  # domain 0 (the largest) holds the frame
    for round_index in range(config.em_rounds):
        reference = moved(motion)
        scores = subset_scores(reference, masses)
        gaining = rows[(scores > floor).numpy()]
        if len(gaining) < 8:
            say(f"  fine fit round {round_index + 1}: only {len(gaining)} particles gain; stopped")
            break
        posed = search_poses(
            dataset, reference.detach(), search, progress=False, indices=gaining, masses=masses
        )
        pose_scores = _PoseScores(dataset, gaining, search)
        parameters = torch.as_tensor(motion, dtype=torch.float32).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([parameters], lr=config.em_lr)
        for _step in range(config.em_steps):
            optimiser.zero_grad()
            current = torch.where(free, parameters, parameters.detach())
            score = pose_scores(moved(current), posed.rotation, posed.shift, masses)
            (-score.mean()).backward()
            optimiser.step()
        motion = parameters.detach().double().numpy()
        say(
            f"  fine fit round {round_index + 1}: {len(gaining)} particles, cross-correlation "
            f"{float(posed.score.mean()):.4f} -> {float(score.detach().mean()):.4f}"
        )
    return motion
