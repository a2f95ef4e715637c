"""Using a trained run: sample structures from the prior, interpolate in latent space, encode particles.

Each function takes a run folder (see ``atomvae.train.run``) and needs nothing else. Structures are
written in the base structure's own coordinate frame (``AtomVAE.to_base_frame``) so they overlay it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from atomvae.errors import InputError, atomic_path
from atomvae.train.run import LoadedRun, load_run, read_split

STRUCTURE_SUFFIXES = (".pdb", ".cif", ".dcd")


def _check_structure_output(path: Path) -> None:
    if path.suffix.lower() not in STRUCTURE_SUFFIXES:
        raise InputError(path, f"output must end in {', '.join(STRUCTURE_SUFFIXES)} (got '{path.suffix}')")


def _write_structures(run: LoadedRun, coords: torch.Tensor, out_path: Path) -> None:
    """coords (M, A, 3) model frame -> multi-model file in the base frame."""
    from atomvae.structure.io import write_ensemble

    base_frame = run.model.to_base_frame(coords).detach().cpu().double().numpy()
    write_ensemble(out_path, run.topology, base_frame)


@torch.no_grad()
def sample_structures(run: LoadedRun, n: int, seed: int = 0, chunk: int = 256) -> torch.Tensor:
    """n all-atom structures (n, A, 3) A (model frame) from z_conf ~ N(0, I), in chunks of ``chunk``."""
    if n < 1:
        raise InputError("-n", f"need at least one structure, got {n}")
    generator = torch.Generator(device=run.device).manual_seed(seed)
    parts = [run.model.sample(min(chunk, n - start), generator=generator) for start in range(0, n, chunk)]
    return torch.cat(parts)


def sample_to_file(run_dir: str | Path, n: int, out_path: str | Path, seed: int = 0,
                   device: str = "cpu") -> Path:
    """``atomvae sample``: n structures from the prior written to .pdb / .cif / .dcd (by suffix)."""
    out_path = Path(out_path)
    _check_structure_output(out_path)
    run = load_run(run_dir, device=device)
    _write_structures(run, sample_structures(run, n, seed), out_path)
    return out_path


def latent_line(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` evenly spaced points (steps, D) from ``start`` (D,) to ``end`` (D,), both included."""
    if steps < 2:
        raise InputError("--steps", f"need at least 2 steps, got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=start.dtype, device=start.device)[:, None]
    return (1.0 - t) * start + t * end


def principal_axis_endpoints(mu: np.ndarray, percentile: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Two points on the first principal axis of posterior means ``mu`` (N, D): the mean plus the axis times
    the ``percentile`` and ``100 - percentile`` percentiles of the projections (percentile 0 = the extremes;
    the default 1 keeps single outlier particles from setting the ends). The axis points along its largest
    component, so the first point is the low end of that component."""
    if not 0.0 <= percentile < 50.0:
        raise InputError("--percentile", f"must be in [0, 50), got {percentile}")
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or len(mu) < 2:
        raise InputError("latents", f"need posterior means of shape (N >= 2, D), got {mu.shape}")
    mean = mu.mean(axis=0)
    _, _, vt = np.linalg.svd(mu - mean, full_matrices=False)
    axis = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])  # SVD's sign is arbitrary: fix it
    projections = (mu - mean) @ axis
    low, high = np.percentile(projections, [percentile, 100.0 - percentile])
    return mean + low * axis, mean + high * axis


def parse_latent_point(text: str, dim: int, option: str) -> np.ndarray:
    """A latent point from a comma list ("0.1,-2,...") or a .npy file holding (D,) values."""
    path = Path(text)
    if path.suffix == ".npy":
        if not path.is_file():
            raise InputError(path, "latent point file not found")
        try:
            values = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
        except (ValueError, OSError) as err:
            raise InputError(path, f"cannot read a latent point: {err}") from None
        where = str(path)
    else:
        try:
            values = np.array([float(v) for v in text.split(",")], dtype=np.float64)
        except ValueError:
            raise InputError(option, f"expected {dim} comma-separated numbers or a .npy file, got {text!r}"
                             ) from None
        where = option
    if values.shape != (dim,):
        raise InputError(where, f"a latent point has {dim} values, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise InputError(where, "latent point has non-finite values")
    return values


def interpolate_to_file(run_dir: str | Path, out_path: str | Path, steps: int = 10,
                        start: str | None = None, end: str | None = None, latents: str | Path | None = None,
                        n_particles: int = 2048, percentile: float = 1.0, device: str = "cpu"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``atomvae interpolate``: structures along a latent line written as a multi-model file.

    The line runs from ``start`` to ``end`` (comma lists or .npy) when both are given; otherwise between
    the ends of the first principal axis of posterior means, read from ``latents`` (an ``encode`` output)
    or computed on up to ``n_particles`` of the run's own held-out and training particles. Returns the
    two end points (D,).
    """
    out_path = Path(out_path)
    _check_structure_output(out_path)
    run = load_run(run_dir, device=device)
    dim = run.config.model.latent_conf
    if (start is None) != (end is None):
        raise InputError("--from/--to", "give both ends of the line, or neither (automatic)")
    if start is not None:
        z_start, z_end = parse_latent_point(start, dim, "--from"), parse_latent_point(end, dim, "--to")
    else:
        if latents is not None:
            mu = _read_latent_means(Path(latents), dim)
        else:
            mu = _posterior_means_of_run_particles(run, n_particles)
        z_start, z_end = principal_axis_endpoints(mu, percentile)
    line = latent_line(torch.as_tensor(z_start, dtype=torch.float32, device=run.device),
                       torch.as_tensor(z_end, dtype=torch.float32, device=run.device), steps)
    with torch.no_grad():
        coords = run.model.decode(line, "all")
    _write_structures(run, coords, out_path)
    return z_start, z_end


def _read_latent_means(path: Path, dim: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "latents file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            mu = data["mu"]
    except KeyError:
        raise InputError(path, "no 'mu' array (expected the output of atomvae encode)") from None
    except (ValueError, OSError) as err:
        raise InputError(path, f"cannot read latents: {err}") from None
    if mu.ndim != 2 or mu.shape[1] != dim:
        raise InputError(path, f"'mu' must be (N, {dim}), got {mu.shape}")
    return mu


def _posterior_means_of_run_particles(run: LoadedRun, n_particles: int) -> np.ndarray:
    particles = run.info.get("particles")
    if not particles or not Path(particles).is_file():
        raise InputError(run.run_dir, f"the run's particle file ({particles}) is not available; "
                                      "pass --latents from atomvae encode, or --from/--to")
    train_idx, val_idx = read_split(run.run_dir)
    # A spread-out subset of all particles (fixed, so repeated calls agree).
    indices = np.sort(np.concatenate([train_idx, val_idx]))
    if len(indices) > n_particles:
        indices = indices[np.linspace(0, len(indices) - 1, n_particles).round().astype(np.int64)]
    return encode_particles(run, particles, indices=indices)["mu"]


@torch.no_grad()
def encode_particles(run: LoadedRun, particles_path: str | Path, indices: np.ndarray | None = None,
                     batch_size: int = 256) -> dict[str, np.ndarray]:
    """Posterior means and sigmas of the conformation latent and the pose estimate of each particle.

    Returns mu, sigma (N, D); rotation (N, 3, 3), shift (N, 2) A (the pose posterior mean at
    z_conf = mu; for a run trained with --poses given the STAR file's poses, for --poses refine the
    refined poses); euler (N, 3) RELION rot, tilt, psi in degrees; pose_mu, pose_sigma (N, 8);
    index (N,) the particle's row in the file. ``indices`` select usable particles (default: all;
    particles whose images hold NaN/Inf are skipped by the dataset).
    """
    from atomvae.geometry.euler import matrix_to_relion
    from atomvae.model.pose_modes import pose_mode as get_pose_mode
    from atomvae.train.particles import open_particles

    pose_mode = run.config.pose_mode
    source = open_particles(Path(particles_path), run.config,
                            need_poses=get_pose_mode(pose_mode).needs_given_poses)
    run_pixel_size = float(run.info["pixel_size"])
    same_pixel_size = math.isclose(source.pixel_size, run_pixel_size, rel_tol=1e-3)
    if source.box != int(run.info["box"]) or not same_pixel_size:
        raise InputError(particles_path, f"images are {source.box} px at {source.pixel_size:.4g} A/px after "
                                         f"downsampling; the run was trained on {run.info['box']} px at "
                                         f"{float(run.info['pixel_size']):.4g} A/px")
    if indices is None:
        indices = np.arange(source.n_particles)
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in ("mu", "sigma", "rotation", "shift", "pose_mu",
                                                            "pose_sigma", "index")}
    batches = [indices[i:i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    for batch in source.batches(batches, run.device):
        encoded = run.model.encode(batch["image"], pose_mode, given_rotation=batch.get("rotation"),
                                   given_shift=batch.get("shift"))
        values = {"mu": encoded["mu_conf"], "sigma": encoded["sigma_conf"], "rotation": encoded["rotation"],
                  "shift": encoded["shift"], "pose_mu": encoded["pose_mu"],
                  "pose_sigma": encoded["pose_sigma"]}
        for key, value in values.items():
            outputs[key].append(value.detach().float().cpu().numpy())
        outputs["index"].append(batch["index"].cpu().numpy().astype(np.int64))
    result = {k: np.concatenate(v) for k, v in outputs.items()}
    result["euler"] = np.asarray(matrix_to_relion(torch.as_tensor(result["rotation"], dtype=torch.float64))
                                 ).astype(np.float32)
    return result


def encode_to_file(run_dir: str | Path, particles_path: str | Path, out_path: str | Path,
                   device: str = "cpu", batch_size: int = 256) -> dict[str, np.ndarray]:
    """``atomvae encode``: latents.npz with mu, sigma, rotation, shift, euler, pose_mu, pose_sigma, index."""
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise InputError(out_path, "output must end in .npz")
    run = load_run(run_dir, device=device)
    result = encode_particles(run, particles_path, batch_size=batch_size)
    with atomic_path(out_path) as tmp:
        np.savez(tmp, **result)
    return result
