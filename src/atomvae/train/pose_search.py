"""Poses of particles by projection matching against the base structure (exhaustive search, then local).

Why: the paper pre-trains its pose encoder on the fixed base structure (stage 1) for 2000 epochs with 128
pose samples per image. Under the CPU budget (8 epochs, 8 samples) that amortised search does not find the
poses (on the adenylate-kinase benchmark its median pose error after stage 1 is close to that of random
poses: BENCHMARKS.md, section "End to end: adenylate kinase (issue 6)"). The
classic cryo-EM answer to the same question -- which view of this known structure is this image? -- is
an exhaustive search (paper section 2.2 cites it), and on the base structure it costs minutes, not hours.
Its poses then start a "refine" training, where the pose head learns corrections.

Score: the Gaussian-noise matched filter, i.e. the normalised cross-correlation between the image y and the
CTF-filtered template C*T, restricted to frequencies below 1/resolution (DC excluded):

    score = <M C T, y> / ||M C T||  =  <T, M C y> / sqrt(sum_k M C(k)^2 |T(k)|^2)

(C is real and even, so it moves onto the image: every template is compared to every image with one
matrix product, and the norm is a second product of CTF^2 with the templates' power spectra.)

1. Global: a super-Fibonacci grid of ``n_rotations`` rotations (uniform on SO(3)), templates and images
   Fourier-cropped to ``search_box`` pixels, no shift; the ``top_k`` best rotations per image go on.
2. Each candidate at the model's grid with a cross-correlation map over shifts (|shift| <= max_shift A,
   sub-pixel by a parabola through the peak); the best candidate is kept.
3. Local: rounds of hill climbing over small rotations (identity and +-step about each image axis) with
   the shift re-searched every time, the step halving from half the grid spacing.

Conventions: rotations map base-model coordinates (centred on the base's centre of atoms) to the image
frame, ``x_img = R x + (shift, 0)``, exactly as ``physics.render`` and the training poses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import roma
import torch
from tqdm.auto import tqdm

from atomvae.data.dataset import ParticleDataset, fourier_crop
from atomvae.physics.ctf import CTFParams, ctf_2d
from atomvae.physics.render import band_limited_spectra, render_projections

SUPER_FIBONACCI_PSI = 1.533751168755204288118041  # Alexa 2022, the root of psi^4 = psi + 4


@dataclass(frozen=True)
class PoseSearchConfig:
    """Numbers of the search. Defaults suit 64-px particles of a ~200-residue protein at 1-3 A pixels."""

    n_rotations: int = 5000  # global grid over SO(3): 5,000 -> ~10 deg between neighbours
    search_box: int = 24  # px of the global stage (Fourier crop of the model's grid)
    resolution: float = 8.0  # A: frequencies above 1/resolution are ignored in every stage
    top_k: int = 8  # global candidates per image examined with shifts
    max_shift: float = 10.0  # A, largest in-plane shift searched
    local_rounds: int = 4  # hill-climbing rounds (the step halves every 2 rounds)
    atoms: str = "CA"  # atoms rendered for the templates ("CA", "backbone", "heavy")
    sigma: float = 2.0  # A, Gaussian width of each rendered atom (the cpu preset's renderer)
    batch_size: int = 256  # images per chunk

    def __post_init__(self) -> None:
        if self.n_rotations < 1 or self.top_k < 1 or self.local_rounds < 0 or self.batch_size < 1:
            raise ValueError("n_rotations, top_k, batch_size >= 1 and local_rounds >= 0")
        if self.search_box % 2 or self.search_box < 8:
            raise ValueError(f"search_box must be even and >= 8, got {self.search_box}")
        if not (self.resolution > 0 and self.max_shift >= 0 and self.sigma > 0):
            raise ValueError("resolution > 0, max_shift >= 0, sigma > 0")


@dataclass
class PoseSearchResult:
    """rotation (N, 3, 3), shift (N, 2) A, score (N,) normalised cross-correlation of the final pose,
    global_score (N,) of the best grid rotation, reference (N,) index of the best-matching reference,
    grid_spacing (deg): median nearest-neighbour angle of the rotation grid."""

    rotation: torch.Tensor
    shift: torch.Tensor
    score: torch.Tensor
    global_score: torch.Tensor
    reference: torch.Tensor
    grid_spacing: float


def super_fibonacci_rotations(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n rotation matrices (n, 3, 3) spread uniformly over SO(3) (super-Fibonacci spiral, Alexa 2022)."""
    s = torch.arange(n, dtype=torch.float64) + 0.5
    r = torch.sqrt(s / n)
    big_r = torch.sqrt(1.0 - s / n)
    alpha = 2.0 * math.pi * s / math.sqrt(2.0)
    beta = 2.0 * math.pi * s / SUPER_FIBONACCI_PSI
    quaternions = torch.stack(
        [r * torch.sin(alpha), r * torch.cos(alpha), big_r * torch.sin(beta), big_r * torch.cos(beta)], dim=-1
    )
    return roma.unitquat_to_rotmat(quaternions).to(dtype)


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of a^T b for rotations (..., 3, 3)."""
    trace = (a * b).sum(dim=(-2, -1))
    return torch.rad2deg(torch.arccos(((trace - 1.0) / 2.0).clamp(-1.0, 1.0)))


def grid_spacing_deg(rotations: torch.Tensor, n_probe: int = 512) -> float:
    """Median angle from a grid rotation to its nearest other grid rotation (probe of n_probe members)."""
    probe = rotations[torch.linspace(0, len(rotations) - 1, min(n_probe, len(rotations))).long()]
    # |<q1, q2>| = cos(angle/2): the largest over the grid (excluding itself) is the nearest neighbour
    q_grid = roma.rotmat_to_unitquat(rotations.double())
    q_probe = roma.rotmat_to_unitquat(probe.double())
    dots = (q_probe @ q_grid.T).abs()
    dots[dots > 1.0 - 1e-12] = -1.0
    nearest = torch.rad2deg(2.0 * torch.arccos(dots.max(dim=1).values.clamp(max=1.0)))
    return float(nearest.median())


def small_rotations(step_deg: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Identity and +-step about the x, y and z axes: (7, 3, 3)."""
    angle = math.radians(step_deg)
    vectors = [torch.zeros(3, dtype=torch.float64)]
    for axis in range(3):
        for sign in (1.0, -1.0):
            v = torch.zeros(3, dtype=torch.float64)
            v[axis] = sign * angle
            vectors.append(v)
    return roma.rotvec_to_rotmat(torch.stack(vectors)).to(dtype)


def neighbour_rotations(step_deg: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 27 rotations with rotation vectors in {-step, 0, step}^3 (identity first): (27, 3, 3). Diagonal
    moves let a hill climb reach an error about any axis in as many rounds as one about an image axis."""
    values = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64) * math.radians(step_deg)
    vectors = torch.cartesian_prod(values, values, values)
    return roma.rotvec_to_rotmat(vectors).to(dtype)


def _low_pass_mask(box: int, pixel_size: float, resolution: float) -> torch.Tensor:
    """(box, box//2 + 1) float: 1 where 0 < |k| <= 1/resolution on the rfft grid, else 0."""
    ky = torch.fft.fftfreq(box, d=pixel_size, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(box, d=pixel_size, dtype=torch.float64)[None, :]
    k2 = kx**2 + ky**2
    mask = (k2 <= 1.0 / resolution**2) & (k2 > 0)
    return mask.float()


def _rfft_weights(box: int) -> torch.Tensor:
    """(box//2 + 1,) multiplicities of the rfft columns in the full spectrum (Parseval over a half grid)."""
    weights = torch.full((box // 2 + 1,), 2.0)
    weights[0] = 1.0
    if box % 2 == 0:
        weights[-1] = 1.0
    return weights


class _Scorer:
    """Matched-filter scores of templates against images on one grid (box px of pixel_size A)."""

    def __init__(self, box: int, pixel_size: float, resolution: float):
        self.box = box
        self.pixel_size = pixel_size
        self.mask = _low_pass_mask(box, pixel_size, resolution)
        self.weights = self.mask * _rfft_weights(box)

    def filtered_images(self, images: torch.Tensor, ctf: CTFParams) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) -> spectra M C y (B, H, W//2+1) complex and M C^2 w (B, H, W//2+1) for the norms."""
        c = ctf_2d(ctf.to(dtype=torch.float32), self.box, self.pixel_size, rfft=True)
        return torch.fft.rfft2(images) * (self.mask * c), c.square() * self.weights

    def global_scores(
        self,
        filtered: torch.Tensor,
        ctf_power: torch.Tensor,
        templates: torch.Tensor,
        template_power: torch.Tensor,
    ) -> torch.Tensor:
        """Scores (B, T) at zero shift. templates (T, H*W) real space, template_power (T, H*(W//2+1))."""
        images = torch.fft.irfft2(filtered, s=(self.box, self.box)).flatten(1)
        numerator = images @ templates.T
        norm = (ctf_power.flatten(1) @ template_power.T).clamp_min(1e-30) / self.box**2  # Parseval
        return numerator / norm.sqrt()

    def shifted_scores(
        self, filtered: torch.Tensor, ctf_power: torch.Tensor, spectra: torch.Tensor, max_shift: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best score over shifts and the shift (x, y) in A for templates of each image, given as their half
        spectra (B, K, H, W//2+1) (``rfft2``, or ``render.band_limited_spectra`` below the low-pass).

        The cross-correlation map corr[s] = sum_x T(x - s) (M C y)(x) peaks where the template moved by
        +s matches; |s| <= max_shift, refined to sub-pixel by a parabola through the peak on each axis.
        """
        norm = (ctf_power[:, None] * spectra.abs().square()).sum(dim=(-2, -1)).clamp_min(1e-30) / self.box**2
        corr = torch.fft.irfft2(spectra.conj() * filtered[:, None], s=(self.box, self.box))
        offsets = torch.fft.fftfreq(self.box, d=1.0 / self.box)  # 0, 1, ..., -1 pixels
        allowed = (offsets[:, None] ** 2 + offsets[None, :] ** 2) * self.pixel_size**2 <= max_shift**2 + 1e-9
        flat = corr.masked_fill(~allowed, -torch.inf).flatten(-2)
        best, where = flat.max(dim=-1)
        iy, ix = where // self.box, where % self.box

        def parabola(minus: torch.Tensor, zero: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
            curvature = minus - 2.0 * zero + plus
            step = 0.5 * (minus - plus) / torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
            return torch.where(curvature < 0, step.clamp(-0.5, 0.5), torch.zeros_like(step))

        def at(dy: int, dx: int) -> torch.Tensor:
            """corr at the peak + (dy, dx) pixels, -inf outside the allowed shifts."""
            index = ((iy + dy) % self.box) * self.box + (ix + dx) % self.box
            return flat.gather(-1, index[..., None])[..., 0]

        # no sub-pixel step towards a neighbour outside the allowed disc (-inf there gives curvature -inf)
        sub_x = torch.nan_to_num(parabola(at(0, -1), best, at(0, 1)), nan=0.0)
        sub_y = torch.nan_to_num(parabola(at(-1, 0), best, at(1, 0)), nan=0.0)
        shift = torch.stack([offsets[ix] + sub_x, offsets[iy] + sub_y], dim=-1) * self.pixel_size
        return best / norm.sqrt(), shift


def grid_templates(
    reference: torch.Tensor,
    grid: torch.Tensor,
    box: int,
    pixel_size: float,
    sigma: float,
    masses: torch.Tensor | None,
    search_box: int,
) -> torch.Tensor:
    """Projections of reference (A, 3) A at every rotation of grid (T, 3, 3), rendered on the model's grid
    (box px of pixel_size A) and Fourier-cropped to search_box px: (T, search_box, search_box). Rendered
    first at full size because point-sampled Gaussians narrower than the coarse pixels would alias."""
    return torch.cat(
        [
            fourier_crop(
                render_projections(
                    reference, grid[i : i + 1024], torch.zeros(2), box, pixel_size, sigma, masses
                ),
                search_box,
            )
            for i in range(0, len(grid), 1024)
        ]
    )


def search_poses(
    dataset: ParticleDataset,
    references: torch.Tensor,
    config: PoseSearchConfig = PoseSearchConfig(),
    progress: bool | None = None,
    indices: np.ndarray | None = None,
    masses: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> PoseSearchResult:
    """Poses of every particle of ``dataset`` (normalised images of dataset.box px, dataset.pixel_size A)
    against ``references`` (M, A, 3) or (A, 3) A: the atoms to render of the base (and of its deformed
    copies, ``structure.normal_modes.displaced_references``), centred on the rotation centre. Each image
    takes the pose of its best-matching (reference, rotation, shift). progress: None shows a bar only on a
    terminal. indices: only these particles of the dataset (results in their order); default all.
    masses (A,): each rendered atom's weight (pseudo-atoms, ``render_atoms_of``); default 1.
    allowed (N, M) bool, rows in the order of ``indices``: the references each particle may match (e.g.
    the learnt states nearest its own posterior); default all."""
    box, pixel_size = int(dataset.box), float(dataset.pixel_size)
    search_box = min(config.search_box, box)
    coords = torch.as_tensor(references, dtype=torch.float32)
    if coords.dim() == 2:
        coords = coords[None]
    if masses is not None:
        masses = torch.as_tensor(masses, dtype=torch.float32)
    fine = _Scorer(box, pixel_size, config.resolution)
    coarse = _Scorer(search_box, pixel_size * box / search_box, config.resolution)

    grid = super_fibonacci_rotations(config.n_rotations, torch.float32)
    spacing = grid_spacing_deg(grid)
    # Order: reference-major, template t = (t // n_rotations, t % n_rotations).
    templates = torch.cat(
        [
            grid_templates(reference, grid, box, pixel_size, config.sigma, masses, search_box)
            for reference in coords
        ]
    )
    template_power = torch.fft.rfft2(templates).abs().square().flatten(1)
    templates = templates.flatten(1)

    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if allowed is not None:
        allowed = torch.as_tensor(allowed, dtype=torch.bool)
        if allowed.shape != (n, len(coords)) or not bool(allowed.any(dim=1).all()):
            raise ValueError(f"allowed must be ({n}, {len(coords)}) with a reference for every particle")
    rotation = torch.empty(n, 3, 3)
    shift = torch.empty(n, 2)
    score = torch.empty(n)
    global_score = torch.empty(n)
    reference = torch.empty(n, dtype=torch.long)
    bar = tqdm(total=n, unit="img", desc="pose search", disable=None if progress is None else not progress)
    for start in range(0, n, config.batch_size):
        batch = dataset.__getitems__(indices[start : start + config.batch_size].tolist())
        images, ctf = batch["image"].float(), batch["ctf"]
        # 1. global grid, coarse box, no shift
        filtered, ctf_power = coarse.filtered_images(fourier_crop(images, search_box), ctf)
        scores = coarse.global_scores(filtered, ctf_power, templates, template_power)
        if allowed is not None:  # (B, M) -> (B, M * n_rotations), reference-major like the templates
            rows = allowed[start : start + len(images)].repeat_interleave(len(grid), dim=1)
            scores = scores.masked_fill(~rows, -torch.inf)
        top = scores.topk(config.top_k, dim=1)
        candidates = grid[top.indices % len(grid)]  # (B, K, 3, 3)
        candidate_coords = coords[top.indices // len(grid)]  # (B, K, A, 3)
        # 2. candidates with shifts on the model's grid
        filtered, ctf_power = fine.filtered_images(images, ctf)
        best_rotation, best_shift, best_score, best = _best_of(
            fine, filtered, ctf_power, candidate_coords, candidates, config, masses
        )
        best_coords = candidate_coords[torch.arange(len(best)), best][:, None]  # (B, 1, A, 3)
        # 3. local hill climbing (each image keeps its best reference)
        step = spacing / 2.0
        for round_index in range(config.local_rounds):
            trial = small_rotations(step) @ best_rotation[:, None]  # turn in the image frame
            best_rotation, best_shift, best_score, _ = _best_of(
                fine, filtered, ctf_power, best_coords, trial, config, masses
            )
            if round_index % 2 == 1:
                step /= 2.0
        # products of float32 turns drift off SO(3) by ~1e-7: project back
        rotation[start : start + len(images)] = roma.special_procrustes(best_rotation.double()).float()
        shift[start : start + len(images)] = best_shift
        score[start : start + len(images)] = best_score
        global_score[start : start + len(images)] = top.values[:, 0]
        reference[start : start + len(images)] = top.indices[torch.arange(len(best)), best] // len(grid)
        bar.update(len(images))
    bar.close()
    return PoseSearchResult(
        rotation=rotation,
        shift=shift,
        score=score,
        global_score=global_score,
        reference=reference,
        grid_spacing=spacing,
    )


def _best_of(
    scorer: _Scorer,
    filtered: torch.Tensor,
    ctf_power: torch.Tensor,
    coords: torch.Tensor,
    candidates: torch.Tensor,
    config: PoseSearchConfig,
    masses: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best of candidates (B, K, 3, 3) of coords (B, K or 1, A, 3) per image, each at its best shift:
    rotation (B, 3, 3), shift (B, 2) A, score (B,) and the candidate's index (B,)."""
    # the templates' spectra straight below the low-pass: the scores see no other frequency
    spectra = band_limited_spectra(
        coords.expand(*candidates.shape[:2], -1, -1),
        candidates,
        scorer.box,
        scorer.pixel_size,
        config.sigma,
        config.resolution,
        masses,
    )
    scores, shifts = scorer.shifted_scores(filtered, ctf_power, spectra, config.max_shift)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(best))
    return candidates[rows, best], shifts[rows, best], scores[rows, best], best


def refine_poses(
    dataset: ParticleDataset,
    structures: torch.Tensor,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    config: PoseSearchConfig = PoseSearchConfig(),
    *,
    start_step_deg: float = 4.0,
    indices: np.ndarray | None = None,
    masses: torch.Tensor | None = None,
    progress: bool | None = None,
) -> PoseSearchResult:
    """Local refinement of poses against each particle's own structure: hill climbing from (rotation (N,
    3, 3), shift (N, 2) A) over small turns (``neighbour_rotations``), the shift re-searched at every trial,
    ``config.local_rounds`` rounds from ``start_step_deg`` (halving every 2 rounds); a turn is kept only
    when it scores better than the current pose (the identity is always a trial). rotation may hold S
    starting poses per particle, (N, S, 3, 3): the climb starts from the best-scoring of them (e.g. a new
    search's pose and the previous round's, so a round never loses a pose its predecessor had right).

    structures: (N, A, 3) A, particle i's own conformation (e.g. decoded at its posterior mean) centred on
    the rotation centre; masses (A,) the atoms' weights (default 1). indices: the dataset rows of the N
    particles (default all). Returns a PoseSearchResult whose
    global_score is the score of the starting pose and reference is all zeros."""
    box, pixel_size = int(dataset.box), float(dataset.pixel_size)
    fine = _Scorer(box, pixel_size, config.resolution)
    structures = torch.as_tensor(structures, dtype=torch.float32)
    if masses is not None:
        masses = torch.as_tensor(masses, dtype=torch.float32)
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    n = len(indices)
    starts = rotation if rotation.dim() == 4 else rotation[:, None]  # (N, S, 3, 3)
    if (
        structures.shape[0] != n
        or starts.shape[0] != n
        or starts.shape[-2:] != (3, 3)
        or shift.shape != (n, 2)
    ):
        raise ValueError(f"need structures (N, A, 3), rotation (N, [S,] 3, 3), shift (N, 2) for N = {n}")
    out_rotation, out_shift = torch.empty(n, 3, 3), torch.empty(n, 2)
    out_score, start_score = torch.empty(n), torch.empty(n)
    bar = tqdm(total=n, unit="img", desc="pose refine", disable=None if progress is None else not progress)
    for start in range(0, n, config.batch_size):
        rows = slice(start, start + config.batch_size)
        batch = dataset.__getitems__(indices[rows].tolist())
        images, ctf = batch["image"].float(), batch["ctf"]
        filtered, ctf_power = fine.filtered_images(images, ctf)
        own = structures[rows][:, None]  # (B, 1, A, 3)
        best_rotation, best_shift, best_score, _ = _best_of(
            fine, filtered, ctf_power, own, starts[rows].float(), config, masses
        )
        start_score[rows] = best_score
        step = start_step_deg
        for round_index in range(config.local_rounds):
            trial = neighbour_rotations(step) @ best_rotation[:, None]
            best_rotation, best_shift, best_score, _ = _best_of(
                fine, filtered, ctf_power, own, trial, config, masses
            )
            if round_index % 2 == 1:
                step /= 2.0
        out_rotation[rows] = roma.special_procrustes(best_rotation.double()).float()
        out_shift[rows] = best_shift
        out_score[rows] = best_score
        bar.update(len(images))
    bar.close()
    return PoseSearchResult(
        rotation=out_rotation,
        shift=out_shift,
        score=out_score,
        global_score=start_score,
        reference=torch.zeros(n, dtype=torch.long),
        grid_spacing=float("nan"),
    )


def pose_errors_deg(estimated: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Angle (deg) between estimated and true rotations (N, 3, 3): a diagnostic for simulated data."""
    return rotation_angle_deg(estimated.double(), truth.double()).numpy()


# ------------------------------------------------------------------------------------ files in and out


def base_references(
    structure, config: PoseSearchConfig, n_modes: int = 0, amplitudes: tuple[float, ...] = ()
) -> torch.Tensor:
    """The base structure's ``config.atoms`` centred on its centre of atoms (the rotation centre a run
    uses by default), and its ANM-deformed copies when n_modes > 0: (M, A_sel, 3) float32 A."""
    from atomvae.structure.normal_modes import displaced_references

    coords = np.asarray(structure.coords, dtype=np.float64)
    coords = coords - coords.mean(axis=0)
    selected = structure.topology.select(config.atoms)
    ca = structure.topology.select("CA")
    references = displaced_references(
        coords[selected], structure.topology.residue_index[selected], coords[ca], n_modes, amplitudes
    )
    return torch.as_tensor(references, dtype=torch.float32)


def run_references(
    run_dir: Path,
    particles_path: Path,
    n_references: int,
    config: PoseSearchConfig,
    max_particles: int = 4000,
) -> torch.Tensor:
    """References learnt by a trained run: the base and ``n_references`` of the structures the run decodes
    at its particles' posterior means, chosen by farthest-point sampling from the base (C-alpha RMSD), in
    the frame of ``base_references`` (centred on the base's centre of atoms): (1 + n_references, A_sel, 3) A.

    Farthest points, not cluster centres: the states far from the base are the ones whose particles the
    base cannot pose (a cluster centre averages them back towards the base). This is the refinement loop
    of heterogeneous cryo-EM refinement: search poses against the base, learn structures from them, search
    again against what was learnt.
    """
    from atomvae.train.inference import encode_particles
    from atomvae.train.run import load_run

    run = load_run(run_dir)
    mu = encode_particles(run, particles_path)["mu"]
    if len(mu) > max_particles:  # an evenly spread subset keeps the decoding cheap
        mu = mu[np.linspace(0, len(mu) - 1, max_particles).round().astype(np.int64)]
    ca = run.topology.select("CA")
    base = np.asarray(run.base_coords, dtype=np.float64)
    with torch.no_grad():
        chunks = torch.as_tensor(mu, dtype=torch.float32).split(512)
        decoded_ca = [run.model.to_base_frame(run.model.decode(c))[:, ca] for c in chunks]
    decoded = torch.cat(decoded_ca).double().numpy()
    chosen: list[int] = []
    nearest = np.sqrt(((decoded - base[ca]) ** 2).sum(-1).mean(-1))  # RMSD to the closest chosen structure
    for _ in range(min(n_references, len(decoded))):
        chosen.append(int(nearest.argmax()))
        rmsd = np.sqrt(((decoded - decoded[chosen[-1]]) ** 2).sum(-1).mean(-1))
        nearest = np.minimum(nearest, rmsd)
    with torch.no_grad():
        picked = run.model.to_base_frame(run.model.decode(torch.as_tensor(mu[chosen], dtype=torch.float32)))
    selected = run.topology.select(config.atoms)
    structures = np.concatenate([base[None], picked.double().numpy()])[:, selected]
    return torch.as_tensor(structures - base.mean(axis=0), dtype=torch.float32)


def write_poses_star(
    metadata, rows: np.ndarray, rotation: torch.Tensor, shift: torch.Tensor, out_path: Path
) -> None:
    """A RELION 3.1 STAR file of ``metadata``'s particles with the poses of ``rows`` replaced (rows left out,
    e.g. images with NaN pixels, keep the identity pose). Image paths are written relative to out_path's
    folder. Atomic."""
    import starfile

    from atomvae.data.metadata import star_tables
    from atomvae.errors import atomic_path

    n = len(metadata)
    all_rotation = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    all_shift = torch.zeros(n, 2, dtype=torch.float64)
    all_rotation[torch.as_tensor(rows)] = rotation.double()
    all_shift[torch.as_tensor(rows)] = shift.double()
    folder = out_path.resolve().parent
    stacks = [os.path.relpath(Path(p).resolve(), folder) for p in metadata.image_paths]
    names = [f"{i + 1}@{stacks[f]}" for f, i in zip(metadata.file_index, metadata.image_index, strict=True)]
    tables = star_tables(replace(metadata, rotation=all_rotation, shift=all_shift), names)
    with atomic_path(out_path) as tmp:
        starfile.write(tables, tmp, float_format="%.12g")


def write_search_result(metadata, rows: np.ndarray, result: PoseSearchResult, out_path: Path) -> None:
    """The STAR file of ``write_poses_star`` with the result's poses of ``rows``, and beside it (.npz) every
    field of the result with the row of each particle. Atomic."""
    from atomvae.errors import atomic_path

    write_poses_star(metadata, rows, result.rotation, result.shift, out_path)
    with atomic_path(out_path.with_suffix(".npz")) as tmp:
        np.savez(
            tmp,
            rotation=result.rotation.numpy(),
            shift=result.shift.numpy(),
            score=result.score.numpy(),
            global_score=result.global_score.numpy(),
            reference=result.reference.numpy(),
            index=np.asarray(rows),
        )


def search_poses_to_file(
    particles_path: Path,
    base_path: Path,
    out_path: Path,
    *,
    config: PoseSearchConfig = PoseSearchConfig(),
    image_size: int = 64,
    references_from: Path | None = None,
    n_references: int = 4,
    n_modes: int = 0,
    amplitudes: tuple[float, ...] = (),
    overwrite: bool = False,
    progress: bool | None = None,
) -> PoseSearchResult | None:
    """``atomvae search-poses``: poses of the particles in ``particles_path`` (downsampled to image_size px)
    against the base structure (and a run's learnt states or ANM-deformed copies), written as a STAR file
    (out_path) plus out_path.with_suffix('.npz') (rotation, shift, score, global_score, reference, index).

    Under torchrun the particles are split over the processes (rank, rank + W, ...; each needs the particles,
    the base and any --references-from run); rank 0 builds the references, writes the files and returns the
    result, the other ranks return None."""
    from atomvae.data.dataset import ParticleDataset
    from atomvae.data.metadata import read_particles
    from atomvae.errors import InputError
    from atomvae.structure.io import read_structure
    from atomvae.train import distributed

    out_path = Path(out_path)
    if out_path.suffix != ".star":
        raise InputError(out_path, "output must end in .star")
    with distributed.process_group(torch.device("cpu")):
        metadata = read_particles(particles_path)
        if metadata.box < image_size:
            raise InputError(
                particles_path, f"particles are {metadata.box} px; the search needs at least {image_size}"
            )

        def build_references() -> torch.Tensor:
            if out_path.exists() and not overwrite:
                raise InputError(out_path, "output file already exists; pass --overwrite to replace it")
            if references_from is not None:
                return run_references(Path(references_from), Path(particles_path), n_references, config)
            return base_references(read_structure(base_path), config, n_modes, amplitudes)

        references = distributed.from_main(build_references)  # rank 0's, so every rank searches the same ones
        dataset = ParticleDataset(metadata, downsample_to=image_size)
        positions = distributed.shard_positions(len(dataset))
        local = search_poses(
            dataset,
            references,
            config,
            indices=positions,
            progress=progress if distributed.is_main() else False,
        )
        fields = ("rotation", "shift", "score", "global_score", "reference")
        gathered = distributed.gather_rows(
            {k: getattr(local, k).numpy() for k in fields}, positions, len(dataset)
        )
    if gathered is None:
        return None
    result = PoseSearchResult(
        **{k: torch.from_numpy(v) for k, v in gathered.items()}, grid_spacing=local.grid_spacing
    )
    write_search_result(metadata, dataset.rows, result, out_path)
    return result
