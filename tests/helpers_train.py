"""Tiny particle sets and configs for the training tests (tests/test_checkpoint.py, tests/test_cli_model.py).

Particles are rendered with the model's own renderer from a 10-residue adenylate-kinase fragment at random
poses (about the base's centre of atoms, the model's rotation centre), plus Gaussian noise, and written as
a RELION 3.1 .star + .mrcs pair with the data module's writer tables.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch
from MDAnalysisTests.datafiles import PDB_xsmall  # adk_open_10res.pdb

from atomvae.data.metadata import ParticleMetadata, star_tables
from atomvae.geometry.rotations import random_rotations
from atomvae.model.config import ModelConfig
from atomvae.physics.ctf import CTFParams
from atomvae.physics.render import render
from atomvae.structure.io import read_structure
from atomvae.train.config import DataConfig, StageConfig, TrainConfig

BASE_PDB = Path(PDB_xsmall)
BOX = 32
PIXEL_SIZE = 1.5  # A


def tiny_config(**changes) -> TrainConfig:
    """A model small enough that a step takes milliseconds; 2 + 2 epochs."""
    config = TrainConfig(
        model=ModelConfig(
            image_size=BOX,
            encoder_widths=(64, 32),
            decoder_width=32,
            decoder_blocks=2,
            decoded_dim=32,
            pose_width=16,
            render_atoms="CA",
            render_sigma=2.0,
        ),
        stage1=StageConfig(epochs=2, n_pose=4, lr_decay_epochs=(1,)),
        stage2=StageConfig(epochs=2, n_pose=2, n_conf=2),
        batch_size=8,
        device="cpu",
        checkpoint_every=5,
        data=DataConfig(val_fraction=0.1, n_calibration_images=16),
    )
    return replace(config, **changes)


def write_particles(
    folder: Path,
    n: int = 48,
    seed: int = 0,
    noise: float = 0.05,
    box: int = BOX,
    with_poses: bool = True,
    base: Path = BASE_PDB,
    pixel_size: float = PIXEL_SIZE,
) -> Path:
    """Write ``folder/particles.star`` + ``folder/particles.mrcs`` rendered from ``base``; returns the .star
    path. noise: standard deviation relative to the clean images'."""
    folder.mkdir(parents=True, exist_ok=True)
    structure = read_structure(base)
    coords = torch.as_tensor(structure.coords, dtype=torch.float64)
    coords = coords - coords.mean(dim=0)
    generator = torch.Generator().manual_seed(seed)
    rotation = random_rotations(n, generator=generator, dtype=torch.float64)
    shift = 2.0 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    defocus = 8000.0 + 4000.0 * torch.rand(n, generator=generator, dtype=torch.float64)
    ctf = CTFParams(
        defocus_u=defocus,
        defocus_v=defocus + 200.0,
        astigmatism_angle=torch.full((n,), 30.0),
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
        phase_shift=0.0,
        bfactor=0.0,
    )
    images = render(coords, rotation, shift, ctf.to(dtype=torch.float64), box, pixel_size, sigma=1.5)
    noise_pixels = torch.randn(images.shape, generator=generator, dtype=torch.float64)
    images = images + noise * images.std() * noise_pixels
    stack_path = folder / "particles.mrcs"
    with mrcfile.new(stack_path, overwrite=True) as mrc:
        mrc.set_data(images.float().numpy())
        mrc.voxel_size = pixel_size
    meta = ParticleMetadata(
        image_paths=(stack_path,),
        file_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n),
        ctf=ctf,
        pixel_size=pixel_size,
        box=box,
        rotation=rotation if with_poses else None,
        shift=shift if with_poses else None,
    )
    names = [f"{i + 1:06d}@{stack_path.name}" for i in range(n)]
    star_path = folder / "particles.star"
    starfile.write(star_tables(meta, names), star_path, overwrite=True)
    return star_path
