"""Where one cpu-preset training step spends its time (adk base, 64 px, batch 64, given poses, the training
loop's optimiser: fused Adam over the stage-2 parameters).

Two views, both on 1 thread unless ``--threads``:

- sections: process CPU time (min over ``--repeats`` interleaved rounds, so other processes on a shared
  machine disturb it little) of the whole step and of its parts measured alone on the same shapes: the
  encoder (forward + backward), the decoder and structure terms (the step without the likelihood's
  renders), the renderer with CTF (forward + backward), the likelihood around it, and Adam;
- ``--table``: torch.profiler over 3 steps, the 25 costliest operators by self time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py [--threads 1] [--repeats 7] [--table]
        [--side-chains rigid|shared|decoded] [--search-candidates N [--search-memory]] [--search-binning B]
        [--search-resolution A]

``--search-memory``: the step with ``--search-candidates`` also scores a remembered latent per image
(``loss.search_memory``; random latents stand in for the particle memory's rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb

from atomvae.allocator import keep_freed_memory
from atomvae.geometry.rotations import random_rotations
from atomvae.model.config import SIDE_CHAIN_MODES
from atomvae.model.vae import AtomVAE
from atomvae.physics.ctf import CTFParams
from atomvae.structure.io import read_structure
from atomvae.train.config import PRESETS
from atomvae.train.loop import make_optimizer


def build(config, batch: int):
    keep_freed_memory()  # as the CLI runs every command (atomvae.allocator)
    structure = read_structure(PDB_small)
    torch.manual_seed(0)
    model = AtomVAE(
        config.model, structure.topology, structure.coords, box=64, pixel_size=1.5, noise_sigma=1.0
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 64, 64, generator=generator)
    defocus = 10000 + 15000 * torch.rand(batch, generator=generator)
    ctf = CTFParams(
        defocus_u=defocus, defocus_v=defocus + 300, astigmatism_angle=torch.full_like(defocus, 30.0)
    )
    rotation, shift = random_rotations(batch, generator=generator), torch.zeros(batch, 2)
    return model, generator, images, ctf, rotation, shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--table", action="store_true", help="also print torch.profiler's operator table")
    parser.add_argument(
        "--side-chains", choices=SIDE_CHAIN_MODES, default="rigid", help="model.side_chains (torsions' cost)"
    )
    parser.add_argument("--search-candidates", type=int, help="also time the step with this many candidates")
    parser.add_argument("--search-binning", type=int, help="also time the step with the search binned so")
    parser.add_argument(
        "--search-resolution", type=float, help="also time the step with the search scored below this (A)"
    )
    parser.add_argument(
        "--search-memory", action="store_true", help="the --search-candidates step scores a remembered latent"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PRESETS["cpu"]
    model_config = dataclasses.replace(config.model, side_chains=args.side_chains)
    config = dataclasses.replace(config, model=model_config)
    batch = config.batch_size
    model, generator, images, ctf, rotation, shift = build(config, batch)
    optimizer = make_optimizer(model.trainable_parameters(2), 3e-4, torch.device("cpu"))
    n_conf = config.stage2.n_conf

    remembered = {"latent": torch.randn(batch, config.model.latent_conf, generator=generator)}

    def step(weights=config.loss, memory: bool = False) -> None:
        out = model.loss(
            images,
            ctf,
            stage=2,
            n_conf=n_conf,
            n_pose=config.stage2.n_pose,
            weights=weights,
            pose_mode="given",
            given_rotation=rotation,
            given_shift=shift,
            generator=generator,
            remembered=remembered if memory else None,
        )
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()

    # The parts alone, on the step's shapes.
    coords = model.base_render_coords.expand(batch, n_conf, 1, -1, -1).clone().requires_grad_(True)
    render_rotation = rotation[:, None, None].expand(batch, n_conf, 1, 3, 3)
    render_shift = shift[:, None, None].expand(batch, n_conf, 1, 2)
    target = images[:, None, None]

    def encoder() -> None:
        model.encoder(model.encoder_input(images, ctf)).square().sum().backward()

    def renderer() -> None:
        model._unit_renders(coords, render_rotation, render_shift, ctf).square().sum().backward()

    def render_and_likelihood() -> None:
        predicted = model.render_images(coords, render_rotation, render_shift, ctf, target)
        (predicted - target).square().sum().backward()

    no_structure = dataclasses.replace(
        config.loss,
        backbone=0.0,
        bond_outliers=0.0,
        peptide_geometry=0.0,
        centering=0.0,
        clash=0.0,
        orientation=0.0,
        heavy_clash=0.0,
    )
    no_heavy_clash = dataclasses.replace(config.loss, heavy_clash=0.0)
    no_search = dataclasses.replace(config.loss, search_candidates=0)
    other_search = dataclasses.replace(config.loss, search_candidates=args.search_candidates or 0)
    binned_search = dataclasses.replace(config.loss, search_binning=args.search_binning or 1)
    band_search = dataclasses.replace(config.loss, search_resolution=args.search_resolution or 0.0)

    def adam() -> None:
        optimizer.step()

    parts = {
        "step": step,
        "step without heavy-atom clash": lambda: step(no_heavy_clash),
        "step without the conformation search": lambda: step(no_search),
        **(
            {
                f"step with {args.search_candidates} search candidates"
                + (" and the memory" if args.search_memory else ""): lambda: step(
                    other_search, args.search_memory
                )
            }
            if args.search_candidates
            else {}
        ),
        **(
            {f"step with the search on {args.search_binning}x binned images": lambda: step(binned_search)}
            if args.search_binning
            else {}
        ),
        **(
            {f"step with the search below {args.search_resolution:g} A": lambda: step(band_search)}
            if args.search_resolution
            else {}
        ),
        "step without structure terms": lambda: step(no_structure),
        "encoder alone": encoder,
        "renderer with CTF alone": renderer,
        "renderer, CTF and amplitude/likelihood": render_and_likelihood,
        "Adam alone": adam,
    }
    for fn in parts.values():
        fn()
    best = {name: float("inf") for name in parts}
    for _ in range(args.repeats):
        for name, fn in parts.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    total = best["step"]
    print(
        f"cpu preset step, batch {batch}, {n_conf} renders/image, {args.threads} thread(s); "
        "min process CPU time"
    )
    for name, seconds in best.items():
        print(f"  {name:42s} {1e3 * seconds:7.1f} ms  ({100 * seconds / total:4.0f}% of the step)")
    print(
        f"  heavy-atom clash term: {1e3 * (total - best['step without heavy-atom clash']):.1f} ms; "
        f"all structure terms: {1e3 * (total - best['step without structure terms']):.1f} ms"
    )

    if args.table:
        with torch.profiler.profile() as profile:
            for _ in range(3):
                step()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
