"""Sampling noise of a batch of which this process holds only some rows (data-parallel training).

With one process the objective draws its standard-normal samples as ``torch.randn((B, ...), generator)``.
When W processes each hold some rows of that global batch (``atomvae.train.distributed.shard``), every
process draws the noise of the whole global batch from the same generator and keeps its own rows, so image
j of the global batch gets the same noise however many processes share the batch. The draws are a few
numbers per image (latents and pose latents), so drawing W times as many costs nothing measurable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchNoiseRows:
    """generator: the step's generator (as a single process would use it); global_size: images in the
    global batch; rows (b,) long: this process's positions in it."""

    generator: torch.Generator
    global_size: int
    rows: torch.Tensor

    def standard_normal(
        self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """``shape`` = (b, ...) with b = len(rows): rows ``rows`` of a (global_size, ...) draw."""
        if shape[0] != len(self.rows):
            raise ValueError(f"noise for {shape[0]} images requested; this process holds {len(self.rows)}")
        full = torch.randn(self.global_size, *shape[1:], generator=self.generator, device=device, dtype=dtype)
        return full[self.rows.to(full.device)]


def standard_normal(
    shape: tuple[int, ...],
    generator: torch.Generator | BatchNoiseRows | None,
    device: torch.device,
    dtype: torch.dtype,
    shared: bool = False,
) -> torch.Tensor:
    """``torch.randn(shape)`` from a generator, or this process's rows of a global batch's draw; with
    ``shared`` one draw for every image of the global batch (every process draws the same)."""
    if isinstance(generator, BatchNoiseRows):
        if not shared:
            return generator.standard_normal(tuple(shape), device, dtype)
        generator = generator.generator
    return torch.randn(*shape, generator=generator, device=device, dtype=dtype)
