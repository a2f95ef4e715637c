"""Data benchmarks: simulated particles/s and loader images/s.

1. Simulator: ``atomvae.simulate.simulate`` end to end (read the trajectory, render, noise, write the
   stack, STAR, truth and a small gt ensemble) on adenylate kinase heavy atoms (MDAnalysisTests
   adk.psf + adk_dims.dcd, 1656 atoms, 98 frames), 64 px at 1.5 A, --snr 0.1; plus the rendering alone
   (``phase_contrast_images``) at oversample 1, 2 and 4.
2. Loader: random batches from a memory-mapped float32 stack through ``ParticleDataset.loader`` (the
   path training uses: one ``__getitems__`` read per batch, background normalisation), at the model's
   box (64 px) and with Fourier cropping 128 -> 64.

Run: .venv/bin/python benchmarks/data.py [--n-sim 256] [--n-stack 16384] [--batch 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import torch

from atomvae.data.dataset import ParticleDataset
from atomvae.data.metadata import ParticleMetadata
from atomvae.physics import scattering
from atomvae.physics.ctf import CTFParams
from atomvae.simulate import SimulationConfig, simulate
from atomvae.structure.io import read_ensemble
from command_line import repository_command


def bench_simulate(n: int, workdir: Path) -> None:
    from MDAnalysisTests.datafiles import DCD, PSF

    config = SimulationConfig(
        ensemble=Path(DCD),
        topology=Path(PSF),
        output=workdir / "sim",
        n_particles=n,
        box=64,
        pixel_size=1.5,
        snr=0.1,
        gt_n=64,
        progress=False,
        seed=0,
    )
    start = time.perf_counter()
    simulate(config)
    elapsed = time.perf_counter() - start
    print(
        f"simulate end-to-end: {n} particles (adk heavy atoms, 64 px, oversample 2, snr) in "
        f"{elapsed:.1f} s = {n / elapsed:.1f} particles/s"
    )

    topology, frames = read_ensemble(DCD, PSF)
    coords = torch.as_tensor(frames - frames.reshape(-1, 3).mean(0), dtype=torch.float32)
    a, b = scattering.scattering_parameters(topology.element, dtype=torch.float32)
    batch = 8
    g = torch.Generator().manual_seed(0)
    from atomvae.geometry.rotations import random_rotations

    rotation = random_rotations(batch, g)
    shift = torch.zeros(batch, 2)
    ctf = CTFParams(defocus_u=torch.full((batch,), 15000.0), defocus_v=torch.full((batch,), 14500.0))
    for oversample in (1, 2, 4):
        scattering.phase_contrast_images(
            coords[:batch], rotation, shift, a, b, ctf, 64, 1.5, 20.0, oversample
        )
        repeats = 6
        start = time.perf_counter()
        for k in range(repeats):
            scattering.phase_contrast_images(
                coords[k : k + batch], rotation, shift, a, b, ctf, 64, 1.5, 20.0, oversample
            )
        rate = repeats * batch / (time.perf_counter() - start)
        print(f"render only, oversample {oversample}: {rate:.1f} particles/s")


def _synthetic_stack(path: Path, n: int, box: int) -> ParticleMetadata:
    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        for start in range(0, n, 1024):
            stop = min(start + 1024, n)
            mrc.data[start:stop] = rng.normal(size=(stop - start, box, box)).astype(np.float32)
        mrc.voxel_size = 1.5
    ctf = CTFParams(
        defocus_u=torch.as_tensor(rng.uniform(1e4, 2.5e4, n)),
        defocus_v=torch.as_tensor(rng.uniform(1e4, 2.5e4, n)),
    )
    return ParticleMetadata(
        image_paths=(path,),
        file_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n),
        ctf=ctf,
        pixel_size=1.5,
        box=box,
    )


def bench_loader(n: int, batch: int, workdir: Path) -> None:
    for box, downsample, count in ((64, None, n), (128, 64, n // 4)):  # 128 px: same bytes on disk
        meta = _synthetic_stack(workdir / f"stack{box}.mrcs", count, box)
        start = time.perf_counter()
        dataset = ParticleDataset(meta, downsample_to=downsample)
        setup = time.perf_counter() - start
        loader = dataset.loader(batch_size=batch, shuffle=True, seed=0)
        for _epoch in range(2):  # the first epoch warms the page cache, as training's later epochs are
            start = time.perf_counter()
            seen = sum(len(b["index"]) for b in loader)
            elapsed = time.perf_counter() - start
        label = f"{box} px" + (f" -> Fourier crop {downsample}" if downsample else "")
        print(
            f"loader {label}: {seen / elapsed:,.0f} images/s (random batches of {batch}, {n} images, "
            f"epoch 2; dataset setup incl. NaN scan and normalisation estimate {setup:.2f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-sim", type=int, default=256)
    parser.add_argument("--n-stack", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"command: {repository_command()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench_simulate(args.n_sim, Path(tmp))
        bench_loader(args.n_stack, args.batch, Path(tmp))


if __name__ == "__main__":
    main()
