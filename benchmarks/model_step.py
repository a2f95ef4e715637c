"""Images/s of one AtomVAE.loss forward+backward (+ Adam step) on the CPU.

Adenylate kinase (adk_open.pdb, 214 residues) as the base, 64x64 images with a CTF, the paper's
network widths, and the sample counts of the ``cpu`` training preset (stage 1: 8 poses per image;
stage 2: 4 conformations x 2 poses). Rendered atoms: CA (A = 214) with 2 A Gaussians by default.

    .venv/bin/python benchmarks/model_step.py                 # cpu-preset shapes
    .venv/bin/python benchmarks/model_step.py --atoms heavy --n-conf 64 --n-pose 4 --batch 8   # paper-like
"""

from __future__ import annotations

import argparse
import time

import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb

from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.vae import AtomVAE
from atomvae.physics.ctf import CTFParams
from atomvae.structure.io import read_structure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", default="CA", choices=("CA", "backbone", "heavy"))
    parser.add_argument("--sigma", type=float, default=2.0, help="render sigma, A")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n-conf", type=int, default=4)
    parser.add_argument("--n-pose", type=int, default=2)
    parser.add_argument("--stage1-poses", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    structure = read_structure(PDB_small)
    config = ModelConfig(render_atoms=args.atoms, render_sigma=args.sigma)
    torch.manual_seed(0)
    model = AtomVAE(config, structure.topology, structure.coords, box=64, pixel_size=2.0, noise_sigma=1.0)
    n_render = int(model.base_render_coords.shape[0])
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 64, 64, generator=generator)
    defocus = 8000.0 + 4000.0 * torch.rand(args.batch, generator=generator)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus + 300.0,
                    astigmatism_angle=torch.full_like(defocus, 30.0))
    weights = LossWeights()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    for stage, n_conf, n_pose in ((1, 1, args.stage1_poses), (2, args.n_conf, args.n_pose)):
        def step(stage=stage, n_conf=n_conf, n_pose=n_pose):
            out = model.loss(images, ctf, stage=stage, n_conf=n_conf, n_pose=n_pose, weights=weights,
                             generator=generator)
            optimizer.zero_grad()
            out.total.backward()
            optimizer.step()

        step()  # warm-up
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        renders = args.batch * n_conf * n_pose
        print(f"stage {stage}: A={n_render} {args.atoms}, batch {args.batch}, {n_conf}x{n_pose} samples per "
              f"image: {median * 1e3:.0f} ms/step, {args.batch / median:.1f} images/s, "
              f"{renders / median:.0f} renders/s")


if __name__ == "__main__":
    main()
