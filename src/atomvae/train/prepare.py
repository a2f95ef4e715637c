"""The run folder around training: written (fresh run) or checked (``--resume``) before the first step, and
best.yaml with the best seed's metrics written after the last (layout in ``atomvae.train.run``)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomvae.errors import InputError, atomic_path
from atomvae.train import distributed, preflight
from atomvae.train import run as run_folder
from atomvae.train.checkpoint import LAST, Position, load_checkpoint, rewrite_position
from atomvae.train.config import TrainConfig, config_to_dict, load_config, save_config
from atomvae.train.metrics import CURVE_FILE, METRICS_FILE
from atomvae.train.particles import ParticleSource
from atomvae.train.seed_run import SeedResult
from atomvae.train.seeding import split_indices
from atomvae.train.step import stages

# Config fields that may change when a run is resumed (where and how fast it runs, not what it computes).
RESUMABLE_CHANGES = {"device", "data.num_workers"}
# ... and those a resume may raise: a stage's epoch count (``atomvae train --resume --epochs-stage2 N``).
EXTENDABLE = {"stage1.epochs": 1, "stage2.epochs": 2}


def check_resume_config(config: TrainConfig, run_dir: Path) -> dict[int, tuple[int, int]]:
    """InputError when ``config`` differs from the run's config.yaml in anything but RESUMABLE_CHANGES and
    raised epoch counts; returns the raised ones as {stage: (epochs in config.yaml, epochs asked)}."""
    config_file = run_dir / run_folder.CONFIG_FILE
    saved = config_to_dict(load_config(config_file))
    given = config_to_dict(config)

    def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    saved_flat, given_flat = flatten(saved), flatten(given)
    differing = sorted(
        k for k in saved_flat if saved_flat[k] != given_flat.get(k) and k not in RESUMABLE_CHANGES
    )
    extensions = {}
    for key in [k for k in differing if k in EXTENDABLE]:
        if given_flat[key] < saved_flat[key]:
            raise InputError(
                config_file,
                f"--resume cannot shorten {key.split('.')[0]} from {saved_flat[key]} to {given_flat[key]} "
                "epochs (its checkpoints are past that or will be); start a new run",
            )
        extensions[EXTENDABLE[key]] = (int(saved_flat[key]), int(given_flat[key]))
        differing.remove(key)
    if differing:
        raise InputError(
            config_file,
            f"--resume with a different configuration ({', '.join(differing)}); "
            "resume with the run's own config or start a new run",
        )
    return extensions


def extend_stages(config: TrainConfig, run_dir: Path, extensions: dict[int, tuple[int, int]]) -> None:
    """Continue a run for more epochs (``extensions``: {stage: (old, new epochs)}): a seed that finished
    its final stage is reopened at that stage's old last epoch (its Adam moments are in last.pt), one still
    training simply runs to the new count; then config.yaml takes the new counts. Checked for every seed
    before anything is written, and the checkpoints are rewritten first, so a crash in between leaves a run
    that a plain --resume finishes as it was."""
    config_file = run_dir / run_folder.CONFIG_FILE
    trained = stages(config)
    final = trained[-1]
    reopen = []
    for stage in extensions:
        if stage not in trained:
            raise InputError(
                config_file,
                f"this run has no stage {stage} (pose mode {config.pose_mode}): nothing to extend",
            )
    for seed in config.seeds:
        last = run_folder.checkpoint_dir(run_dir, seed) / LAST
        if not last.is_file():
            continue  # not started: trains to the new counts from the beginning
        position = load_checkpoint(last)["position"]
        for stage in extensions:
            if stage != final and position.stage > stage:
                raise InputError(
                    last,
                    f"seed {seed} has finished stage {stage}; only the final stage ({final}) can be "
                    "continued after it ends",
                )
        if position.complete and final in extensions:
            reopen.append((last, Position(final, extensions[final][0], 0, position.global_step)))
    for last, position in reopen:
        rewrite_position(last, position)
    save_config(config, config_file, argv=run_folder.read_yaml(config_file).get("argv"))


def prepare_run_folder(
    config: TrainConfig,
    particles_path: Path,
    base_path: Path,
    run_dir: Path,
    resume: bool,
    argv: Sequence[str] | None,
    source: ParticleSource,
) -> dict[str, Any]:
    """Write (fresh run) or check (resume) config.yaml, run.yaml, base.*, split.npz; return run.yaml."""
    if resume:
        if not (run_dir / run_folder.CONFIG_FILE).is_file():
            raise InputError(run_dir, "--resume: not a run folder (config.yaml is missing)")
        extensions = check_resume_config(config, run_dir)
        info = run_folder.read_run_info(run_dir)
        preflight.check_same_particles(info, particles_path, source, run_dir)
        same_grid = int(info["box"]) == source.box and math.isclose(
            info["pixel_size"], source.pixel_size, rel_tol=1e-4
        )
        if not same_grid or int(info.get("n_particles", source.n_particles)) != source.n_particles:
            raise InputError(
                particles_path,
                f"{source.n_particles} particles of {source.box} px at "
                f"{source.pixel_size:.4g} A differ from the run's "
                f"{info.get('n_particles')} of {info['box']} px at "
                f"{info['pixel_size']:.4g} A (resume with the same particles)",
            )
        if info.get("world_size") != distributed.world_size():
            # Resumed with another number of processes: run.yaml says how the run continues.
            info["world_size"] = distributed.world_size()
            run_folder.write_yaml(run_dir / run_folder.RUN_INFO_FILE, info)
        if extensions:  # after every check of the particles: nothing is rewritten for a run that fails them
            extend_stages(config, run_dir, extensions)
        return info
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(run_dir, "output folder is not empty; use --resume to continue it or choose another")
    if source.n_particles < 2:
        raise InputError(
            particles_path,
            f"{source.n_particles} usable particle(s): at least 2 are needed (one held out for validation)",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx = split_indices(source.n_particles, config.data.val_fraction, config.seed)
    with atomic_path(run_dir / run_folder.SPLIT_FILE) as tmp:
        np.savez(tmp, train=train_idx, val=val_idx)
    # The noise level is a property of the data: the dataset's estimate from the background of a seeded
    # subset of all particles, in the normalised units it yields; recorded here so it never changes.
    if config.data.noise_sigma is not None:
        noise_sigma, noise_source = float(config.data.noise_sigma), "given"
    else:
        noise_sigma, noise_source = source.noise_sigma, "estimated from the background outside 0.4 box"
    suffixes = [x.lower() for x in base_path.suffixes]
    suffix = "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else "".join(suffixes[-1:])  # .cif.gz
    with atomic_path(run_dir / f"{run_folder.BASE_STEM}{suffix}") as tmp:
        shutil.copyfile(base_path, tmp)
    info = {
        "particles": str(particles_path.resolve()),
        "base_source": str(base_path.resolve()),
        "box": source.box,
        "pixel_size": source.pixel_size,
        "original_box": source.original_box,
        "noise_sigma": noise_sigma,
        "noise_sigma_source": noise_source,
        "n_particles": source.n_particles,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "world_size": distributed.world_size(),  # processes (torchrun); updated by a resume with another
        "particles_fingerprint": preflight.particles_fingerprint(source),
    }
    run_folder.write_yaml(run_dir / run_folder.RUN_INFO_FILE, info)
    save_config(config, run_dir / run_folder.CONFIG_FILE, argv=list(argv) if argv is not None else None)
    return info


def write_best(run_dir: Path, results: Sequence[SeedResult], best: SeedResult) -> None:
    """best.yaml (every seed's held-out log-likelihood and position), and the best seed's metrics log and
    curve at the top of the run folder, where a user looks first."""
    run_folder.write_yaml(
        run_dir / run_folder.BEST_FILE,
        {
            "seed": best.seed,
            "checkpoint": str(best.checkpoint.relative_to(run_dir)),
            "val_log_likelihood": best.val_log_likelihood,
            "complete": all(r.position.complete for r in results),
            "seeds": {
                r.seed: {
                    "val_log_likelihood": r.val_log_likelihood,
                    "global_step": r.position.global_step,
                    "complete": r.position.complete,
                }
                for r in results
            },
        },
    )
    for name in (METRICS_FILE, CURVE_FILE):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(run_folder.seed_dir(run_dir, best.seed) / name, tmp)
