"""Training-step speed against the renderer's own speed and the machine's matmul ceiling (issue 12).

For each configuration, in one run on the same random 64 x 64 particles with CTFs (adenylate kinase,
adk_open.pdb, as the base): one training step (AtomVAE.loss forward + backward + Adam) in images/s and
renders/s, the renders per image, and the renderer alone on the same shapes (render with CTF, forward +
backward in the coordinates) in renders/s. The matmul ceiling is the batched ``(B, 64, A) @ (B, A, 64)``
float32 matmul at the configuration's atom count A; a render is credited with ``6 * 64 * 64 * A`` FLOPs
forward + backward (its dense-equivalent work, as in ``benchmarks/render.py``). Timings are medians of
``--steps`` steps after one warm-up.

Configurations: the cpu preset as it ships (given poses); the cpu preset rendering heavy atoms at a
learnt width; the paper preset (heavy atoms, 64 x 4 samples per image) with given and with inferred
poses, on a small batch. The last line is, for the cpu preset as it ships:
``step/render ratio: R; renderer ceiling fraction: F`` with R = step renders/s / renderer-alone
renders/s and F = the renderer's FLOP/s / the ceiling. R counts the renders the likelihood differentiates;
for a preset with the conformation search a line before it also times the search's forward-only renders
(with their CTF) alone and says which share of the step the renderer alone would take for all of them.

    .venv/bin/python benchmarks/model_step.py [--threads 2] [--steps 5] [--clock wall|cpu] [--shipped-only]

The step is the training loop's (fused Adam over ``trainable_parameters(2)``; before 2026-12-01 evening
this script stepped per-tensor Adam over every parameter).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb

from atomvae.allocator import keep_freed_memory
from atomvae.geometry.rotations import random_rotations
from atomvae.model.band_likelihood import BandLikelihood
from atomvae.model.vae import AtomVAE
from atomvae.physics.ctf import CTFParams
from atomvae.physics.render import render
from atomvae.structure.io import read_structure
from atomvae.train.config import PRESETS, TrainConfig
from atomvae.train.loop import make_optimizer
from command_line import repository_command

BOX, PIXEL_SIZE = 64, 1.5


def matmul_gflops(n_atoms: int, batch: int = 256, repeats: int = 5) -> float:
    a, b = torch.randn(batch, BOX, n_atoms), torch.randn(batch, n_atoms, BOX)
    torch.bmm(a, b)
    best = min(_timed(lambda: torch.bmm(a, b)) for _ in range(repeats))
    return 2 * batch * BOX * BOX * n_atoms / best / 1e9


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _timed(fn) -> float:
    start = _clock()
    fn()
    return _clock() - start


def measure(name: str, config: TrainConfig, pose_mode: str, batch: int, steps: int) -> dict:
    structure = read_structure(PDB_small)
    torch.manual_seed(0)
    model = AtomVAE(
        config.model, structure.topology, structure.coords, box=BOX, pixel_size=PIXEL_SIZE, noise_sigma=1.0
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, BOX, BOX, generator=generator)
    defocus = 10000.0 + 15000.0 * torch.rand(batch, generator=generator)
    ctf = CTFParams(
        defocus_u=defocus, defocus_v=defocus + 300.0, astigmatism_angle=torch.full_like(defocus, 30.0)
    )
    rotation = random_rotations(batch, generator=generator)
    shift = torch.zeros(batch, 2)
    stage = config.stage2
    # As the training loop steps: fused Adam over the stage's trainable parameters.
    optimizer = make_optimizer(model.trainable_parameters(2), 3e-4, torch.device("cpu"))
    given = pose_mode != "inferred"
    n_pose = 1 if pose_mode == "given" else stage.n_pose
    renders_per_image = stage.n_conf * n_pose

    def step() -> None:
        out = model.loss(
            images,
            ctf,
            stage=2,
            n_conf=stage.n_conf,
            n_pose=stage.n_pose,
            weights=config.loss,
            pose_mode=pose_mode,
            given_rotation=rotation if given else None,
            given_shift=shift if given else None,
            generator=generator,
        )
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()

    coords = model.base_render_coords.expand(batch, renders_per_image, -1, -1).clone().requires_grad_(True)
    render_rotation = random_rotations(batch * renders_per_image, generator=generator).reshape(
        batch, renders_per_image, 3, 3
    )
    render_shift = torch.zeros(batch, renders_per_image, 2)
    sigma = float(torch.as_tensor(model.render_sigma).detach())

    def render_alone() -> None:
        out = render(
            coords, render_rotation, render_shift, ctf, BOX, PIXEL_SIZE, sigma, weights=model.render_mass
        )
        out.backward(torch.ones_like(out))

    # The conformation search (AtomVAE.search_conformations, one round) renders the start and n_candidates
    # latents per image forward only, at the image's pose, with its CTF: in real space, or with
    # loss.search_resolution as band-limited spectra scored in Fourier space (model.band_likelihood).
    searched_per_image = 1 + config.loss.search_candidates if config.loss.search_candidates else 0
    search_coords = model.base_render_coords.expand(batch, searched_per_image, -1, -1)
    search_rotation = rotation[:, None].expand(batch, searched_per_image, 3, 3)
    search_shift = torch.zeros(batch, searched_per_image, 2)

    @torch.no_grad()
    def search_renders_alone() -> None:
        mass = model.render_mass
        if config.loss.search_resolution > 0:
            band = BandLikelihood(
                images, ctf, search_shift[:, 0], BOX, PIXEL_SIZE, config.loss.search_resolution, 1.0
            )
            band(search_coords, rotation[:, None], sigma, mass, None)
        else:
            render(search_coords, search_rotation, search_shift, ctf, BOX, PIXEL_SIZE, sigma, weights=mass)

    step()
    render_alone()
    step_s = statistics.median(_timed(step) for _ in range(steps))
    render_s = statistics.median(_timed(render_alone) for _ in range(steps))
    search_s = 0.0
    if searched_per_image:
        search_renders_alone()
        search_s = statistics.median(_timed(search_renders_alone) for _ in range(steps))
    n_atoms = int(model.base_render_coords.shape[0])
    renders = batch * renders_per_image
    ceiling = matmul_gflops(n_atoms)
    return {
        "name": name,
        "atoms": n_atoms,
        "batch": batch,
        "renders_per_image": renders_per_image,
        "images_per_s": batch / step_s,
        "step_renders_per_s": renders / step_s,
        "render_renders_per_s": renders / render_s,
        "ceiling_gflops": ceiling,
        "render_fraction": renders / render_s * 6 * BOX * BOX * n_atoms / 1e9 / ceiling,
        "searched_per_image": searched_per_image,
        # The share of the step the renderer alone would take for all of the step's renders: the
        # differentiated ones and the search's forward-only ones (the line's R counts only the former).
        "renders_share": (render_s + search_s) / step_s,
        "search_share": search_s / step_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (1 thread on a shared machine: time other processes hold the "
        "core is not counted)",
    )
    parser.add_argument(
        "--shipped-only", action="store_true", help="only the cpu preset as it ships (the last line's case)"
    )
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI runs every command (atomvae.allocator)
    torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCKS[args.clock]
    print("command:", repository_command())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
        "machine reference: "
        f"batched matmul (256,64,1024)@(256,1024,64) float32 {matmul_gflops(1024):.1f} GFLOP/s"
    )
    cpu, paper = PRESETS["cpu"], PRESETS["paper"]
    cpu_heavy = dataclasses.replace(
        cpu, model=dataclasses.replace(cpu.model, render_atoms="heavy", render_sigma=1.0)
    )
    cases = [
        ("cpu preset (given poses)", cpu, "given", cpu.batch_size),
        ("cpu preset, heavy atoms (given)", cpu_heavy, "given", cpu.batch_size),
        ("paper preset (given poses)", paper, "given", 4),
        ("paper preset (inferred poses)", paper, "inferred", 2),
    ]
    if args.shipped_only:
        cases = cases[:1]
    results = []
    for name, config, pose_mode, batch in cases:
        r = measure(name, config, pose_mode, batch, args.steps)
        results.append(r)
        print(
            f"{name}: A={r['atoms']}, batch {r['batch']}, {r['renders_per_image']} renders/image: "
            f"step {r['images_per_s']:.1f} images/s = {r['step_renders_per_s']:.0f} renders/s; "
            f"renderer alone {r['render_renders_per_s']:.0f} renders/s "
            f"({100 * r['render_fraction']:.0f}% of the "
            f"{r['ceiling_gflops']:.0f} GFLOP/s ceiling at A={r['atoms']})",
            flush=True,
        )
        if r["searched_per_image"]:
            print(
                f"  + {r['searched_per_image']} forward-only search renders/image: the renderer alone would "
                f"take {100 * r['renders_share']:.0f}% of the step for all its renders "
                f"({100 * r['search_share']:.0f}% for the search's)",
                flush=True,
            )
    shipped = results[0]
    print(
        f"step/render ratio: {shipped['step_renders_per_s'] / shipped['render_renders_per_s']:.2f}; "
        f"renderer ceiling fraction: {shipped['render_fraction']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
