"""EMD-RMSD speed: N x N structures of 214 C-alpha atoms (AdK frames from MDAnalysisTests' adk_dims.dcd
plus Gaussian noise), split into the all-pairs RMSD matrix and the optimal assignment.

    .venv/bin/python benchmarks/emd_rmsd.py            # N = 2048, the paper's size
    .venv/bin/python benchmarks/emd_rmsd.py --n 512 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

from atomvae.evaluate.emd_rmsd import emd_rmsd
from command_line import repository_command


def adk_ensembles(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (n, 214, 3) C-alpha ensembles: frames of the AdK DIMS trajectory drawn with replacement, each
    with independent noise (A), so no two structures are identical."""
    from MDAnalysisTests.datafiles import DCD, PSF

    from atomvae.structure.io import read_ensemble

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, frames = read_ensemble(DCD, PSF, atoms="CA")
    rng = np.random.default_rng(seed)
    pred = frames[rng.integers(len(frames), size=n)] + rng.normal(scale=noise, size=(n, frames.shape[1], 3))
    gt = frames[rng.integers(len(frames), size=n)] + rng.normal(scale=noise, size=(n, frames.shape[1], 3))
    return pred, gt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--noise", type=float, default=0.5, help="per-coordinate noise, A")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pred, gt = adk_ensembles(args.n, args.noise, args.seed)
    print(f"command: {repository_command()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"ensembles: {pred.shape[0]} x {gt.shape[0]} structures of {pred.shape[1]} C-alpha atoms")
    for k in range(args.repeats):
        t0 = time.perf_counter()
        result = emd_rmsd(pred, gt)
        total = time.perf_counter() - t0
        other = total - result.rmsd_seconds - result.assignment_seconds
        print(
            f"run {k + 1}: total {total:.2f} s = RMSD matrix {result.rmsd_seconds:.2f} s + assignment "
            f"{result.assignment_seconds:.2f} s (+ {other:.2f} s other); EMD-RMSD {result.emd_rmsd:.3f} A"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
