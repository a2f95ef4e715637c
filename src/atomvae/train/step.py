"""One training step and one validation pass: the batch, the loss settings of a stage, the optimizer.

With several processes (``torchrun``, see ``atomvae.train.distributed``) each rank holds its share of every
global batch; the loss weights and the sampling noise are arranged so that DistributedDataParallel's
gradient average is the gradient of the global batch's loss (see ``rank_loss_weights``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from atomvae.model.batch_noise import BatchNoiseRows
from atomvae.model.config import LossWeights
from atomvae.model.pose_modes import pose_mode
from atomvae.model.vae import LossOutput
from atomvae.physics.ctf import CTFParams
from atomvae.train import distributed
from atomvae.train.config import StageConfig, TrainConfig
from atomvae.train.particle_memory import ParticleMemory
from atomvae.train.particles import ParticleSource
from atomvae.train.seeding import VALIDATION, sampling_generator


@dataclass(frozen=True)
class Batch:
    """Particles as the loop carries them: images (B, H, W) in the dataset's normalised units, ctf (B,),
    index (B,) their rows in the particle file, and the given poses rotation (B, 3, 3) and shift (B, 2) A
    (None when the file has none)."""

    images: torch.Tensor
    ctf: CTFParams
    index: torch.Tensor
    rotation: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    @classmethod
    def from_dict(cls, batch: dict[str, Any]) -> Batch:
        """From a ``ParticleSource`` batch: image, ctf, index, and rotation, shift when the file has poses."""
        return cls(batch["image"], batch["ctf"], batch["index"], batch.get("rotation"), batch.get("shift"))


def stages(config: TrainConfig) -> list[int]:
    """The stages a run trains: 1 (pose path on the base) then 2 (everything); only 2 with fixed poses."""
    # With fixed given poses nothing of the pose path is trained, so the pose-only stage 1 is skipped.
    return [1, 2] if pose_mode(config.pose_mode).uses_pose_head else [2]


def stage_config(config: TrainConfig, stage: int) -> StageConfig:
    return config.stage1 if stage == 1 else config.stage2


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


@dataclass(frozen=True)
class Objective:
    """What one stage optimises on one rank's share of a batch: the settings ``AtomVAE.loss`` takes besides
    the images, CTFs and given poses."""

    stage: int
    n_conf: int
    n_pose: int
    weights: LossWeights
    pose_mode: str
    n_hypotheses: int = 0  # stage 1: extra uniformly drawn pose hypotheses per image (StageConfig)

    @classmethod
    def of(cls, config: TrainConfig, stage: int, shard: distributed.Shard) -> Objective:
        stage_settings = stage_config(config, stage)
        return cls(
            stage=stage,
            n_conf=1 if stage == 1 else stage_settings.n_conf,
            n_pose=stage_settings.n_pose,
            weights=rank_loss_weights(config.loss, shard),
            pose_mode=config.pose_mode,
            n_hypotheses=stage_settings.pose_hypotheses if stage == 1 else 0,
        )

    def loss(
        self,
        loss_fn,
        batch: Batch,
        generator: torch.Generator | BatchNoiseRows,
        memory: ParticleMemory | None = None,
    ) -> LossOutput:
        """``loss_fn`` (``AtomVAE.loss``, or DistributedDataParallel's wrapper of it) on ``batch``; with a
        particle memory, what earlier visits found for the batch's particles is scored again."""
        given: dict[str, Any] = {}
        if pose_mode(self.pose_mode).needs_given_poses:
            given = {"given_rotation": batch.rotation, "given_shift": batch.shift}
        if memory is not None:
            given["remembered"] = memory.rows(batch.index)
        return loss_fn(
            batch.images,
            batch.ctf,
            generator=generator,
            stage=self.stage,
            n_conf=self.n_conf,
            n_pose=self.n_pose,
            weights=self.weights,
            pose_mode=self.pose_mode,
            n_hypotheses=self.n_hypotheses,
            **given,
        )


def sampling_noise(generator: torch.Generator, shard: distributed.Shard) -> torch.Generator | BatchNoiseRows:
    """The generator itself with one process; this rank's rows of the global batch's noise with several."""
    return BatchNoiseRows(generator, shard.global_size, shard.rows) if distributed.active() else generator


def autocast(device: torch.device, config: TrainConfig):
    """bf16 autocast on CUDA when asked; a no-op context on CPU (float32 there, always)."""
    enabled = device.type == "cuda" and config.mixed_precision
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def make_optimizer(parameters, learning_rate: float, device: torch.device) -> torch.optim.Adam:
    """Adam (paper). The fused kernel on CPU and CUDA: with the ~12M encoder parameters the default
    per-tensor Adam costs several times the fused one, more than the renders of a CPU-preset batch (the
    fused Adam's share of a step: BENCHMARKS.md, section "Training step against the renderer")."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(parameters, lr=learning_rate, fused=fused)


@dataclass(frozen=True)
class StepResult:
    """finite: the update was made (every rank's loss finite); terms: the loss terms of the global batch
    (means over its images; ``total`` the loss); stop_requested: a stop was asked for on some rank."""

    finite: bool
    terms: dict[str, float]
    stop_requested: bool


def train_step(
    loss_fn,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: TrainConfig,
    stage: int,
    device: torch.device,
    generator: torch.Generator | BatchNoiseRows,
    shard: distributed.Shard,
    stop_requested: bool = False,
    memory: ParticleMemory | None = None,
) -> StepResult:
    """One Adam step on one batch (with several processes: this rank's ``shard`` of the global batch).

    A non-finite loss would poison Adam's moments, so that update is skipped (and logged by the caller).
    With several processes the rank's loss is scaled by ``shard.weight`` so that DDP's gradient average is
    the gradient of the global batch's loss (see ``rank_loss_weights``). ``memory``: what the loss's searches
    found for each particle (``ParticleMemory``), read for the batch and given what this step found.
    """
    objective = Objective.of(config, stage, shard)
    with autocast(device, config):
        out = objective.loss(loss_fn, batch, generator, memory)
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
        if memory is not None:
            memory.update(batch.index, out.found, shard)
    return StepResult(finite=finite, terms=terms, stop_requested=stop_requested)


@torch.no_grad()
def validation_log_likelihood(
    model,
    source: ParticleSource,
    indices: Sequence[int] | np.ndarray,
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
    generator = sampling_generator(device, seed, VALIDATION, stage)
    shards = [
        distributed.shard(indices[i : i + config.batch_size])
        for i in range(0, len(indices), config.batch_size)
    ]
    sums = torch.zeros(2, dtype=torch.float64)  # sum of log-likelihoods, number of images
    try:
        for shard, batch in zip(shards, source.batches([s.indices for s in shards], device), strict=True):
            with autocast(device, config):
                out = Objective.of(config, stage, shard).loss(
                    model.loss, Batch.from_dict(batch), sampling_noise(generator, shard)
                )
            if shard.n_images:
                values = out.per_image_log_likelihood.double()
                sums += torch.stack([values.sum().cpu(), torch.tensor(float(values.numel()))])
    finally:
        model.train(was_training)
    total, count = distributed.sum_over_ranks(sums).tolist()
    return total / max(count, 1)
