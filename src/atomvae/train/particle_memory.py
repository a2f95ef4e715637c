"""What the searches of training found for each particle, kept between its visits (not in the paper).

Two searches run inside the loss, per image and step, and each would otherwise start afresh at every visit:

- **poses**, stage 1 with the hypothesis pull (``LossWeights.hypothesis_pull``): the pose head's mean, its
  posterior samples and ``StageConfig.pose_hypotheses`` rotations drawn uniformly are scored, and the head is
  pulled towards the best. Drawn afresh, the uniform draws almost never come within a few degrees of the
  truth (a 10-degree cap is 0.03% of SO(3)), and the head is pulled towards a different winner each time.
  Kept (``rotation``, ``shift``) and fed back with ``LossWeights.memory_near`` perturbations of it
  (``AtomVAE.hypothesis_pull``), it becomes a stochastic search per particle that keeps what it found, which
  the head regresses onto as onto fixed targets.
- **conformations**, stage 2 with ``LossWeights.search_candidates`` > 0 and ``search_memory``: each image's
  best latent (``latent``) is scored again beside the encoder's mean and the fresh candidates
  (``AtomVAE.search_conformations``), so fewer fresh candidates per visit find as good a latent.

Rows are those of the particle file (``Batch.index``). Everything found is rescored before it is used, so a
remembered entry that the training has made stale is only a poor candidate, never a wrong answer. Measured:
BENCHMARKS.md, "Amortised stage 1 on a tiny problem" and "Training step with the conformation search".
"""

from __future__ import annotations

import math
from typing import Any

import torch

from atomvae.geometry.rotations import random_rotations
from atomvae.train import distributed


class ParticleMemory:
    """Named per-particle tensors, each (N, ...) over the N rows of the particle file."""

    def __init__(self, fields: dict[str, torch.Tensor]):
        if len({t.shape[0] for t in fields.values()}) != 1:
            raise ValueError("every field of a particle memory needs one row per particle")
        self.fields = dict(fields)

    @classmethod
    def for_training(
        cls,
        n_particles: int,
        poses: bool,
        latent_dim: int | None,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> ParticleMemory | None:
        """The memory a run needs: poses (rotation (N, 3, 3) uniformly random from ``generator``, shift
        (N, 2) A zero) when stage 1 searches them, latents (N, latent_dim), NaN until found, when the
        conformation search remembers; None when neither."""
        fields = {}
        if poses:
            fields["rotation"] = random_rotations(n_particles, generator=generator).to(device)
            fields["shift"] = torch.zeros(n_particles, 2, device=device)
        if latent_dim is not None:  # NaN: not visited yet (the search then scores the encoder's mean twice)
            fields["latent"] = torch.full((n_particles, latent_dim), math.nan, device=device)
        return cls(fields) if fields else None

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every field's rows ``index`` (B,) of the particle file."""
        return {name: t[index.to(t.device)] for name, t in self.fields.items()}

    def update(self, index: torch.Tensor, found: dict[str, torch.Tensor], shard: distributed.Shard) -> None:
        """Keep ``found`` (name -> (b, ...), fields of this memory) for rows ``index`` (b,). With several
        processes each rank sends its share, so every rank's memory stays the whole, identical memory."""
        names = [name for name in self.fields if name in found]
        if not names:
            return
        values = [found[name].detach().flatten(1) for name in names]
        widths = [v.shape[1] for v in values]
        if distributed.active():
            # (global batch, 2 + widths): sent, particle row, the values; an empty share sends nothing
            packed = torch.zeros(shard.global_size, 2 + sum(widths), dtype=torch.float64)
            if shard.n_images:
                rows = shard.rows.cpu()
                packed[rows, 0] = 1.0
                packed[rows, 1] = index.double().cpu()
                packed[rows, 2:] = torch.cat([v.double().cpu() for v in values], dim=1)
            summed = distributed.sum_over_ranks(packed)
            summed = summed[summed[:, 0] > 0.5]
            index = summed[:, 1].round().long()
            values = list(summed[:, 2:].split(widths, dim=1))
        for name, value in zip(names, values, strict=True):
            target = self.fields[name]
            rows_here = index.to(target.device)
            target[rows_here] = value.to(target.device, target.dtype).reshape(-1, *target.shape[1:])

    def state_dict(self) -> dict[str, Any]:
        return {name: t.cpu() for name, t in self.fields.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Fields from a checkpoint; those the checkpoint lacks keep their start (a run resumed with a
        memory its checkpoint did not have starts that memory afresh)."""
        for name, target in self.fields.items():
            if name not in state:
                continue
            if state[name].shape != target.shape:
                saved, here = tuple(state[name].shape), tuple(target.shape)
                raise ValueError(f"particle memory {name!r} of shape {saved}; this run's is {here}")
            self.fields[name] = state[name].to(target.device, target.dtype)
