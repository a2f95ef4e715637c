"""Stage 1 of the amortised route on the stage-1 test's problem, with and without the particle memory
(issue 11, goal 1).

The problem of ``tests/test_stage1_poses.py``: adk_open.pdb residues 1-30 (C-alpha), 64 images of 24 px at
2 A, uniformly random rotations, SNR 3, no shift or CTF; stage 1 as the loop runs it (``train_step`` with
the hypothesis pull, 32 uniform hypotheses and 8 pose samples per image, batch 16, Adam 1e-3 then 1e-4 for
the last 600 of 2000 steps). Every 100 steps: the median angle between the rotation ``encode`` returns and
the truth (random: 126 deg), the fraction within 10 deg, and the memory's own median. Process CPU time;
the machine's batched-matmul reference first.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stage1_memory.py [--no-memory] [--steps 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from command_line import repository_command  # noqa: E402
from model_step import matmul_gflops  # noqa: E402
from test_stage1_poses import fragment_problem, pose_memory, rotation_angle_deg, train_stage1  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-memory", action="store_true", help="stage 1 without the particle memory")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(repository_command())
    print(f"machine reference: batched matmul at 214 atoms, 1 thread: {matmul_gflops(214):.1f} GFLOP/s")
    model, images, rotations = fragment_problem(64, 30, snr=3.0, seed=0, pose_sigma_init=0.05)
    memory = None if args.no_memory else pose_memory(len(images), seed=5)
    start = time.process_time()

    def report(step: int) -> None:
        with torch.no_grad():
            errors = rotation_angle_deg(model.encode(images)["rotation"], rotations)
        line = (
            f"step {step:5d}: {time.process_time() - start:5.0f} s CPU; encode median {errors.median():6.1f} "
            f"deg, within 10 deg {(errors < 10).float().mean():.2f}"
        )
        if memory is not None:
            remembered = rotation_angle_deg(memory.fields["rotation"], rotations)
            line += f"; memory median {remembered.median():.1f} deg"
        print(line, flush=True)

    train_stage1(model, images, steps=args.steps, seed=0, memory=memory, report=report)


if __name__ == "__main__":
    main()
