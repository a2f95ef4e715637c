"""Every random stream of training, derived from the run seed so that a resumed run draws the same numbers.

The data order of an epoch is a permutation drawn from (seed, stage, epoch), the sampling noise of a step
comes from a generator seeded with (seed, stage, global step), validation and the amplitude calibration
have streams of their own, and the train/validation split is fixed by the run's seed (shared by all
seeds so their held-out log-likelihoods compare on the same images). A checkpoint therefore needs only
the position (stage, epoch, step within the epoch) besides the model, optimizer and global RNG states.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream tags mixed into the seeds so the data order, the sampling noise and validation never share draws.
ORDER, SAMPLING, VALIDATION, SPLIT, CALIBRATION, PARTICLE_MEMORY = 1, 2, 3, 4, 5, 6


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
    order = np.random.default_rng(derived_seed(seed, SPLIT)).permutation(n_particles)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def epoch_batches(
    train_indices: np.ndarray, batch_size: int, seed: int, stage: int, epoch: int
) -> list[list[int]]:
    """The batches of one epoch: a permutation of the training indices from (seed, stage, epoch), cut into
    ``batch_size`` pieces (the last may be smaller)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, ORDER, stage, epoch))
    order = torch.randperm(len(train_indices), generator=generator).numpy()
    shuffled = np.asarray(train_indices)[order]
    return [shuffled[i : i + batch_size].tolist() for i in range(0, len(shuffled), batch_size)]


def sampling_generator(device: torch.device, *parts: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``derived_seed(*parts)`` (e.g. seed, SAMPLING, stage, step)."""
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))
