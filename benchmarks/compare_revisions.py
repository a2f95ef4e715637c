"""The cpu-preset training step of two source trees side by side in one run (a speed-up as a ratio).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_revisions.py OLD_TREE NEW_TREE [--rounds 3]
        [--steps 3] [--threads 1]

Each tree is a checkout of this repository (``git worktree add /tmp/old COMMIT``). Rounds alternate the
trees; each round runs one fresh process per tree (its own ``src`` first on the path) that times
``--steps`` steps of ``benchmarks/profile_step.py``'s problem (adk base, batch 64, given poses, the
preset's loss and the training loop's fused Adam) in process CPU time after one warm-up step. Reported:
the min over rounds of each tree's per-step median, their ratio, and the batched-matmul reference of
this process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

STEP_TIMER = r"""
import json, statistics, sys, time
import torch
sys.path.insert(0, "benchmarks")
from profile_step import build
from atomvae.train.config import PRESETS
from atomvae.train.loop import make_optimizer

torch.set_num_threads(int(sys.argv[1]))
steps = int(sys.argv[2])
config = PRESETS["cpu"]
model, generator, images, ctf, rotation, shift = build(config, config.batch_size)
optimizer = make_optimizer(model.trainable_parameters(2), 3e-4, torch.device("cpu"))

def step():
    out = model.loss(images, ctf, stage=2, n_conf=config.stage2.n_conf, n_pose=config.stage2.n_pose,
                     weights=config.loss, pose_mode="given", given_rotation=rotation, given_shift=shift,
                     generator=generator)
    optimizer.zero_grad()
    out.total.backward()
    optimizer.step()

step()
times = []
for _ in range(steps):
    start = time.process_time()
    step()
    times.append(time.process_time() - start)
print(json.dumps({"median_s": statistics.median(times)}))
"""


def matmul_gflops(threads: int) -> float:
    """Batched float32 matmul (256,64,1024)@(256,1024,64) in GFLOP/s, process CPU time, best of 5."""
    torch.set_num_threads(threads)
    a, b = torch.randn(256, 64, 1024), torch.randn(256, 1024, 64)
    torch.bmm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        torch.bmm(a, b)
        best = min(best, time.process_time() - start)
    return 2 * 256 * 64 * 1024 * 64 / best / 1e9


def time_tree(tree: Path, threads: int, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, "-c", STEP_TIMER, str(threads), str(steps)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    for tree in (args.old, args.new):
        revision = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        print(f"{tree}: {revision or '(not a git checkout)'}")
    print(
        f"machine reference: batched matmul {matmul_gflops(args.threads):.1f} GFLOP/s ({args.threads} thread)"
    )
    best = {args.old: float("inf"), args.new: float("inf")}
    for round_index in range(args.rounds):
        for tree in (args.old, args.new):
            seconds = time_tree(tree, args.threads, args.steps)
            best[tree] = min(best[tree], seconds)
            print(f"round {round_index + 1}: {tree} {1000 * seconds:.1f} ms per step", flush=True)
    old, new = best[args.old], best[args.new]
    print(f"old {1000 * old:.1f} ms, new {1000 * new:.1f} ms per step (CPU): new {old / new:.2f}x faster")


if __name__ == "__main__":
    main()
