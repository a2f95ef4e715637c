"""One seed's training state: its model (fresh, from ``--init``, or from its last checkpoint), where
training stands, and its checkpoints in RUN/seed_<seed>/checkpoints/."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomvae.errors import InputError
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
from atomvae.train.config import TrainConfig
from atomvae.train.particle_memory import ParticleMemory
from atomvae.train.particles import ParticleSource
from atomvae.train.seeding import CALIBRATION, PARTICLE_MEMORY, derived_seed, sampling_generator
from atomvae.train.step import Batch, stage_config, stages


@dataclass(frozen=True)
class SeedResult:
    seed: int
    checkpoint: Path  # the seed's latest checkpoint
    position: Position
    val_log_likelihood: float  # mean held-out log-likelihood per image (nats) at the end of training


class SeedRun:
    """The model of one seed and where its training stands (``position``, after the last completed step).

    Resumed from RUN/seed_<seed>/checkpoints/last.pt when asked and present (model, RNG states, and the
    stage's Adam moments for ``restore_optimizer``); otherwise initialised from ``derived_seed(seed)``, then
    from another run's weights (``config.init_from``) or with the image amplitude calibrated on data.
    """

    def __init__(
        self,
        config: TrainConfig,
        seed: int,
        source: ParticleSource,
        structure,
        info: dict[str, Any],
        train_idx: np.ndarray,
        run_dir: Path,
        device: torch.device,
        resume: bool,
    ):
        self.config, self.seed, self.device = config, seed, device
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
        self.position: Position = (
            self.payload["position"] if self.payload else Position(stage=stages(config)[0])
        )

        torch.manual_seed(derived_seed(seed))  # parameter initialisation (and anything on the global RNG)
        self.model = run_folder.build_model(config, structure.topology, structure.coords, info).to(device)
        if self.payload is not None:
            self.model.load_state_dict(self.payload["model"])
            restore_rng_state(self.payload["rng"])
        elif config.init_from is not None:
            self._load_initial_weights(Path(config.init_from))
        else:
            self._initialise_amplitude(source, train_idx)
        # What the searches inside the loss found per particle, kept between visits (``ParticleMemory``).
        search_poses = (
            1 in stages(config)
            and config.loss.hypothesis_pull > 0
            and pose_mode(config.pose_mode).global_hypotheses
        )
        search_latents = config.loss.search_candidates > 0 and config.loss.search_memory
        self.memory = ParticleMemory.for_training(
            source.n_particles,
            poses=search_poses,
            latent_dim=config.model.latent_conf if search_latents else None,
            device=device,
            generator=torch.Generator().manual_seed(derived_seed(seed, PARTICLE_MEMORY)),
        )
        if self.memory is not None and self.payload is not None and "particle_memory" in self.payload:
            self.memory.load_state_dict(self.payload["particle_memory"])
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

    def _initialise_amplitude(self, source: ParticleSource, train_idx: np.ndarray) -> None:
        indices = train_idx[: self.config.data.n_calibration_images].tolist()
        calibration = Batch.from_dict(source.load(indices, self.device))
        given = pose_mode(self.config.pose_mode).needs_given_poses
        self.model.initialise_amplitude(
            calibration.images,
            calibration.ctf,
            rotation=calibration.rotation if given else None,
            shift=calibration.shift if given else None,
            generator=sampling_generator(self.device, self.seed, CALIBRATION),
        )

    def restore_optimizer(self, optimizer: torch.optim.Optimizer, stage: int) -> None:
        """The resumed checkpoint's Adam moments when it was written in ``stage`` (mid-stage, or at the end of
        the final stage, reopened for more epochs). Other stage-end checkpoints carry none: the next stage
        starts a fresh Adam on its own parameter set."""
        payload = self.payload
        if payload and payload["position"].stage == stage and payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])

    def images_done(self, n_train: int) -> int:
        """Images already processed before ``position`` (the progress bar's starting point)."""
        done = 0
        for stage in stages(self.config):
            if stage < self.position.stage:
                done += n_train * stage_config(self.config, stage).epochs
            elif stage == self.position.stage:
                in_epoch = min(n_train, self.position.step_in_epoch * self.config.batch_size)
                done += n_train * self.position.epoch + in_epoch
        return done

    def save(self, path: Path, optimizer: torch.optim.Optimizer | None) -> None:
        """A checkpoint at ``position``; rank 0 writes, the others hold the same model and optimizer state."""
        if not distributed.is_main():
            return
        save_checkpoint(
            path,
            model=self.model,
            optimizer=optimizer,
            position=self.position,
            model_init=self.model_init,
            seed=self.seed,
            particle_memory=None if self.memory is None else self.memory.state_dict(),
        )

    def stage_checkpoint(self, stage: int) -> Path:
        """Where the snapshot at the end of ``stage`` goes."""
        return self.ckpt_dir / stage_checkpoint_name(stage)
