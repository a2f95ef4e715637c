"""The training loop: stage 1 (pose path on the fixed base structure), then stage 2 (everything).

Read top to bottom: :func:`train` checks the inputs and prepares the run folder once (``prepare.py``),
trains each seed with :func:`train_seed`, whose :func:`fit` is the loop itself (stages, epochs, steps), and
records the best seed by held-out log-likelihood (paper section 9). A step and a validation pass are in
``step.py``, a seed's model and checkpoints in ``seed_run.py``, every random stream in ``seeding.py``, the
Ctrl-C handling in ``signals.py``.

Exact resume: the data order and the sampling noise are functions of (seed, stage, epoch, step)
(``seeding.py``), so a checkpoint needs only the position besides the model, optimizer and RNG states to
continue with the same numbers as an uninterrupted run.

Several processes (``torchrun``, see ``atomvae.train.distributed``): the order, the global batches and the
position are those of one process; each rank takes its share of every global batch, DistributedDataParallel
averages the gradients, and only rank 0 writes. Positions and checkpoints therefore do not depend on the
number of processes, and ``--resume`` may use another number.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomvae.model.pose_modes import pose_mode
from atomvae.train import distributed, preflight, prepare
from atomvae.train import run as run_folder
from atomvae.train.checkpoint import Position
from atomvae.train.config import TrainConfig, load_config
from atomvae.train.metrics import CURVE_FILE, METRICS_FILE, MetricsLogger, NullMetrics, plot_training_curve
from atomvae.train.particles import ParticleSource, open_particles
from atomvae.train.progress import TrainingProgress
from atomvae.train.seed_run import SeedResult, SeedRun
from atomvae.train.seeding import SAMPLING, epoch_batches, sampling_generator
from atomvae.train.signals import StopRequest
from atomvae.train.step import (
    Batch,
    StepResult,
    make_optimizer,
    sampling_noise,
    stage_config,
    stages,
    train_step,
    validation_log_likelihood,
)
from atomvae.train.threads import ThreadTuner


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    seeds: list[SeedResult]
    best_seed: int
    best_checkpoint: Path
    complete: bool  # every seed finished both stages (False when stopped by max_steps)


def train(
    config: TrainConfig,
    particles_path: str | Path,
    base_path: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    argv: Sequence[str] | None = None,
    show_progress: bool | None = None,
    threads: int | None = None,
) -> RunSummary:
    """Train ``config.n_seeds`` models on a particle file and keep the best by held-out log-likelihood.

    particles_path: .star (or any format ``atomvae.data`` reads); base_path: PDB/mmCIF base structure.
    run_dir: the run folder (layout in ``atomvae.train.run``). ``max_steps``: stop each seed once its
    global step reaches this (a checkpoint is written there; ``resume=True`` continues it). ``threads``:
    torch threads of a one-process CPU run; None = ``OMP_NUM_THREADS`` when set, else measured while
    training (``atomvae.train.threads.ThreadTuner``).
    """
    from atomvae.structure.io import read_structure

    particles_path, base_path, run_dir = Path(particles_path), Path(base_path), Path(run_dir)
    # Every input is checked before the run folder exists (a half-made folder blocks a rerun).
    fresh = not (resume and (run_dir / run_folder.CONFIG_FILE).is_file())
    preflight.check_options(config, run_dir, resume, fresh)
    user_base = preflight.read_base_structure(base_path) if fresh else None
    device = run_folder.resolve_device(config.device)
    with distributed.process_group(device) as device:
        source = open_particles(
            particles_path, config, need_poses=pose_mode(config.pose_mode).needs_given_poses
        )
        if user_base is not None:
            preflight.warn_about_geometry(user_base, base_path, source.box, source.pixel_size)
            preflight.check_init_run(config, user_base, source)
        # Rank 0 writes or checks the run folder and reads it back; the other ranks get its contents.
        info, (train_idx, val_idx), structure = distributed.from_main(
            lambda: (
                prepare.prepare_run_folder(config, particles_path, base_path, run_dir, resume, argv, source),
                run_folder.read_split(run_dir),
                read_structure(run_folder.base_structure_path(run_dir)),
            )
        )
        note = pose_mode(config.pose_mode).route_note(source.has_poses)
        if note is not None and not resume and distributed.is_main():
            print(f"atomvae train: {particles_path}: {note}", file=sys.stderr)
        val_idx = val_idx[: config.data.max_val_images]
        results = [
            train_seed(
                config,
                seed,
                source,
                structure,
                info,
                train_idx,
                val_idx,
                run_dir,
                device,
                resume=resume,
                max_steps=max_steps,
                show_progress=show_progress,
                threads=threads,
            )
            for seed in config.seeds
        ]
        best = max(
            results, key=lambda r: r.val_log_likelihood if math.isfinite(r.val_log_likelihood) else -math.inf
        )
        if distributed.is_main():
            prepare.write_best(run_dir, results, best)
    return RunSummary(
        run_dir=run_dir,
        seeds=results,
        best_seed=best.seed,
        best_checkpoint=best.checkpoint,
        complete=all(r.position.complete for r in results),
    )


def train_seed(
    config: TrainConfig,
    seed: int,
    source: ParticleSource,
    structure,
    info: dict[str, Any],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    show_progress: bool | None = None,
    threads: int | None = None,
) -> SeedResult:
    """Train one seed in RUN/seed_<seed>/ (resuming from its last checkpoint when asked and present)."""
    run = SeedRun(config, seed, source, structure, info, train_idx, run_dir, device, resume)
    # One CPU process times its steps and picks its thread count as it goes (train.threads); with several
    # processes or on a GPU the thread count stays as it is (or ``threads`` when given).
    if device.type == "cpu" and not distributed.active():
        tuner = ThreadTuner.from_environment(threads)
    else:
        tuner = ThreadTuner(fixed=threads or torch.get_num_threads())
    seed_dir = run_folder.seed_dir(run_dir, seed)
    total_images = sum(len(train_idx) * stage_config(config, s).epochs for s in stages(config))
    main = distributed.is_main()  # only rank 0 logs, shows progress and writes
    with (
        MetricsLogger(seed_dir, resume_step=run.resumed_step) if main else NullMetrics() as metrics,
        TrainingProgress(
            total_images,
            run.images_done(len(train_idx)),
            enabled=show_progress if main else False,
            desc=f"seed {seed}",
        ) as bar,
        StopRequest() as stop,
    ):
        threads_before = torch.get_num_threads()
        try:
            fit(run, source, train_idx, val_idx, metrics, bar, max_steps, stop, tuner)
        finally:
            # the tuner's last choice (1 thread under load) must not leak into the caller's later work,
            # e.g. the searched route's next pose search in the same process
            torch.set_num_threads(threads_before)
    if run.stopped:
        raise KeyboardInterrupt(f"stopped at step {run.position.global_step}; checkpoint {run.last}")
    # Seeds are compared on the final stage's objective (stage 1 only if stopped before stage 2).
    final_stage = min(run.position.stage, 2)
    val = validation_log_likelihood(run.model, source, val_idx, config, final_stage, seed, device)
    if main:
        plot_training_curve(seed_dir / METRICS_FILE, seed_dir / CURVE_FILE)
    return SeedResult(seed=seed, checkpoint=run.last, position=run.position, val_log_likelihood=val)


def fit(
    run: SeedRun,
    source: ParticleSource,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    metrics: MetricsLogger | NullMetrics,
    bar: TrainingProgress,
    max_steps: int | None,
    stop: StopRequest,
    tuner: ThreadTuner | None = None,
) -> None:
    """The stages from ``run.position`` on. Returns at the end, once ``max_steps`` is reached, or after the
    step during which a stop was requested (``run.stopped``), each time with a checkpoint in ``run.last``."""
    config, seed, device = run.config, run.seed, run.device
    tuner = tuner or ThreadTuner(fixed=torch.get_num_threads())
    if max_steps is not None and run.position.global_step >= max_steps:
        return  # resuming a run that already stopped at this max_steps
    clock_start = time.perf_counter()

    def train_seconds() -> float:  # this run's training wall time, earlier processes included
        return metrics.seconds_before + time.perf_counter() - clock_start

    for stage in [s for s in stages(config) if s >= run.position.stage]:
        settings = stage_config(config, stage)
        optimizer = make_optimizer(run.model.trainable_parameters(stage), settings.learning_rate, device)
        run.restore_optimizer(optimizer, stage)  # mid-stage resume: the stage's Adam moments
        first_epoch = run.position.epoch if run.position.stage == stage else 0
        # DistributedDataParallel over the stage's parameters with several processes (the pose head gets
        # no gradient when poses are given); the model's own loss with one.
        unused = not pose_mode(config.pose_mode).uses_pose_head
        parameters = run.model.trainable_parameters(stage)
        with distributed.data_parallel(
            run.model, "loss", parameters, find_unused_parameters=unused
        ) as loss_fn:
            for epoch in range(first_epoch, settings.epochs):
                for group in optimizer.param_groups:
                    group["lr"] = settings.learning_rate_at(epoch)
                for step_in_epoch, shard, batch in _remaining_batches(run, source, train_idx, stage, epoch):
                    n_threads = tuner.before_step()
                    started = time.perf_counter()
                    generator = sampling_generator(device, seed, SAMPLING, stage, run.position.global_step)
                    noise = sampling_noise(generator, shard)
                    result = train_step(
                        loss_fn,
                        optimizer,
                        batch,
                        config,
                        stage,
                        device,
                        noise,
                        shard,
                        stop.requested,
                        memory=run.memory,
                    )
                    tuner.after_step(time.perf_counter() - started)
                    run.position = Position(stage, epoch, step_in_epoch + 1, run.position.global_step + 1)
                    step = run.position.global_step
                    if step % config.log_every == 0 or not result.finite:
                        images_per_s = shard.global_size / (time.perf_counter() - started)
                        record = _train_record(result, run.position, images_per_s, optimizer)
                        metrics.log({**record, "threads": n_threads, "train_seconds": train_seconds()})
                    bar.update(shard.global_size, stage=stage, loss=result.terms["total"])
                    run.nonfinite.record(result.finite, run.position)
                    # With several processes the ranks agree on a stop in the step's collective (a signal
                    # that arrives later is seen one step later); one process also sees one that came
                    # during the step.
                    run.stopped = result.stop_requested or (stop.requested and not distributed.active())
                    if (max_steps is not None and step >= max_steps) or run.stopped:
                        run.save(run.last, optimizer)
                        return
                    if step % config.checkpoint_every == 0:
                        run.save(run.last, optimizer)
                if (epoch + 1) % config.validate_every == 0 or epoch + 1 == settings.epochs:
                    val = validation_log_likelihood(run.model, source, val_idx, config, stage, seed, device)
                    metrics.log(
                        {
                            **_val_record(val, run.position.global_step, stage, epoch),
                            "train_seconds": train_seconds(),
                        }
                    )
                run.position = Position(stage, epoch + 1, 0, run.position.global_step)
        run.position = Position(stage + 1, 0, 0, run.position.global_step)
        run.save(run.stage_checkpoint(stage), None)
        # The final stage's Adam moments stay in last.pt, so a run continued for more epochs
        # (--resume --epochs-stage2) goes on as if it had never stopped.
        run.save(run.last, optimizer if stage == stages(config)[-1] else None)
    if not run.last.is_file():  # no step at all (zero epochs): keep the initial model usable
        run.save(run.last, None)


def _remaining_batches(
    run: SeedRun, source: ParticleSource, train_idx: np.ndarray, stage: int, epoch: int
) -> Iterator[tuple[int, distributed.Shard, Batch]]:
    """(step within the epoch, this rank's share of the global batch, its Batch) for the steps of the
    epoch not yet taken (all of them unless the run resumes inside this epoch)."""
    batches = epoch_batches(train_idx, run.config.batch_size, run.seed, stage, epoch)
    resuming_here = (run.position.stage, run.position.epoch) == (stage, epoch)
    first_step = run.position.step_in_epoch if resuming_here else 0
    shards = [distributed.shard(b) for b in batches[first_step:]]
    loaded = source.batches([s.indices for s in shards], run.device)
    for step_in_epoch, (shard, batch) in enumerate(zip(shards, loaded, strict=True), start=first_step):
        yield step_in_epoch, shard, Batch.from_dict(batch)


def _train_record(
    result: StepResult, position: Position, images_per_s: float, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The metrics.jsonl record of the step that ended at ``position``."""
    return {
        "kind": "train",
        "step": position.global_step,
        "stage": position.stage,
        "epoch": position.epoch,
        "loss": result.terms["total"],
        "finite": result.finite,
        **result.terms,
        "images_per_s": images_per_s,
        "lr": optimizer.param_groups[0]["lr"],
    }


def _val_record(val_log_likelihood: float, step: int, stage: int, epoch: int) -> dict[str, Any]:
    """The metrics.jsonl record of a validation pass at the end of ``epoch``."""
    return {
        "kind": "val",
        "step": step,
        "stage": stage,
        "epoch": epoch,
        "val_log_likelihood": val_log_likelihood,
    }


def resolved_config_for_resume(run_dir: str | Path, device: str | None = None) -> TrainConfig:
    """The config a run was started with (config.yaml), optionally on another device."""
    config = load_config(Path(run_dir) / run_folder.CONFIG_FILE)
    return replace(config, device=device) if device is not None else config
