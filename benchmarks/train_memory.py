"""Peak memory of ``atomvae train`` against the number of particles (64 px images).

Writes a stack of N noise 64x64 float32 images (N x 16 KiB on disk) with a RELION .star beside it, then
runs ``atomvae train`` on it for a few steps (cpu preset, adenylate kinase adk_open.pdb as the base) in a
child process and reports its peak resident set size (VmHWM, read by the child itself from
/proc/self/status when training ends: the high-water mark of its own address space since exec) plus the
peaks of its anonymous memory (RssAnon: the process's own allocations) and of its file-backed resident
pages (RssFile: shared libraries and pages of the memory-mapped stack), sampled every 50 ms from /proc
once the child has started Python. (``ru_maxrss`` of the child is not used: Linux carries the parent's
high-water mark into a vfork()ed child, and the parent has just written the stack.)

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/train_memory.py --particles 20000
    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/train_memory.py --particles 200000 --steps 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb

from atomvae.data.metadata import ParticleMetadata, star_tables
from atomvae.physics.ctf import CTFParams

BOX = 64
PIXEL_SIZE = 2.0  # A


def write_particles(folder: Path, n: int, seed: int = 0) -> Path:
    """folder/particles.mrcs (n noise images, written in chunks) and folder/particles.star (returned)."""
    stack_path = folder / "particles.mrcs"
    rng = np.random.default_rng(seed)
    # One block of 4096 noise images written over and over: the content does not matter here, only the size.
    block = rng.standard_normal((4096, BOX, BOX), dtype=np.float32)
    with mrcfile.new_mmap(stack_path, shape=(n, BOX, BOX), mrc_mode=2, overwrite=True) as mrc:
        for start in range(0, n, len(block)):
            stop = min(start + len(block), n)
            mrc.data[start:stop] = block[: stop - start]
            mrc.flush()  # written pages go to the file, not into this process's memory for long
        mrc.voxel_size = PIXEL_SIZE
    defocus = torch.as_tensor(8000.0 + 4000.0 * rng.random(n))
    ctf = CTFParams(
        defocus_u=defocus,
        defocus_v=defocus + 200.0,
        astigmatism_angle=torch.full((n,), 30.0),
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
        phase_shift=0.0,
        bfactor=0.0,
    )
    meta = ParticleMetadata(
        image_paths=(stack_path,),
        file_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n),
        ctf=ctf,
        pixel_size=PIXEL_SIZE,
        box=BOX,
    )
    names = [f"{i + 1:06d}@{stack_path.name}" for i in range(n)]
    star_path = folder / "particles.star"
    starfile.write(star_tables(meta, names), star_path, overwrite=True)
    return star_path


def _status_kib(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in fields:
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


# Runs atomvae's CLI, then prints the process's own peak RSS (kB) as the last line of stdout.
_CHILD = (
    "import sys\nfrom atomvae.cli.main import main\ncode = main(sys.argv[1:])\n"
    "print('VmHWM', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    "sys.exit(code)\n"
)


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``atomvae <command>``: wall time, peak RSS (VmHWM), sampled peaks of RssAnon / RssFile, MiB."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *command], env=env, stdout=subprocess.PIPE, text=True
    )
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:  # only once the child runs Python (before exec, /proc shows the parent's memory)
                with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
                    started_python = cmdline.read().split(b"\0")[1:2] == [b"-c"]
            except OSError:
                started_python = False
            if started_python:
                for key, value in _status_kib(process.pid, tuple(peaks)).items():
                    peaks[key] = max(peaks[key], value)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"training failed with exit code {process.returncode}")
    print(output, end="")
    peak_kib = int(output.strip().splitlines()[-1].split()[1])
    return {
        "wall_s": time.perf_counter() - started,
        "max_rss_mib": peak_kib / 1024,
        "peak_rss_anon_mib": peaks["RssAnon"] / 1024,
        "peak_rss_file_mib": peaks["RssFile"] / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=3, help="training steps (cpu preset, batch 64)")
    parser.add_argument("--workdir", type=Path, help="where the stack and the run go (default: temporary)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        star = write_particles(folder, args.particles)
        written = time.perf_counter() - t0
        config = folder / "memory.yaml"
        config.write_text("preset: cpu\ndata: {max_val_images: 64}\n")
        command = [
            "train",
            str(star),
            PDB_small,
            "-o",
            str(folder / "run"),
            "--config",
            str(config),
            "--max-steps",
            str(args.steps),
            "--no-progress",
        ]
        result = measure(command, dict(os.environ))
        stack_mib = (folder / "particles.mrcs").stat().st_size / 2**20
    print(
        f"particles {args.particles} ({BOX} px, stack {stack_mib:.0f} MiB, written in {written:.0f} s); "
        f"{args.steps} steps in {result['wall_s']:.0f} s: peak RSS {result['max_rss_mib']:.0f} MiB "
        f"(anonymous {result['peak_rss_anon_mib']:.0f} MiB, "
        f"file-backed {result['peak_rss_file_mib']:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
