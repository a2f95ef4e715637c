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

from atomvae.data.dataset import collate
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
    """One particle file opened for the model (``atomvae.data.dataset.ParticleDataset`` underneath).

    Indices count the dataset's usable particles (rows with NaN/Inf pixels are skipped by the dataset);
    a batch's ``index`` is the particle's row in the file. box, pixel_size: of the images the model sees
    (after Fourier cropping); original_box: of the stack; noise_sigma: the dataset's background estimate
    in the normalised units it yields.
    """

    def __init__(self, path: Path, dataset, num_workers: int = 0):
        self.path = path
        self.dataset = dataset
        self.num_workers = num_workers
        self.n_particles = len(dataset)
        self.box = int(dataset.box)
        self.pixel_size = float(dataset.pixel_size)
        self.original_box = int(dataset.metadata.box)
        self.noise_sigma = float(dataset.noise_sigma)
        self.has_poses = dataset.metadata.rotation is not None and dataset.metadata.shift is not None

    def load(self, indices: Sequence[int], device: torch.device) -> dict[str, Any]:
        """One batch: image (B, H, W) float32, ctf CTFParams (B,), rotation (B, 3, 3) and shift (B, 2) A
        when the file has poses, index (B,) rows in the file."""
        return _to_device(self.dataset.__getitems__(list(indices)), device)

    def batches(
        self, index_batches: Sequence[Sequence[int]], device: torch.device
    ) -> Iterator[dict[str, Any]]:
        """Batches in exactly the given order (worker processes only prefetch; they never reorder)."""
        if len(index_batches) == 0:
            return iter(())
        if self.num_workers == 0:
            return (self.load(batch, device) for batch in index_batches)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[list(map(int, b)) for b in index_batches],
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
        )
        return (_to_device(batch, device) for batch in loader)


# What each format calls its poses, for the message when they are needed and absent.
POSE_FIELDS = {
    ".star": "rlnAngleRot, rlnAngleTilt, rlnAnglePsi, rlnOriginXAngst, rlnOriginYAngst",
    ".cs": "alignments3D/pose, alignments3D/shift",
    ".mrcs": "a cryoDRGN poses.pkl beside the stack",
    ".mrc": "a cryoDRGN poses.pkl beside the stack",
}


def open_particles(path: Path, config, need_poses: bool = False) -> ParticleSource:
    """Open a particle file (.star, .cs, ...) for a model of ``config.model.image_size`` pixels.

    InputError when the images are smaller than the model's, or when poses are needed (--poses
    given/refine) and the file has none.
    """
    from atomvae.data.dataset import ParticleDataset
    from atomvae.data.metadata import read_particles

    metadata = read_particles(path)
    image_size = config.model.image_size
    if metadata.box < image_size:
        raise InputError(
            path,
            f"particles are {metadata.box} px; the model needs at least {image_size} px "
            "(set model.image_size in the config to train on smaller images)",
        )
    if need_poses and not metadata.has_poses:
        fields = POSE_FIELDS.get(Path(path).suffix.lower(), POSE_FIELDS[".star"])
        raise InputError(path, f"--poses given/refine needs poses in the file ({fields})")
    dataset = ParticleDataset(metadata, downsample_to=image_size, strict=config.data.strict)
    return ParticleSource(path, dataset, num_workers=config.data.num_workers)
