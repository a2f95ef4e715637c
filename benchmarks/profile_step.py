"""Where one cpu-preset training step spends its time: torch.profiler over 3 steps (adk base, 64 px,
batch 64, given poses), the 25 costliest operators by self time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb

from atomvae.geometry.rotations import random_rotations
from atomvae.model.vae import AtomVAE
from atomvae.physics.ctf import CTFParams
from atomvae.structure.io import read_structure
from atomvae.train.config import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, structure = PRESETS["cpu"], read_structure(PDB_small)
    torch.manual_seed(0)
    model = AtomVAE(
        config.model, structure.topology, structure.coords, box=64, pixel_size=1.5, noise_sigma=1.0
    )
    generator = torch.Generator().manual_seed(0)
    batch = config.batch_size
    images = torch.randn(batch, 64, 64, generator=generator)
    defocus = 10000 + 15000 * torch.rand(batch, generator=generator)
    ctf = CTFParams(
        defocus_u=defocus, defocus_v=defocus + 300, astigmatism_angle=torch.full_like(defocus, 30.0)
    )
    rotation, shift = random_rotations(batch, generator=generator), torch.zeros(batch, 2)
    optimizer = torch.optim.Adam(model.trainable_parameters(2), lr=3e-4, fused=True)

    def step() -> None:
        out = model.loss(
            images,
            ctf,
            stage=2,
            n_conf=config.stage2.n_conf,
            n_pose=config.stage2.n_pose,
            weights=config.loss,
            pose_mode="given",
            given_rotation=rotation,
            given_shift=shift,
            generator=generator,
        )
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()

    step()
    step()
    with torch.profiler.profile() as profile:
        for _ in range(3):
            step()
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
