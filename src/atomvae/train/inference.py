"""Using a trained run: sample structures from the prior, interpolate in latent space, encode particles.

Each function takes a run folder (see ``atomvae.train.run``) and needs nothing else. Structures are
written in the base structure's own coordinate frame (``AtomVAE.to_base_frame``) so they overlay it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from atomvae.errors import InputError, atomic_path, check_output_file, check_positive_int
from atomvae.train import distributed
from atomvae.train.run import LoadedRun, layout_files, load_run, read_split

STRUCTURE_SUFFIXES = (".pdb", ".cif", ".dcd")


def _check_structure_output(path: Path, run_dir: str | Path | None = None, overwrite: bool = True) -> None:
    """Before any work: the suffix, and (with ``run_dir``) that neither the file nor a .dcd's
    ``<stem>_topology.pdb`` replaces a file of the run folder, nor, without ``overwrite``, any file."""
    if path.suffix.lower() not in STRUCTURE_SUFFIXES:
        raise InputError(path, f"output must end in {', '.join(STRUCTURE_SUFFIXES)} (got '{path.suffix}')")
    if run_dir is not None:
        companions = [path.with_name(f"{path.stem}_topology.pdb")] if path.suffix.lower() == ".dcd" else []
        check_output_file(path, overwrite, inputs=layout_files(run_dir), companions=companions)


def _write_structures(run: LoadedRun, coords: torch.Tensor, out_path: Path) -> None:
    """coords (M, A, 3) model frame -> multi-model file in the base frame."""
    from atomvae.structure.io import write_ensemble

    base_frame = run.model.to_base_frame(coords).detach().cpu().double().numpy()
    write_ensemble(out_path, run.topology, base_frame)


@torch.no_grad()
def sample_structures(
    run: LoadedRun,
    n: int,
    seed: int = 0,
    chunk: int = 256,
    posterior: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.Tensor:
    """n all-atom structures (n, A, 3) A (model frame), decoded in chunks of ``chunk``.

    Latents come from the prior z ~ N(0, I) (the paper), or with ``posterior = (mu (N, D), sigma (N, D))``
    (``encode``'s per-particle posteriors) from the particles' aggregate posterior: each structure decodes
    z ~ q(z | y_i) of a particle i drawn uniformly. The aggregate posterior is the ensemble of the
    particles themselves, where the prior is only what the KL pulled it towards (BENCHMARKS.md: it is
    the closer of the two to the true ensemble).
    """
    if n < 1:
        raise InputError("-n", f"need at least one structure, got {n}")
    generator = torch.Generator(device=run.device).manual_seed(seed)
    if posterior is None:
        parts = [run.model.sample(min(chunk, n - start), generator=generator) for start in range(0, n, chunk)]
        return torch.cat(parts)
    mu, sigma = (torch.as_tensor(np.asarray(t), dtype=torch.float32, device=run.device) for t in posterior)
    particle = torch.randint(len(mu), (n,), generator=generator, device=run.device)
    z = mu[particle] + sigma[particle] * torch.randn(n, mu.shape[1], generator=generator, device=run.device)
    return torch.cat([run.model.decode(z[start : start + chunk], "all") for start in range(0, n, chunk)])


def read_posteriors(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``mu``, ``sigma`` (N, dim) of an ``atomvae encode`` file (InputError naming it otherwise)."""
    mu, sigma = _read_latents(path, dim, ("mu", "sigma"))
    finite = np.isfinite(sigma).all() and np.isfinite(mu).all()
    if sigma.shape != mu.shape or not finite or (sigma < 0).any():
        raise InputError(path, f"'sigma' must be finite, >= 0 and shaped like 'mu' {mu.shape}")
    return mu, sigma


def sample_to_file(
    run_dir: str | Path,
    n: int,
    out_path: str | Path,
    seed: int = 0,
    device: str = "cpu",
    latents: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """``atomvae sample``: n structures from the prior, or from the particles' aggregate posterior when
    ``latents`` (an ``encode`` output) is given, written to .pdb / .cif / .dcd (by suffix); an existing
    file is replaced only with ``overwrite`` (a file of the run folder never)."""
    out_path = Path(out_path)
    check_positive_int("-n", n)
    _check_structure_output(out_path, run_dir, overwrite)
    run = load_run(run_dir, device=device)
    posterior = None if latents is None else read_posteriors(Path(latents), run.model.config.latent_conf)
    if posterior is None and run.config.loss.search_candidates > 0:
        # Measured on the demo data (BENCHMARKS.md, "Conformation search"): prior samples of a run trained
        # with the search recovered 0.55 of the gap, its particles' aggregate posterior 0.76.
        warnings.warn(
            f"{run_dir}: this run placed its particles' latents by conformation search, so the ensemble is "
            "their aggregate posterior, not N(0, I): sample with --latents LATENTS.npz (atomvae encode)",
            UserWarning,
            stacklevel=2,
        )
    _write_structures(run, sample_structures(run, n, seed, posterior=posterior), out_path)
    return out_path


def latent_line(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` evenly spaced points (steps, D) from ``start`` (D,) to ``end`` (D,), both included."""
    if steps < 2:
        raise InputError("--steps", f"need at least 2 steps, got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=start.dtype, device=start.device)[:, None]
    return (1.0 - t) * start + t * end


def principal_axis_endpoints(
    mu: np.ndarray, percentile: float = 1.0, component: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two points on the first (or the ``component``-th, 0-based) principal axis of posterior means ``mu``
    (N, D): the mean plus the axis times the ``percentile`` and ``100 - percentile`` percentiles of the
    projections (percentile 0 = the extremes; the default 1 keeps single outlier particles from setting
    the ends). The axis points along its largest component, so the first point is the low end of that
    component."""
    if not 0.0 <= percentile < 50.0:
        raise InputError("--percentile", f"must be in [0, 50), got {percentile}")
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or len(mu) < 2:
        raise InputError("latents", f"need posterior means of shape (N >= 2, D), got {mu.shape}")
    mean = mu.mean(axis=0)
    _, _, vt = np.linalg.svd(mu - mean, full_matrices=False)
    if not 0 <= component < len(vt):
        raise InputError("latents", f"no principal axis {component + 1} for {mu.shape} posterior means")
    axis = vt[component] * np.sign(vt[component][np.argmax(np.abs(vt[component]))])  # SVD's sign is arbitrary
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
            raise InputError(
                option, f"expected {dim} comma-separated numbers or a .npy file, got {text!r}"
            ) from None
        where = option
    if values.shape != (dim,):
        raise InputError(where, f"a latent point has {dim} values, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise InputError(where, "latent point has non-finite values")
    return values


def interpolate_to_file(
    run_dir: str | Path,
    out_path: str | Path,
    steps: int = 10,
    start: str | None = None,
    end: str | None = None,
    latents: str | Path | None = None,
    n_particles: int = 2048,
    percentile: float = 1.0,
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``atomvae interpolate``: structures along a latent line written as a multi-model file.

    The line runs from ``start`` to ``end`` (comma lists or .npy) when both are given; otherwise between
    the ends of the first principal axis of posterior means, read from ``latents`` (an ``encode`` output)
    or computed on up to ``n_particles`` of the run's own held-out and training particles. Returns the
    two end points (D,). An existing output is replaced only with ``overwrite``.
    """
    out_path = Path(out_path)
    if steps < 2:
        raise InputError("--steps", f"need at least 2 steps, got {steps}")
    check_positive_int("--n-particles", n_particles)
    if not 0.0 <= percentile < 50.0:
        raise InputError("--percentile", f"must be in [0, 50), got {percentile}")
    if latents is not None and not Path(latents).is_file():
        raise InputError(latents, "latents file not found")
    _check_structure_output(out_path, run_dir, overwrite)
    run = load_run(run_dir, device=device)
    dim = run.config.model.latent_conf
    if (start is None) != (end is None):
        raise InputError("--from/--to", "give both ends of the line, or neither (automatic)")
    if start is not None and end is not None:
        z_start, z_end = parse_latent_point(start, dim, "--from"), parse_latent_point(end, dim, "--to")
    else:
        if latents is not None:
            mu = _read_latent_means(Path(latents), dim)
        else:
            mu = _posterior_means_of_run_particles(run, n_particles)
        z_start, z_end = principal_axis_endpoints(mu, percentile)
    line = latent_line(
        torch.as_tensor(z_start, dtype=torch.float32, device=run.device),
        torch.as_tensor(z_end, dtype=torch.float32, device=run.device),
        steps,
    )
    with torch.no_grad():
        coords = run.model.decode(line, "all")
    _write_structures(run, coords, out_path)
    return z_start, z_end


def _read_latents(path: Path, dim: int, names: tuple[str, ...] = ("mu",)) -> list[np.ndarray]:
    """The arrays ``names`` of an ``atomvae encode`` file, each (N, dim) (InputError naming the file)."""
    if not path.is_file():
        raise InputError(path, "latents file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[name] for name in names]
    except KeyError as err:
        raise InputError(path, f"no {err} array (expected the output of atomvae encode)") from None
    except (ValueError, OSError) as err:
        raise InputError(path, f"cannot read latents: {err}") from None
    for name, array in zip(names, arrays, strict=True):
        if array.ndim != 2 or array.shape[1] != dim:
            raise InputError(path, f"'{name}' must be (N, {dim}), got {array.shape}")
    return arrays


def _read_latent_means(path: Path, dim: int) -> np.ndarray:
    return _read_latents(path, dim)[0]


def _posterior_means_of_run_particles(run: LoadedRun, n_particles: int) -> np.ndarray:
    particles = run.info.get("particles")
    if not particles or not Path(particles).is_file():
        raise InputError(
            run.run_dir,
            f"the run's particle file ({particles}) is not available; "
            "pass --latents from atomvae encode, or --from/--to",
        )
    train_idx, val_idx = read_split(run.run_dir)
    # A spread-out subset of all particles (fixed, so repeated calls agree).
    indices = np.sort(np.concatenate([train_idx, val_idx]))
    if len(indices) > n_particles:
        indices = indices[np.linspace(0, len(indices) - 1, n_particles).round().astype(np.int64)]
    return encode_particles(run, particles, indices=indices)["mu"]


@torch.no_grad()
@overload
def encode_particles(
    run: LoadedRun,
    particles_path: str | Path,
    indices: np.ndarray | None = None,
    batch_size: int = 256,
    split_over_ranks: Literal[False] = False,
) -> dict[str, np.ndarray]: ...
@overload
def encode_particles(
    run: LoadedRun,
    particles_path: str | Path,
    indices: np.ndarray | None = None,
    batch_size: int = 256,
    *,
    split_over_ranks: bool,
) -> dict[str, np.ndarray] | None: ...
def encode_particles(
    run: LoadedRun,
    particles_path: str | Path,
    indices: np.ndarray | None = None,
    batch_size: int = 256,
    split_over_ranks: bool = False,
) -> dict[str, np.ndarray] | None:
    """Posterior means and sigmas of the conformation latent and the pose estimate of each particle.

    Returns mu, sigma (N, D); rotation (N, 3, 3), shift (N, 2) A (the pose posterior mean at
    z_conf = mu; for a run trained with --poses given the STAR file's poses, for --poses refine the
    refined poses); euler (N, 3) RELION rot, tilt, psi in degrees; pose_mu, pose_sigma (N, 8);
    index (N,) the particle's row in the file. ``indices`` select usable particles (default: all;
    particles whose images hold NaN/Inf are skipped by the dataset).

    split_over_ranks: under torchrun (``atomvae.train.distributed``), every process encodes particles
    rank, rank + W, ... and rank 0 returns all of them in order; the other ranks return None.
    """
    from atomvae.geometry.euler import matrix_to_relion
    from atomvae.model.pose_modes import pose_mode as get_pose_mode
    from atomvae.train.particles import open_particles

    pose_mode = run.config.pose_mode
    source = open_particles(
        Path(particles_path), run.config, need_poses=get_pose_mode(pose_mode).needs_given_poses
    )
    run_pixel_size = float(run.info["pixel_size"])
    same_pixel_size = math.isclose(source.pixel_size, run_pixel_size, rel_tol=1e-3)
    if source.box != int(run.info["box"]) or not same_pixel_size:
        raise InputError(
            particles_path,
            f"images are {source.box} px at {source.pixel_size:.4g} A/px after "
            f"downsampling; the run was trained on {run.info['box']} px at "
            f"{float(run.info['pixel_size']):.4g} A/px",
        )
    if indices is None:
        indices = np.arange(source.n_particles)
    n_total = len(indices)
    positions = distributed.shard_positions(n_total) if split_over_ranks else np.arange(n_total)
    indices = np.asarray(indices)[positions]
    outputs: dict[str, list[np.ndarray]] = {
        k: [] for k in ("mu", "sigma", "rotation", "shift", "pose_mu", "pose_sigma", "index")
    }
    batches = [indices[i : i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    search = run.config.loss if run.config.loss.search_candidates > 0 else None
    # Candidates of the conformation search drawn from a fixed seed: encoding is reproducible.
    generator = torch.Generator(run.device).manual_seed(0)
    for batch in source.batches(batches, run.device):
        encoded = run.model.encode(
            batch["image"],
            pose_mode,
            given_rotation=batch.get("rotation"),
            given_shift=batch.get("shift"),
            ctf=batch["ctf"],
            search=search,
            generator=generator,
        )
        values = {
            "mu": encoded["mu_conf"],
            "sigma": encoded["sigma_conf"],
            "rotation": encoded["rotation"],
            "shift": encoded["shift"],
            "pose_mu": encoded["pose_mu"],
            "pose_sigma": encoded["pose_sigma"],
        }
        for key, value in values.items():
            outputs[key].append(value.detach().float().cpu().numpy())
        outputs["index"].append(batch["index"].cpu().numpy().astype(np.int64))
    result = {k: np.concatenate(v) for k, v in outputs.items() if v}  # {} on a rank with no particles
    if result:
        rotation = torch.as_tensor(result["rotation"], dtype=torch.float64)
        result["euler"] = np.asarray(matrix_to_relion(rotation)).astype(np.float32)
    return distributed.gather_rows(result, positions, n_total) if split_over_ranks else result


def encode_to_file(
    run_dir: str | Path,
    particles_path: str | Path,
    out_path: str | Path,
    device: str = "cpu",
    batch_size: int = 256,
    overwrite: bool = False,
) -> dict[str, np.ndarray] | None:
    """``atomvae encode``: latents.npz with mu, sigma, rotation, shift, euler, pose_mu, pose_sigma, index.
    An existing output is replaced only with ``overwrite`` (an input never).

    Under torchrun the particles are split over the processes (each needs the run folder and the
    particles) and rank 0 writes the file and returns the result; the other ranks return None."""
    from atomvae.train.run import resolve_device

    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise InputError(out_path, "output must end in .npz")
    check_positive_int("--batch-size", batch_size)
    check_output_file(out_path, overwrite, inputs=[Path(particles_path), *layout_files(run_dir)])
    with distributed.process_group(resolve_device(device)) as torch_device:
        run = load_run(run_dir, device=str(torch_device))
        result = encode_particles(run, particles_path, batch_size=batch_size, split_over_ranks=True)
        if result is not None:  # rank 0, which holds every rank's rows
            arrays: dict[str, Any] = result  # (numpy's stubs type savez's **kwds like allow_pickle)
            with atomic_path(out_path) as tmp:
                np.savez(tmp, **arrays)
    return result
