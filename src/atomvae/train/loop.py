"""The training loop: stage 1 (pose path on the fixed base structure), then stage 2 (everything).

Read top to bottom: :func:`train` prepares the run folder and the data once, then trains each seed with
:func:`train_seed` and records the best seed by held-out log-likelihood (paper section 9).

Exact resume: the data order of an epoch is a permutation drawn from (seed, stage, epoch) and the
sampling noise of a step comes from a generator seeded with (seed, stage, global step), so a checkpoint
needs only the position (stage, epoch, step within the epoch) besides the model, optimizer and global RNG
states to continue with the same numbers as an uninterrupted run.

Several processes (``torchrun``, see ``atomvae.train.distributed``): the order, the global batches and the
position are those of one process; each rank takes its share of every global batch, DistributedDataParallel
averages the gradients, and only rank 0 writes. Positions and checkpoints therefore do not depend on the
number of processes, and ``--resume`` may use another number.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomvae.errors import InputError, atomic_path
from atomvae.model.batch_noise import BatchNoiseRows
from atomvae.model.config import LossWeights
from atomvae.model.pose_modes import pose_mode
from atomvae.train import distributed, preflight
from atomvae.train import run as run_folder
from atomvae.train.checkpoint import (
    LAST,
    Position,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    stage_checkpoint_name,
)
from atomvae.train.config import StageConfig, TrainConfig, config_to_dict, load_config, save_config
from atomvae.train.metrics import CURVE_FILE, METRICS_FILE, MetricsLogger, plot_training_curve
from atomvae.train.particles import ParticleSource, open_particles
from atomvae.train.progress import TrainingProgress

# Config fields that may change when a run is resumed (where and how fast it runs, not what it computes).
RESUMABLE_CHANGES = {"device", "data.num_workers"}

# Stream tags mixed into the seeds so the data order, the sampling noise and validation never share draws.
_ORDER, _SAMPLING, _VALIDATION, _SPLIT, _CALIBRATION = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class SeedResult:
    seed: int
    checkpoint: Path  # the seed's latest checkpoint
    position: Position
    val_log_likelihood: float  # mean held-out log-likelihood per image (nats) at the end of training


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    seeds: list[SeedResult]
    best_seed: int
    best_checkpoint: Path
    complete: bool  # every seed finished both stages (False when stopped by max_steps)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence: well separated streams for nearby inputs)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts])
        .generate_state(2, np.uint32)
        .astype(np.uint64)
        .dot(np.array([1, 2**32], dtype=np.uint64))
        % np.uint64(2**63)
    )


def split_indices(n_particles: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) particle indices, sorted; fixed by ``seed`` and shared by all seeds of a run so their
    held-out log-likelihoods compare on the same images. At least one image on each side."""
    if n_particles < 2:
        raise ValueError(f"need at least 2 particles to hold out a validation set, got {n_particles}")
    n_val = min(max(1, round(val_fraction * n_particles)), n_particles - 1)
    order = np.random.default_rng(derived_seed(seed, _SPLIT)).permutation(n_particles)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def epoch_batches(
    train_indices: np.ndarray, batch_size: int, seed: int, stage: int, epoch: int
) -> list[list[int]]:
    """The batches of one epoch: a permutation of the training indices from (seed, stage, epoch), cut into
    ``batch_size`` pieces (the last may be smaller)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, _ORDER, stage, epoch))
    order = torch.randperm(len(train_indices), generator=generator).numpy()
    shuffled = np.asarray(train_indices)[order]
    return [shuffled[i : i + batch_size].tolist() for i in range(0, len(shuffled), batch_size)]


def sampling_generator(device: torch.device, *parts: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))


def make_optimizer(parameters, learning_rate: float, device: torch.device) -> torch.optim.Adam:
    """Adam (paper). The fused kernel on CPU and CUDA: with the ~12M encoder parameters the default
    per-tensor Adam costs ~350 ms a step on 2 cores against ~40 ms fused, more than the renders of a
    CPU-preset batch."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(parameters, lr=learning_rate, fused=fused)


def _stages(config: TrainConfig) -> list[int]:
    # With fixed given poses nothing of the pose path is trained, so the pose-only stage 1 is skipped.
    return [1, 2] if pose_mode(config.pose_mode).uses_pose_head else [2]


def rank_loss_weights(weights: LossWeights, shard: distributed.Shard) -> LossWeights:
    """The loss weights of one rank's share of a global batch (``weights`` itself with one process).

    The objective is a mean over the batch's images plus ``heavy_clash`` x the heavy-atom clash term's mean
    over the batch's first ``heavy_clash_images``. A rank's loss is scaled by ``shard.weight`` (b W / B) for
    the first part; the clash term runs on the rank's first ceil(n / W) images (together the batch's first
    n) and its weight is rescaled so that, after that scaling and DDP's average over W ranks, each rank's
    clash mean counts by its share of the subset: the W-process gradient is the one-process gradient.
    """
    if shard.world_size == 1:
        return weights
    per_rank, fraction = distributed.subset_share(weights.heavy_clash_images, shard)
    heavy = weights.heavy_clash * fraction * shard.world_size / shard.weight if shard.weight > 0 else 0.0
    return replace(weights, heavy_clash=heavy, heavy_clash_images=per_rank)


def _loss_kwargs(
    config: TrainConfig, stage: int, batch: dict[str, Any], shard: distributed.Shard | None = None
) -> dict[str, Any]:
    stage_config = config.stage1 if stage == 1 else config.stage2
    weights = config.loss if shard is None else rank_loss_weights(config.loss, shard)
    kwargs: dict[str, Any] = dict(
        stage=stage,
        n_conf=1 if stage == 1 else stage_config.n_conf,
        n_pose=stage_config.n_pose,
        weights=weights,
        pose_mode=config.pose_mode,
        n_hypotheses=stage_config.pose_hypotheses if stage == 1 else 0,
    )
    if pose_mode(config.pose_mode).needs_given_poses:
        kwargs["given_rotation"] = batch["rotation"]
        kwargs["given_shift"] = batch["shift"]
    return kwargs


def _sampling_noise(generator: torch.Generator, shard: distributed.Shard) -> torch.Generator | BatchNoiseRows:
    """The generator itself with one process; this rank's rows of the global batch's noise with several."""
    return BatchNoiseRows(generator, shard.global_size, shard.rows) if distributed.active() else generator


def _autocast(device: torch.device, config: TrainConfig):
    """bf16 autocast on CUDA when asked; a no-op context on CPU (float32 there, always)."""
    enabled = device.type == "cuda" and config.mixed_precision
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def validation_log_likelihood(
    model,
    source: ParticleSource,
    indices: Sequence[int],
    config: TrainConfig,
    stage: int,
    seed: int,
    device: torch.device,
) -> float:
    """Mean held-out per-image log-likelihood (the model's IWAE-style term, nats), with sampling noise
    fixed per run seed so successive passes differ only by the parameters. With several processes each
    rank evaluates its share of every batch and the sums are reduced over ranks (the same value on all)."""
    was_training = model.training
    model.eval()
    generator = sampling_generator(device, seed, _VALIDATION, stage)
    shards = [
        distributed.shard(indices[i : i + config.batch_size])
        for i in range(0, len(indices), config.batch_size)
    ]
    sums = torch.zeros(2, dtype=torch.float64)  # sum of log-likelihoods, number of images
    try:
        for shard, batch in zip(shards, source.batches([s.indices for s in shards], device), strict=True):
            with _autocast(device, config):
                out = model.loss(
                    batch["image"],
                    batch["ctf"],
                    generator=_sampling_noise(generator, shard),
                    **_loss_kwargs(config, stage, batch, shard),
                )
            if shard.n_images:
                values = out.per_image_log_likelihood.double()
                sums += torch.stack([values.sum().cpu(), torch.tensor(float(values.numel()))])
    finally:
        model.train(was_training)
    total, count = distributed.sum_over_ranks(sums).tolist()
    return total / max(count, 1)


def _check_resume_config(config: TrainConfig, run_dir: Path) -> None:
    saved = config_to_dict(load_config(run_dir / run_folder.CONFIG_FILE))
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
    if differing:
        raise InputError(
            run_dir / run_folder.CONFIG_FILE,
            f"--resume with a different configuration ({', '.join(differing)}); "
            "resume with the run's own config or start a new run",
        )


def _prepare_run_folder(
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
        _check_resume_config(config, run_dir)
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


def train(
    config: TrainConfig,
    particles_path: str | Path,
    base_path: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    argv: Sequence[str] | None = None,
    show_progress: bool | None = None,
) -> RunSummary:
    """Train ``config.n_seeds`` models on a particle file and keep the best by held-out log-likelihood.

    particles_path: .star (or any format ``atomvae.data`` reads); base_path: PDB/mmCIF base structure.
    run_dir: the run folder (layout in ``atomvae.train.run``). ``max_steps``: stop each seed once its
    global step reaches this (a checkpoint is written there; ``resume=True`` continues it).
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
                _prepare_run_folder(config, particles_path, base_path, run_dir, resume, argv, source),
                run_folder.read_split(run_dir),
                read_structure(run_folder.base_structure_path(run_dir)),
            )
        )
        note = pose_mode(config.pose_mode).route_note(source.has_poses)
        if note is not None and not resume and distributed.is_main():
            print(f"atomvae train: {particles_path}: {note}", file=sys.stderr)
        val_idx = val_idx[: config.data.max_val_images]
        return _train_seeds(
            config,
            source,
            structure,
            info,
            train_idx,
            val_idx,
            run_dir,
            device,
            resume,
            max_steps,
            show_progress,
        )


def _train_seeds(
    config: TrainConfig,
    source: ParticleSource,
    structure,
    info: dict[str, Any],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    run_dir: Path,
    device: torch.device,
    resume: bool,
    max_steps: int | None,
    show_progress: bool | None,
) -> RunSummary:
    """Every seed, then best.yaml and the best seed's metrics at the top of the run folder (rank 0)."""
    results = []
    for seed in config.seeds:
        results.append(
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
            )
        )
    best = max(
        results, key=lambda r: r.val_log_likelihood if math.isfinite(r.val_log_likelihood) else -math.inf
    )
    summary = RunSummary(
        run_dir=run_dir,
        seeds=results,
        best_seed=best.seed,
        best_checkpoint=best.checkpoint,
        complete=all(r.position.complete for r in results),
    )
    if not distributed.is_main():
        return summary
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
    # The best seed's log and curve also at the top of the run folder, where a user looks first.
    for name in (METRICS_FILE, CURVE_FILE):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(run_folder.seed_dir(run_dir, best.seed) / name, tmp)
    return summary


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
) -> SeedResult:
    """Train one seed in RUN/seed_<seed>/ (resuming from its last checkpoint when asked and present)."""
    trainer = _SeedTrainer(
        config, seed, source, structure, info, train_idx, val_idx, run_dir, device, resume=resume
    )
    seed_dir = run_folder.seed_dir(run_dir, seed)
    total_images = sum(len(train_idx) * _stage_config(config, s).epochs for s in _stages(config))
    main = distributed.is_main()  # only rank 0 logs, shows progress and writes
    with (
        MetricsLogger(seed_dir, resume_step=trainer.resumed_step) if main else _NoMetrics() as metrics,
        TrainingProgress(
            total_images, trainer.images_done(), enabled=show_progress if main else False, desc=f"seed {seed}"
        ) as bar,
        _StopRequest() as stop,
    ):
        trainer.run(metrics, bar, max_steps, stop)
    if trainer.stopped:
        raise KeyboardInterrupt(f"stopped at step {trainer.position.global_step}; checkpoint {trainer.last}")
    # Seeds are compared on the final stage's objective (stage 1 only if stopped before stage 2).
    final_stage = min(trainer.position.stage, 2)
    val = validation_log_likelihood(trainer.model, source, val_idx, config, final_stage, seed, device)
    if main:
        plot_training_curve(seed_dir / METRICS_FILE, seed_dir / CURVE_FILE)
    return SeedResult(seed=seed, checkpoint=trainer.last, position=trainer.position, val_log_likelihood=val)


def _stage_config(config: TrainConfig, stage: int) -> StageConfig:
    return config.stage1 if stage == 1 else config.stage2


class _NoMetrics:
    """The metrics log of ranks other than 0: records are dropped (rank 0 logs global values)."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def __enter__(self) -> _NoMetrics:
        return self

    def __exit__(self, *exc) -> None:
        pass


class _StopRequest:
    """Ctrl-C (or SIGTERM) during training: the first one finishes the current step, writes a checkpoint and
    stops (``--resume`` then continues exactly); a second one interrupts at once. Installed only in the main
    thread (signal handlers cannot be set elsewhere)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        # SIGTERM (a scheduler ending the job) is treated as the first Ctrl-C: a step ends in well under
        # the usual grace period before SIGKILL.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\natomvae: stopping after this step with a checkpoint (Ctrl-C again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class _SeedTrainer:
    """The state of one seed's training (model, position, resumed checkpoint) and its stage/epoch loops."""

    def __init__(
        self,
        config: TrainConfig,
        seed: int,
        source: ParticleSource,
        structure,
        info: dict[str, Any],
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        run_dir: Path,
        device: torch.device,
        resume: bool,
    ):
        self.config, self.seed, self.source, self.device = config, seed, source, device
        self.train_idx, self.val_idx = train_idx, val_idx
        self.ckpt_dir = run_folder.checkpoint_dir(run_dir, seed)
        self.last = self.ckpt_dir / LAST
        self.model_init = {k: info[k] for k in ("box", "pixel_size", "noise_sigma")}
        self.stopped = False  # a stop was requested (on any rank) and training ended with a checkpoint
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves weights and Adam moments to the
        # parameters' device. Rank 0 reads it and sends it to the others.
        self.payload = distributed.from_main(
            lambda: load_checkpoint(self.last, map_location="cpu") if resume and self.last.is_file() else None
        )
        self.resumed_step = None if self.payload is None else self.payload["position"].global_step
        self.position = self.payload["position"] if self.payload else Position(stage=_stages(config)[0])

        torch.manual_seed(derived_seed(seed))  # parameter initialisation (and anything on the global RNG)
        self.model = run_folder.build_model(config, structure.topology, structure.coords, info).to(device)
        if self.payload is not None:
            self.model.load_state_dict(self.payload["model"])
            restore_rng_state(self.payload["rng"])
        elif config.init_from is not None:
            self._load_initial_weights(Path(config.init_from))
        else:
            self._initialise_amplitude()
        distributed.broadcast_module(self.model)  # identical already; made certain before DDP's first step
        self.model.train()
        self.nonfinite = preflight.NonFiniteStreak(
            run_folder.seed_dir(run_dir, seed), math.ceil(len(train_idx) / config.batch_size)
        )

    def _load_initial_weights(self, run_dir: Path) -> None:
        """Weights (amplitude included) from another run's best checkpoint; this run's noise level is kept.
        InputError when that run's model does not fit this one (other base structure or architecture)."""
        state = distributed.from_main(
            lambda: load_checkpoint(run_folder.best_checkpoint_path(run_dir)[1], map_location="cpu")["model"]
        )
        state = {k: v for k, v in state.items() if k != "noise_sigma"}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise InputError(run_dir, f"--init: its model does not fit this run's: {err}") from None
        if [k for k in missing if k != "noise_sigma"] or unexpected:
            raise InputError(
                run_dir,
                f"--init: its model does not fit this run's (missing {missing}, unexpected {unexpected})",
            )

    def _initialise_amplitude(self) -> None:
        config = self.config
        indices = self.train_idx[: config.data.n_calibration_images].tolist()
        calibration = self.source.load(indices, self.device)
        given = pose_mode(config.pose_mode).needs_given_poses
        self.model.initialise_amplitude(
            calibration["image"],
            calibration["ctf"],
            rotation=calibration["rotation"] if given else None,
            shift=calibration["shift"] if given else None,
            generator=sampling_generator(self.device, self.seed, _CALIBRATION),
        )

    def images_done(self) -> int:
        """Images already processed before ``position`` (the progress bar's starting point)."""
        done, n_train = 0, len(self.train_idx)
        for stage in _stages(self.config):
            if stage < self.position.stage:
                done += n_train * _stage_config(self.config, stage).epochs
            elif stage == self.position.stage:
                in_epoch = min(n_train, self.position.step_in_epoch * self.config.batch_size)
                done += n_train * self.position.epoch + in_epoch
        return done

    def save(self, path: Path, optimizer: torch.optim.Optimizer | None) -> None:
        """Rank 0 writes; the others hold the same model and optimizer state."""
        if not distributed.is_main():
            return
        save_checkpoint(
            path,
            model=self.model,
            optimizer=optimizer,
            position=self.position,
            model_init=self.model_init,
            seed=self.seed,
        )

    def run(
        self, metrics: MetricsLogger, bar: TrainingProgress, max_steps: int | None, stop: _StopRequest
    ) -> None:
        """Stages from the current position on; returns at the end, once ``max_steps`` is reached, or after
        the step during which a stop was requested."""
        if max_steps is not None and self.position.global_step >= max_steps:
            return  # resuming a run that already stopped at this max_steps
        for stage in [s for s in _stages(self.config) if s >= self.position.stage]:
            stage_config = _stage_config(self.config, stage)
            optimizer = make_optimizer(
                self.model.trainable_parameters(stage), stage_config.learning_rate, self.device
            )
            # A stage-end checkpoint carries no optimizer (the next stage starts a fresh Adam on its own
            # parameter set); a mid-stage one carries the stage's Adam moments.
            payload = self.payload
            if payload and payload["position"].stage == stage and payload["optimizer"] is not None:
                optimizer.load_state_dict(payload["optimizer"])
            first_epoch = self.position.epoch if self.position.stage == stage else 0
            # DistributedDataParallel over the stage's parameters with several processes (the pose head gets
            # no gradient when poses are given); the model's own loss with one.
            pose_head_unused = not pose_mode(self.config.pose_mode).uses_pose_head
            with distributed.data_parallel(
                self.model,
                "loss",
                self.model.trainable_parameters(stage),
                find_unused_parameters=pose_head_unused,
            ) as loss_fn:
                for epoch in range(first_epoch, stage_config.epochs):
                    if not self._run_epoch(stage, epoch, loss_fn, optimizer, metrics, bar, max_steps, stop):
                        self.save(self.last, optimizer)  # stopped by max_steps or Ctrl-C
                        return
                    self._end_epoch(stage, epoch, metrics)
            self.position = Position(stage + 1, 0, 0, self.position.global_step)
            self.save(self.ckpt_dir / stage_checkpoint_name(stage), None)
            self.save(self.last, None)
        if not self.last.is_file():  # no step at all (zero epochs): keep the initial model usable
            self.save(self.last, None)

    def _end_epoch(self, stage: int, epoch: int, metrics: MetricsLogger) -> None:
        """Validation when due, and the position at the start of the next epoch."""
        last_epoch = epoch + 1 == _stage_config(self.config, stage).epochs
        if (epoch + 1) % self.config.validate_every == 0 or last_epoch:
            val = validation_log_likelihood(
                self.model, self.source, self.val_idx, self.config, stage, self.seed, self.device
            )
            metrics.log(
                {
                    "kind": "val",
                    "step": self.position.global_step,
                    "stage": stage,
                    "epoch": epoch,
                    "val_log_likelihood": val,
                }
            )
        self.position = Position(stage, epoch + 1, 0, self.position.global_step)

    def _run_epoch(
        self,
        stage: int,
        epoch: int,
        loss_fn,
        optimizer: torch.optim.Optimizer,
        metrics: MetricsLogger,
        bar: TrainingProgress,
        max_steps: int | None,
        stop: _StopRequest,
    ) -> bool:
        """The remaining steps of one epoch; False when stopped early (``max_steps`` or Ctrl-C).
        loss_fn: the model's loss (through DistributedDataParallel with several processes)."""
        config, seed = self.config, self.seed
        for group in optimizer.param_groups:
            group["lr"] = _stage_config(config, stage).learning_rate_at(epoch)
        batches = epoch_batches(self.train_idx, config.batch_size, seed, stage, epoch)
        resuming_here = (self.position.stage, self.position.epoch) == (stage, epoch)
        first_step = self.position.step_in_epoch if resuming_here else 0
        shards = [distributed.shard(b) for b in batches[first_step:]]  # this rank's part of each batch
        for step_in_epoch, (shard, batch) in enumerate(
            zip(shards, self.source.batches([s.indices for s in shards], self.device), strict=True),
            start=first_step,
        ):
            started = time.perf_counter()
            generator = sampling_generator(self.device, seed, _SAMPLING, stage, self.position.global_step)
            result = _train_step(
                loss_fn,
                optimizer,
                batch,
                config,
                stage,
                self.device,
                _sampling_noise(generator, shard),
                shard,
                stop.requested,
            )
            n_images = shard.global_size
            self.position = Position(stage, epoch, step_in_epoch + 1, self.position.global_step + 1)
            step = self.position.global_step
            loss = result.terms["total"]
            if step % config.log_every == 0 or not result.finite:
                metrics.log(
                    {
                        "kind": "train",
                        "step": step,
                        "stage": stage,
                        "epoch": epoch,
                        "loss": loss,
                        "finite": result.finite,
                        **result.terms,
                        "images_per_s": n_images / (time.perf_counter() - started),
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                )
            bar.update(n_images, stage=stage, loss=loss)
            self.nonfinite.record(result.finite, self.position)
            # With several processes the ranks agree on a stop in the step's collective (a signal that
            # arrives later is seen one step later); one process also sees one that came during the step.
            self.stopped = result.stop_requested or (stop.requested and not distributed.active())
            if (max_steps is not None and step >= max_steps) or self.stopped:
                return False
            if step % config.checkpoint_every == 0:
                self.save(self.last, optimizer)
        return True


@dataclass(frozen=True)
class StepResult:
    """finite: the update was made (every rank's loss finite); terms: the loss terms of the global batch
    (means over its images; ``total`` the loss); stop_requested: a stop was asked for on some rank."""

    finite: bool
    terms: dict[str, float]
    stop_requested: bool


def _train_step(
    loss_fn,
    optimizer,
    batch: dict[str, Any],
    config: TrainConfig,
    stage: int,
    device: torch.device,
    generator: torch.Generator | BatchNoiseRows,
    shard: distributed.Shard | None = None,
    stop_requested: bool = False,
) -> StepResult:
    """One Adam step on one batch (with several processes: this rank's ``shard`` of the global batch).

    A non-finite loss would poison Adam's moments, so that update is skipped (and logged by the caller).
    With several processes the rank's loss is scaled by ``shard.weight`` so that DDP's gradient average is
    the gradient of the global batch's loss (see ``rank_loss_weights``).
    """
    with _autocast(device, config):
        out = loss_fn(
            batch["image"], batch["ctf"], generator=generator, **_loss_kwargs(config, stage, batch, shard)
        )
    optimizer.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(out.total))
    terms = {k: float(v) for k, v in out.terms.items()}
    weight = 1.0
    if distributed.active():
        # One small collective a step: all ranks skip a non-finite update together (a rank that skipped
        # backward would leave the others waiting in DDP's gradient all-reduce), all stop together, and the
        # logged terms become the global batch's (each rank's mean weighted by its share of the images).
        weight = shard.weight
        names = sorted(terms)
        _, heavy_share = distributed.subset_share(config.loss.heavy_clash_images, shard)
        # (A rank's "total" has its clash part at the rescaled weight already, so it sums like the others.)
        shares = {k: heavy_share if k == "heavy_clash" else weight / shard.world_size for k in names}
        local = torch.tensor(
            [
                0.0 if finite else 1.0,
                float(stop_requested),
                *(shares[k] * terms[k] if shares[k] > 0 else 0.0 for k in names),
            ],
            dtype=torch.float64,
        )
        summed = distributed.sum_over_ranks(local).tolist()
        finite, stop_requested = summed[0] == 0, summed[1] > 0
        terms = dict(zip(names, summed[2:], strict=True))
    if finite:
        (out.total * weight if weight != 1.0 else out.total).backward()
        optimizer.step()
    return StepResult(finite=finite, terms=terms, stop_requested=stop_requested)


def resolved_config_for_resume(run_dir: str | Path, device: str | None = None) -> TrainConfig:
    """The config a run was started with (config.yaml), optionally on another device."""
    config = load_config(Path(run_dir) / run_folder.CONFIG_FILE)
    return replace(config, device=device) if device is not None else config
