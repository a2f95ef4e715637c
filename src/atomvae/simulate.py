"""Synthetic particle sets from a conformational ensemble, with richer physics than the model's renderer.

For each particle: a frame of the ensemble is drawn from the frame weights, a rotation uniformly on
SO(3), an in-plane shift from N(0, shift_spread^2) per axis (A), and a CTF (mean defocus uniform in
[defocus_min, defocus_max], astigmatism dU - dV uniform in [0, astigmatism], angle uniform in
[0, 180) deg). The noise-free image is ``physics.scattering.phase_contrast_images`` (Peng 1996 form
factors with an atomic B-factor, exact pixel integrals at ``oversample``, the CTF on the fine grid,
then detector binning); noise is Gaussian at a set-average SNR or Poisson shot noise at a dose
(``physics.noise``). With neither, images are noise-free. For --snr one noise sigma serves the whole
set: ``sigma^2 = mean over the first min(N, 256) particles of var(noise-free image over the box) / snr``
(these particles are rendered first and reused, so the result does not depend on ``chunk``), which
makes the SNR measured over the whole set match the request up to the sampling of those particles.

Coordinates are centred once by their mean over all frames and atoms (one translation for the whole
ensemble, stored as ``center``), so a particle's image is exactly that of ``coords[frame] - center``
under its pose; gt_ensemble.pdb holds the same centred coordinates.

Output folder (written into a temporary sibling folder and renamed into place at the end, so an
interrupted run leaves nothing half-written; an existing folder is replaced only with ``overwrite``):

- particles.mrcs: float32 ``(N, box, box)``, voxel size in the header, filled chunk by chunk through
  a memory map (a million particles never sit in memory);
- particles.star: RELION 3.1 (data_optics + data_particles with the true pose and CTF);
- truth.npz: frame (N,), rotation (N,3,3), shift (N,2) A, defocus (N,2) A (U, V), defocus_angle (N,)
  deg, weights (M,), gt_frame (gt_n,), center (3,) A, noise_sigma (radians; 0 if noise-free),
  signal_variance (mean over the first 256 noise-free images, radians^2), effective_snr
  (signal_variance / noise_sigma^2: the set-average SNR, also for --dose; inf if noise-free),
  pixel_size, snr, dose (NaN when unused), bfactor (atomic, A^2);
- gt_ensemble.pdb: ``gt_n`` models drawn independently from the same frame weights.

Frame weights (``weights``): None or ``"uniform"``; a file with one non-negative weight per frame
(``.npy``, or text read by ``numpy.loadtxt``); or a mixture spec
``"mix:0.6@0:5,0.3@97:5,0.1@uniform"``: comma-separated components ``w@centre:width`` (a Gaussian
bump over the frame index, centre and width in frames) or ``w@uniform``; each component is
normalised over the frames, then mixed in proportions w (which are normalised to sum to 1).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch
from tqdm.auto import tqdm

from atomvae.data import validate
from atomvae.data.metadata import ParticleMetadata, ctf_from_columns, star_tables
from atomvae.errors import InputError, check_writable_folder
from atomvae.geometry.rotations import random_rotations
from atomvae.physics import noise, scattering
from atomvae.physics.ctf import CTFParams
from atomvae.structure.io import read_ensemble, write_ensemble

SNR_PILOT = 256  # particles whose mean signal variance sets the --snr noise level (and effective_snr)
RENDER_BATCH = 8  # particles per projected-potential call: bounds the (batch, atoms*5, pixels) erf tables


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Every option of ``atomvae simulate``; lengths in A, angles in degrees, seeds explicit."""

    ensemble: Path
    output: Path
    n_particles: int
    box: int
    pixel_size: float
    topology: Path | None = None
    atoms: str | None = None  # None = all heavy atoms; or "CA" | "backbone" | "heavy"
    weights: str | None = None
    snr: float | None = None
    dose: float | None = None  # e/A^2
    seed: int = 0
    defocus_min: float = 10000.0
    defocus_max: float = 25000.0
    astigmatism: float = 500.0  # max |dU - dV|
    voltage: float = 300.0  # kV
    spherical_aberration: float = 2.7  # mm
    amplitude_contrast: float = 0.1
    bfactor: float = 20.0  # atomic B-factor added to the form factors, A^2
    envelope_bfactor: float = 0.0  # CTF envelope B-factor (written as rlnCtfBfactor), A^2
    shift_spread: float = 2.0  # std of the in-plane shift per axis, A
    oversample: int = 2
    gt_n: int = 1024
    chunk: int = 256
    overwrite: bool = False
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    output: Path
    n_particles: int
    noise_sigma: float
    effective_snr: float


def frame_weights(spec: str | os.PathLike | None, n_frames: int) -> np.ndarray:
    """Normalised weights ``(n_frames,)`` from a spec (see the module docstring)."""
    if spec is None or str(spec) == "uniform":
        return np.full(n_frames, 1.0 / n_frames)
    spec = str(spec)
    if spec.startswith("mix:"):
        weights = _mixture(spec, n_frames)
    else:
        path = validate.check_exists(spec, "weights file")
        try:
            weights = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
        except ValueError as err:
            raise InputError(path, f"not a list of numbers ({err})") from None
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(weights) != n_frames:
            raise InputError(path, f"has {len(weights)} weights but the ensemble has {n_frames} frames")
        if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise InputError(path, "weights must be finite, non-negative and not all zero")
    return weights / weights.sum()


def _mixture(spec: str, n_frames: int) -> np.ndarray:
    frames = np.arange(n_frames, dtype=np.float64)
    total = np.zeros(n_frames)
    proportions = 0.0
    for part in spec[len("mix:") :].split(","):
        try:
            weight_text, shape = part.strip().split("@")
            weight = float(weight_text)
            if shape == "uniform":
                component = np.ones(n_frames)
            else:
                centre_text, width_text = shape.split(":")
                centre, width = float(centre_text), float(width_text)
                if not width > 0:
                    raise ValueError("width must be positive")
                component = np.exp(-0.5 * ((frames - centre) / width) ** 2)
        except ValueError as err:
            raise InputError(
                "--weights",
                f"cannot read component {part!r} of {spec!r} (expected w@centre:width or w@uniform): {err}",
            ) from None
        if weight < 0 or component.sum() <= 0:
            raise InputError("--weights", f"component {part!r} has a negative weight or no frames near it")
        total += weight * component / component.sum()
        proportions += weight
    if proportions <= 0:
        raise InputError("--weights", f"{spec!r} has no positive weight")
    return total


def _draw_ctf(config: SimulationConfig, n: int, rng: np.random.Generator) -> CTFParams:
    mean = rng.uniform(config.defocus_min, config.defocus_max, n)
    half = 0.5 * rng.uniform(0.0, config.astigmatism, n)
    angle = rng.uniform(0.0, 180.0, n)

    return ctf_from_columns(
        n,
        {
            "defocus_u": mean + half,
            "defocus_v": mean - half,
            "astigmatism_angle": angle,
            "voltage": config.voltage,
            "spherical_aberration": config.spherical_aberration,
            "amplitude_contrast": config.amplitude_contrast,
            "bfactor": config.envelope_bfactor,
        },
    )


def _check_config(config: SimulationConfig) -> None:
    if config.n_particles < 1:
        raise InputError("-n", f"need at least one particle, got {config.n_particles}")
    if config.box < 8 or config.box % 2:
        raise InputError("--box", f"need an even box of at least 8 pixels, got {config.box}")
    if not config.pixel_size > 0:
        raise InputError("--pixel-size", f"must be positive, got {config.pixel_size}")
    if config.snr is not None and config.dose is not None:
        raise InputError("--snr", "give either --snr or --dose, not both")
    if config.snr is not None and not config.snr > 0:
        raise InputError("--snr", f"must be positive, got {config.snr}")
    if config.dose is not None and not config.dose > 0:
        raise InputError("--dose", f"must be positive (e/A^2), got {config.dose}")
    for option, value in (
        ("--oversample", config.oversample),
        ("--chunk", config.chunk),
        ("--gt-n", config.gt_n),
    ):
        if value < 1:
            raise InputError(option, f"must be a positive integer, got {value}")
    if not 0 < config.defocus_min <= config.defocus_max:
        raise InputError("--defocus-min", "need 0 < defocus-min <= defocus-max (A)")
    for option, spread in (("--astigmatism", config.astigmatism), ("--shift-spread", config.shift_spread)):
        if not spread >= 0:
            raise InputError(option, f"must not be negative, got {spread}")
    if not 0 <= config.amplitude_contrast < 1:
        raise InputError("--amplitude-contrast", f"must be in [0, 1), got {config.amplitude_contrast}")


def simulate(config: SimulationConfig) -> SimulationResult:
    """Write a synthetic particle set to ``config.output`` (see the module docstring)."""
    _check_config(config)
    output = validate.check_output_dir(config.output, config.overwrite)
    _check_output_location(config)
    topology, coords = read_ensemble(config.ensemble, config.topology, atoms=config.atoms)
    try:
        a, b = scattering.scattering_parameters(topology.element, dtype=torch.float32)
    except ValueError as err:
        raise InputError(config.ensemble, str(err)) from None
    center = coords.reshape(-1, 3).mean(axis=0)
    coords = coords - center
    n, n_frames = config.n_particles, len(coords)
    weights = frame_weights(config.weights, n_frames)

    # independent streams per quantity, so changing e.g. --gt-n leaves the particles unchanged
    streams = np.random.SeedSequence(config.seed).spawn(5)
    frame_rng, gt_rng, ctf_rng, shift_rng = (np.random.default_rng(s) for s in streams[:4])
    torch_seeds = streams[4].generate_state(2)
    frames = frame_rng.choice(n_frames, size=n, p=weights)
    gt_frames = gt_rng.choice(n_frames, size=config.gt_n, p=weights)
    ctf = _draw_ctf(config, n, ctf_rng)
    shift = torch.as_tensor(shift_rng.normal(0.0, config.shift_spread, size=(n, 2)))
    rotation = random_rotations(n, torch.Generator().manual_seed(int(torch_seeds[0])), dtype=torch.float64)
    noise_generator = torch.Generator().manual_seed(int(torch_seeds[1]))

    _check_free_space(config, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        noise_sigma, signal_variance = _write_images(
            tmp / "particles.mrcs", config, coords, a, b, frames, rotation, shift, ctf, noise_generator
        )
        effective_snr = signal_variance / noise_sigma**2 if noise_sigma > 0 else math.inf
        meta = ParticleMetadata.from_columns(
            (tmp / "particles.mrcs",),
            np.zeros(n, dtype=np.int64),
            np.arange(n),
            ctf.as_dict(),
            config.pixel_size,
            config.box,
            (rotation, shift),
        )
        names = [f"{i + 1}@particles.mrcs" for i in range(n)]
        starfile.write(star_tables(meta, names), tmp / "particles.star", float_format="%.12g")
        np.savez(
            tmp / "truth.npz",
            frame=frames,
            rotation=rotation.numpy(),
            shift=shift.numpy(),
            defocus=np.stack([ctf.defocus_u.numpy(), ctf.defocus_v.numpy()], axis=1),
            defocus_angle=ctf.astigmatism_angle.numpy(),
            weights=weights,
            gt_frame=gt_frames,
            center=center,
            noise_sigma=noise_sigma,
            signal_variance=signal_variance,
            effective_snr=effective_snr,
            pixel_size=config.pixel_size,
            snr=np.nan if config.snr is None else config.snr,
            dose=np.nan if config.dose is None else config.dose,
            bfactor=config.bfactor,
        )
        write_ensemble(tmp / "gt_ensemble.pdb", topology, coords[gt_frames])
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SimulationResult(
        output=output, n_particles=n, noise_sigma=noise_sigma, effective_snr=effective_snr
    )


def _check_output_location(config: SimulationConfig) -> None:
    """The output folder is replaced as a whole: it must not be the current folder (or one above it), nor
    hold one of the inputs; and its parent must accept new files."""
    output = config.output.resolve()
    cwd = Path.cwd().resolve()
    if output == cwd or output in cwd.parents:
        raise InputError(
            config.output,
            "is the current folder (or contains it); simulate replaces its "
            "output folder as a whole: name a new folder",
        )
    inputs = [config.ensemble, config.topology]
    if config.weights is not None and Path(config.weights).is_file():
        inputs.append(Path(config.weights))
    for source in inputs:
        if source is not None and output in Path(source).resolve().parents:
            raise InputError(
                config.output,
                f"holds the input {source}; simulate replaces its output folder "
                "as a whole: name a new folder",
            )
    check_writable_folder(output.parent, config.output)


# Bytes per particle of particles.star and truth.npz, generously (for the free-space check only).
METADATA_BYTES_PER_PARTICLE = 1024


def _check_free_space(config: SimulationConfig, output: Path) -> None:
    """Refuse before rendering when the output's file system cannot hold the stack and its metadata."""
    folder = output.resolve().parent  # the nearest existing folder: where the output will be created
    while not folder.exists():
        folder = folder.parent
    needed = config.n_particles * (4 * config.box**2 + METADATA_BYTES_PER_PARTICLE) + (1 << 20)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InputError(
            config.output,
            f"needs about {needed / 2**20:.0f} MiB but only {free / 2**20:.0f} "
            f"MiB are free on the file system of {folder}",
        )


def _reserve(path: Path, n_bytes: int, output: Path) -> None:
    """Allocate the stack's disk blocks up front: writes through a memory map into a sparse file that the
    disk cannot hold end in SIGBUS (a crash with no message); here a full disk is an OSError instead."""
    if not hasattr(os, "posix_fallocate"):  # macOS: the free-space check before rendering has to do
        return
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, n_bytes)
    except OSError as err:
        raise InputError(
            output, f"cannot reserve {n_bytes / 2**20:.0f} MiB for particles.mrcs: {err.strerror or err}"
        ) from None


def _move_into_place(tmp: Path, output: Path) -> None:
    """Rename the finished folder onto ``output``; an old folder is moved aside first, deleted last."""
    # temporary files and folders are created private (0600/0700); give them the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for child in tmp.iterdir():
        child.chmod(0o666 & ~umask)
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_images(
    path: Path,
    config: SimulationConfig,
    coords: np.ndarray,
    a: torch.Tensor,
    b: torch.Tensor,
    frames: np.ndarray,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    ctf: CTFParams,
    generator: torch.Generator,
) -> tuple[float, float]:
    """Render, add noise and stream all particles into ``path`` chunk by chunk.

    Returns the noise sigma (radians; 0 without noise) and the mean per-image signal variance of the
    first SNR_PILOT noise-free images (radians^2).
    """
    n, box = len(frames), config.box
    coords_t = torch.as_tensor(coords, dtype=torch.float32)
    noise_sigma = 0.0 if config.dose is None else noise.shot_noise_sigma(config.dose, config.pixel_size)

    def render(first: int, last: int) -> torch.Tensor:
        """Noise-free images of particles first .. last-1: (last - first, box, box) radians."""
        batches = [
            scattering.phase_contrast_images(
                coords_t[frames[i:j]],
                rotation[i:j].float(),
                shift[i:j].float(),
                a,
                b,
                ctf.index(slice(i, j)).to(dtype=torch.float32),
                box,
                config.pixel_size,
                bfactor=config.bfactor,
                oversample=config.oversample,
            )
            for i, j in _batches(first, last, RENDER_BATCH)
        ]
        return torch.cat(batches) if batches else torch.zeros(0, box, box)

    # The first SNR_PILOT particles are rendered up front (and reused below): their mean signal
    # variance sets --snr's single noise sigma, independent of the chunk size, and gives the
    # effective SNR of a --dose run.
    pilot = render(0, min(n, SNR_PILOT))
    signal_variance = float(noise.signal_variance(pilot).double().mean())
    if config.snr is not None:
        noise_sigma = noise.snr_noise_sigma(pilot, config.snr)
    # running header statistics, so no second pass over a large stack is needed
    stats = {"min": math.inf, "max": -math.inf, "sum": 0.0, "sum_sq": 0.0}
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        mrc.flush()
        _reserve(path, path.stat().st_size, config.output)
        mrc.set_image_stack()
        mrc.voxel_size = config.pixel_size
        with tqdm(total=n, unit="particle", desc="simulate", disable=not config.progress) as bar:
            for start in range(0, n, config.chunk):
                stop = min(start + config.chunk, n)
                clean = torch.cat([pilot[start:stop], render(max(start, len(pilot)), stop)])
                if config.snr is not None:
                    images = noise.add_gaussian_noise(clean, noise_sigma, generator)
                elif config.dose is not None:
                    images = noise.shot_noise(clean, config.dose, config.pixel_size, generator)
                else:
                    images = clean
                chunk = images.numpy().astype(np.float32)
                mrc.data[start:stop] = chunk
                stats["min"] = min(stats["min"], float(chunk.min()))
                stats["max"] = max(stats["max"], float(chunk.max()))
                stats["sum"] += float(chunk.sum(dtype=np.float64))
                stats["sum_sq"] += float(np.square(chunk, dtype=np.float64).sum())
                bar.update(stop - start)
        count = n * box * box
        mean = stats["sum"] / count
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = stats["min"], stats["max"], mean
        mrc.header.rms = math.sqrt(max(stats["sum_sq"] / count - mean**2, 0.0))
    return noise_sigma, signal_variance


def _batches(start: int, stop: int, size: int):
    for i in range(start, stop, size):
        yield i, min(i + size, stop)
