"""Stage 1 of ``--poses inferred`` (the amortised pose head on the fixed base) on a demo's particles, with the
hypothesis pull and the particle memory (issue 11): pose errors per state, against the simulation's truth, of
the memory's poses and of the poses ``encode`` returns (random: 126 deg median). cpu preset, pose sigma
starting at 0.05, stage 2 skipped.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inferred_stage1.py OUT DEMO HYPOTHESES EPOCHS [NEAR [LR]]

DEMO: a finished demo folder (its particles/ and base_open_docked.pdb).
"""

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adk import pose_errors_by_group
from atomvae.train.checkpoint import load_checkpoint
from atomvae.train.config import PRESETS
from atomvae.train.inference import encode_to_file
from atomvae.train.loop import train
from command_line import repository_command
from model_step import matmul_gflops


def main() -> None:
    print(repository_command())
    print(f"machine reference: batched matmul at 487 atoms: {matmul_gflops(487):.1f} GFLOP/s", flush=True)
    out, demo = Path(sys.argv[1]), Path(sys.argv[2])
    n_hyp, epochs = int(sys.argv[3]), int(sys.argv[4])
    near = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    lr = float(sys.argv[6]) if len(sys.argv) > 6 else 3e-4
    c = PRESETS["cpu"]
    c = dataclasses.replace(
        c,
        pose_mode="inferred",
        model=dataclasses.replace(c.model, pose_sigma_init=0.05),
        loss=dataclasses.replace(c.loss, hypothesis_pull=1.0, memory_near=near),
        stage1=dataclasses.replace(
            c.stage1,
            epochs=epochs,
            pose_hypotheses=n_hyp,
            learning_rate=lr,
            lr_decay_epochs=(max(1, epochs - 2),),
        ),
        stage2=dataclasses.replace(c.stage2, epochs=0),
    )
    star = demo / "particles" / "particles.star"
    base = demo / "base_open_docked.pdb"
    t0 = time.time()
    train(c, star, base, out / "run", show_progress=False)
    print(f"stage 1: {(time.time() - t0) / 60:.1f} min", flush=True)
    truth = dict(np.load(demo / "particles" / "truth.npz"))
    ck = load_checkpoint(out / "run/seed_0/checkpoints/last.pt")
    mem = ck["particle_memory"]["rotation"]
    rows = np.arange(len(truth["frame"]))

    def show(name, rot):
        e = pose_errors_by_group(torch.as_tensor(rot), rows, truth)
        print(
            name,
            " ".join(f"{g}: median {np.median(v):.1f} deg, <10 {np.mean(v < 10):.2f};" for g, v in e.items()),
            flush=True,
        )

    show("memory", mem)
    encode_to_file(out / "run", star, out / "latents.npz", overwrite=True)
    show("encode", np.load(out / "latents.npz")["rotation"])


if __name__ == "__main__":
    main()
