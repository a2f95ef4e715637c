"""Training-step images/s on 1 and 2 torch threads, idle and beside busy processes, side by side (issue 12).

One process builds the cpu-preset model (adk base, 64 px, batch 64, given poses, fused Adam as the training
loop) and alternates steps on 1 and on 2 threads, so load that comes and goes hits both alike. Conditions,
in order: as the machine is; then beside ``--busy`` spinning processes (``python -c "while True: pass"``,
started here at this process's own niceness, so they compete on equal terms, and killed afterwards); then
as the machine is again. Wall-clock means; the load average (``os.getloadavg``) is printed with each.
"default": the training loop's own choice (``atomvae.train.threads.ThreadTuner``, probes included; every
``--interval`` steps here so that a short run sees several probes, every 50 in training).

    .venv/bin/python benchmarks/threads.py [--steps 30] [--busy 2] [--interval 10] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from atomvae.train.config import PRESETS
from atomvae.train.loop import make_optimizer
from atomvae.train.threads import ThreadTuner

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_step import build  # noqa: E402  (the benchmark's shared model and batch)


def measure(step, steps: int, tuner: ThreadTuner, verbose: bool = False) -> dict[str, float]:
    """Steps per second on 1 thread, on 2 threads and as the training loop runs by default (``tuner``: its
    probes included), one step of each in turn; wall-clock means."""
    fixed = {"1 thread": 1, "2 threads": 2}
    times: dict[str, float] = {name: 0.0 for name in [*fixed, "default"]}
    for _ in range(steps):
        for name, threads in fixed.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            step()
            times[name] += time.perf_counter() - start
            if verbose:
                print(f"  {name}: {time.perf_counter() - start:.2f} s", flush=True)
        tuner.before_step()
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        tuner.after_step(elapsed)
        times["default"] += elapsed
        if verbose:
            print(f"  default ({torch.get_num_threads()} threads): {elapsed:.2f} s", flush=True)
    return {name: steps / total for name, total in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--busy", type=int, default=2, help="0: only the machine as it is")
    parser.add_argument("--verbose", action="store_true", help="print every step's wall time")
    parser.add_argument("--batch", type=int, help="images per step (default: the preset's 64)")
    parser.add_argument(
        "--interval", type=int, default=10, help="the tuner's steps between probes (training: 50)"
    )
    args = parser.parse_args()
    config = PRESETS["cpu"]
    batch = args.batch or config.batch_size
    model, generator, images, ctf, rotation, shift = build(config, batch)
    optimizer = make_optimizer(model.trainable_parameters(2), 3e-4, torch.device("cpu"))

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

    for threads in (1, 2):
        torch.set_num_threads(threads)
        step()
    print(
        f"cpu preset step, batch {batch}, {os.cpu_count()} CPUs, niceness {os.nice(0)}; "
        "images/s (wall-clock means)"
    )

    def report(condition: str) -> None:
        load_before = os.getloadavg()[0]
        rates = measure(step, args.steps, ThreadTuner(interval=args.interval), args.verbose)
        per_step = ", ".join(f"{name} {batch * rate:.0f}" for name, rate in rates.items())
        best = max(rates.values())
        print(
            f"{condition} (load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}): {per_step} images/s; "
            f"2 threads / 1 thread {rates['2 threads'] / rates['1 thread']:.2f}x; "
            f"default is {best / rates['default']:.2f}x slower than the best",
            flush=True,
        )

    report("as the machine is")
    if args.busy == 0:
        return 0
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(1.0)
        report(f"beside {args.busy} busy processes")
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    report("as the machine is, again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
