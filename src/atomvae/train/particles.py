"""Particles as training and inference see them: batches of normalised images, CTFs and given poses.

A thin layer over ``atomvae.data`` (which owns reading, downsampling and normalisation): it fixes the
image size to the model's, checks that given poses exist when they are needed, and yields batches in an
order the caller chooses (the training loop's resumable order), optionally from worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from atomvae.errors import InputError


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=non_blocking)
        elif hasattr(value, "to"):  # CTFParams
            out[key] = value.to(device)
        else:
            out[key] = value
    return out


class ParticleSource:
    """One particle file opened for the model.

    box, pixel_size: of the images the model sees (after downsampling); original_box: of the stack.
    """

    def __init__(self, path: Path, metadata, dataset, collate, noise_estimator, num_workers: int = 0):
        self.path = path
        self.metadata = metadata
        self.dataset = dataset
        self._collate = collate
        self._noise_estimator = noise_estimator
        self.num_workers = num_workers
        self.n_particles = len(dataset)
        self.box = int(dataset.box)
        self.pixel_size = float(dataset.pixel_size)
        self.original_box = int(metadata.box)
        self.has_poses = metadata.rotation is not None and metadata.shift is not None

    def load(self, indices: Sequence[int], device: torch.device) -> dict[str, Any]:
        """One batch: image (B, H, W) float32, ctf CTFParams (B,), rotation (B, 3, 3), shift (B, 2) A when
        the file has poses, index (B,)."""
        return _to_device(self._collate([self.dataset[int(i)] for i in indices]), device)

    def batches(self, index_batches: Sequence[Sequence[int]], device: torch.device
                ) -> Iterator[dict[str, Any]]:
        """Batches in exactly the given order (worker processes only prefetch; they never reorder)."""
        if not index_batches:
            return iter(())
        if self.num_workers == 0:
            return (self.load(batch, device) for batch in index_batches)
        loader = DataLoader(self.dataset, batch_sampler=[list(map(int, b)) for b in index_batches],
                            collate_fn=self._collate, num_workers=self.num_workers,
                            pin_memory=device.type == "cuda")
        return (_to_device(batch, device) for batch in loader)

    def estimate_noise_sigma(self, indices: Sequence[int]) -> float:
        """Pixel noise sigma of normalised images, from the background outside the particle's radius."""
        return float(self._noise_estimator(self.dataset, indices))


def open_particles(path: Path, config, need_poses: bool = False) -> ParticleSource:
    """Open a particle file for a model of ``config.model.image_size`` pixels.

    InputError when poses are needed (--poses given/refine) and the file has none.
    """
    from atomvae.data.dataset import ParticleDataset, collate, estimate_noise_sigma
    from atomvae.data.metadata import read_particles

    metadata = read_particles(path)
    image_size = config.model.image_size
    if metadata.box < image_size:
        raise InputError(path, f"particles are {metadata.box} px; the model needs at least {image_size} px "
                               "(set model.image_size in the config to train on smaller images)")
    dataset = ParticleDataset(metadata, downsample_to=image_size if metadata.box != image_size else None)
    if need_poses and (metadata.rotation is None or metadata.shift is None):
        raise InputError(path, "--poses given/refine needs poses in the file (rlnAngleRot, rlnAngleTilt, "
                               "rlnAnglePsi, rlnOriginXAngst, rlnOriginYAngst)")
    return ParticleSource(path, metadata, dataset, collate, estimate_noise_sigma,
                          num_workers=config.data.num_workers)
