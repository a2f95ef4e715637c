"""Renderer benchmark: renders/s forward and forward+backward against the machine's own matmul ceiling.

For A = 214 (C-alpha of adenylate kinase, MDAnalysisTests adk_open.pdb), 1656 (its heavy atoms) and
2300 atoms (the heavy atoms plus 644 atoms of a displaced copy), 64 x 64 px at 1.5 A, float32: batches
of ``--particles`` particles x ``--renders-per-particle`` renders (random rotations and shifts, one
CTF per particle shared by its renders, as in training), with and without the CTF. Backward is taken
with respect to coordinates, rotations and shifts.

The ceiling is the batched matmul ``(B, 64, A) @ (B, A, 64)`` timed in the same run, for B = the
benchmark batch and B = the renderer's chunk size (the better of the two is the ceiling). A render
is credited with its dense-equivalent work, ``2 * H * W * A`` FLOPs forward and 3x that forward +
backward, whatever the implementation does; fraction = achieved FLOP/s / ceiling FLOP/s. Timings
are the best of ``--repeats`` interleaved repeats (the ceiling and every case alternate, so all see
the same background load; on a shared machine the best is the least disturbed).

Run: .venv/bin/python benchmarks/render.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch

from atomvae.geometry.rotations import random_rotations
from atomvae.physics import render as render_module
from atomvae.physics.ctf import CTFParams
from atomvae.physics.render import render, render_projections
from atomvae.structure.io import read_structure
from command_line import repository_command

BOX = 64
PIXEL_SIZE = 1.5


def adk_structures() -> dict[int, np.ndarray]:
    from MDAnalysisTests.datafiles import PDB_closed

    path = PDB_closed.replace("adk_closed.pdb", "adk_open.pdb")
    structure = read_structure(path)
    heavy = structure.coords - structure.coords.mean(axis=0)
    ca = heavy[structure.topology.select("CA")]
    extra = heavy[:644] @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T + [6.0, 4.0, -5.0]
    return {len(ca): ca, len(heavy): heavy, len(heavy) + len(extra): np.concatenate([heavy, extra])}


def matmul_runner(n_atoms: int, batch: int):
    """The ceiling's kernel: (B, 64, A) @ (B, A, 64), repeated to ~256 products per call."""
    left, right = torch.rand(batch, BOX, n_atoms), torch.rand(batch, n_atoms, BOX)
    out = torch.empty(batch, BOX, BOX)
    reps = max(1, 256 // batch)

    def run():
        for _ in range(reps):
            torch.bmm(left, right, out=out)

    return run, 2 * BOX * BOX * n_atoms * batch * reps


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--renders-per-particle", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", repository_command())
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, box {BOX} px, pixel {PIXEL_SIZE} A,"
        f" float32, batch {args.particles} particles x {args.renders_per_particle} renders"
    )

    generator = torch.Generator().manual_seed(args.seed)
    n_particles, per_particle = args.particles, args.renders_per_particle
    n_renders = n_particles * per_particle
    ctf = CTFParams(
        defocus_u=10000 + 15000 * torch.rand(n_particles, generator=generator),
        defocus_v=10000 + 15000 * torch.rand(n_particles, generator=generator),
        astigmatism_angle=360 * torch.rand(n_particles, generator=generator),
        bfactor=50.0,
    )
    header = (
        f"{'A':>5} {'ceiling GF/s':>12} | {'fwd r/s':>8} {'frac':>5} {'fwd+bwd r/s':>11} {'frac':>5} |"
        f" {'CTF fwd r/s':>11} {'frac':>5} {'CTF fwd+bwd r/s':>15} {'frac':>5}"
    )
    print(header)
    for n_atoms, coords_np in adk_structures().items():
        chunk = max(1, render_module.CHUNK_ATOMS // n_atoms)
        coords = torch.as_tensor(coords_np, dtype=torch.float32).expand(n_particles, per_particle, -1, -1)
        rotation = random_rotations(n_renders, generator=generator, dtype=torch.float32)
        rotation = rotation.reshape(n_particles, per_particle, 3, 3)
        shift = 2 * torch.rand(n_particles, per_particle, 2, generator=generator) - 1
        weights = torch.rand(n_particles, per_particle, BOX, BOX, generator=generator)
        flops = 2 * BOX * BOX * n_atoms

        def forward(with_ctf: bool, coords=coords, rotation=rotation, shift=shift):
            if with_ctf:
                return render(coords, rotation, shift, ctf, BOX, PIXEL_SIZE)
            return render_projections(coords, rotation, shift, BOX, PIXEL_SIZE)

        def forward_only(with_ctf: bool):
            with torch.no_grad():
                forward(with_ctf)

        def forward_backward(with_ctf: bool, coords=coords, rotation=rotation, shift=shift, weights=weights):
            inputs = [t.detach().clone().requires_grad_(True) for t in (coords, rotation, shift)]
            images = forward(with_ctf, *inputs)
            torch.autograd.grad((images * weights).sum(), inputs)

        matmuls = {batch: matmul_runner(n_atoms, batch) for batch in sorted({n_renders, chunk})}
        cases = {
            (ctf_on, backward): functools.partial(forward_backward if backward else forward_only, ctf_on)
            for ctf_on in (False, True)
            for backward in (False, True)
        }
        for fn in [*(run for run, _ in matmuls.values()), *cases.values()]:
            fn()  # warm-up: allocations, caches, lazy initialisation
        # Interleaved repeats: the ceiling and each case see the same background load.
        best: dict = {}
        for _ in range(args.repeats):
            for batch, (run, work) in matmuls.items():
                best[batch] = max(best.get(batch, 0.0), work / timed(run) / 1e9)
            for key, fn in cases.items():
                best[key] = max(best.get(key, 0.0), n_renders / timed(fn))
        ceiling = max(best[batch] for batch in matmuls)
        row = [f"{n_atoms:>5} {ceiling:>12.1f} |"]
        for ctf_on in (False, True):
            fwd, both = best[(ctf_on, False)], best[(ctf_on, True)]
            fwd_frac, both_frac = fwd * flops / 1e9 / ceiling, both * 3 * flops / 1e9 / ceiling
            fwd_width, both_width = (11, 15) if ctf_on else (8, 11)
            row.append(
                f" {fwd:>{fwd_width}.0f} {fwd_frac:>5.0%} {both:>{both_width}.0f} {both_frac:>5.0%}"
                + ("" if ctf_on else " |")
            )
        print("".join(row), flush=True)
        print("      matmul GFLOP/s by batch: " + ", ".join(f"B={b}: {best[b]:.1f}" for b in matmuls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
