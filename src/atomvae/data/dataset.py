"""Torch Dataset over particles: lazy images, per-particle CTF and poses, Fourier cropping, normalisation.

Per-dataset normalisation (``normalize="background"``, the default): with the background being the
pixels farther than ``mask_radius`` (default 0.4 * box, after cropping) from the box centre,

1. every image has the mean of its own background subtracted (removes per-image offsets such as
   ice thickness or detector gain drift, without touching the particle), then
2. all images are divided by one number, the standard deviation of those mean-subtracted background
   pixels pooled over a random subset of up to ``n_estimate`` images (seeded, so reproducible).

After this the background noise has unit variance, so the model's ``sigma_noise`` is about 1;
``ParticleDataset.noise_sigma`` holds the estimate in the units the dataset yields (see
:func:`estimate_noise_sigma`). ``normalize="none"`` yields the stored values (and a noise_sigma in
those units). Per-image scaling is not offered: it would give every image its own noise level, which
the model's single ``sigma_noise`` cannot describe.

Particles with NaN or Inf anywhere in their image or metadata (CTF parameters, angles, origins) are
found at construction (one pass over the images) and skipped with a warning giving their count
(``n_skipped``), or reported as an error with ``strict=True``: one such particle would make the loss
of every batch it joins non-finite. Images whose background does not vary (constant, blank) are an error.

Loading is batched: a DataLoader with the default batch sampler calls ``__getitems__`` with a whole
batch of indices, which reads the memory maps once per stack file and returns the collated batch.
"""

from __future__ import annotations

import numpy as np
import torch

from atomvae.data import validate
from atomvae.data.metadata import ParticleMetadata
from atomvae.data.stack import ParticleStack
from atomvae.errors import InputError
from atomvae.physics.ctf import CTFParams

SCAN_CHUNK = 1024  # images per chunk in whole-dataset passes


def fourier_crop(images: torch.Tensor, box: int) -> torch.Tensor:
    """Downsample ``images (..., D, D)`` to ``(..., box, box)`` by keeping the central ``box`` frequencies.

    The pixel size grows by ``D / box``. Values are rescaled so the image mean (and the density a
    pixel represents) is unchanged. ``box`` must be even and at most D.
    """
    size = images.shape[-1]
    if box == size:
        return images
    if box > size or box % 2:
        raise ValueError(f"can only Fourier-crop to an even box <= {size}, got {box}")
    # rfft: keep frequency rows 0..box/2-1 and -box/2..-1 and columns 0..box/2 of the half spectrum
    spectrum = torch.fft.rfft2(images)
    half = box // 2
    cropped = torch.cat([spectrum[..., :half, : half + 1], spectrum[..., size - half :, : half + 1]], dim=-2)
    out = torch.fft.irfft2(cropped, s=(box, box))
    return out * ((box * box) / (size * size))


def background_mask(box: int, radius: float) -> torch.Tensor:
    """Boolean ``(box, box)``: pixels whose centre is farther than ``radius`` pixels from pixel ``box//2``."""
    index = torch.arange(box, dtype=torch.float64) - box // 2
    return index[:, None] ** 2 + index[None, :] ** 2 > radius**2


def subtract_background_mean(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images (..., H, W)`` minus the mean of each image's background pixels."""
    # a matrix-vector product with the mask's averaging weights: much faster than boolean indexing
    weights = (mask.to(images.dtype) / mask.sum()).flatten()
    return images - (images.flatten(-2) @ weights)[..., None, None]


def estimate_noise_sigma(images: torch.Tensor, mask: torch.Tensor) -> float:
    """Noise standard deviation from the background: std of the per-image mean-subtracted background pixels.

    images ``(n, H, W)``, mask ``(H, W)`` from :func:`background_mask`. Outside the particle radius an
    image holds noise plus the CTF's delocalised fringes of the particle; with a radius that leaves
    the particle (and most fringes) inside, the pooled std estimates the model's ``sigma_noise``.
    """
    background = subtract_background_mean(images.double(), mask)[..., mask]
    return float(background.std())


def collate(items):
    """Batch per-particle dicts into ``{"image": (B,H,W), "ctf": CTFParams (B,), "index": (B,), ...}``.

    Already-batched dicts (from ``ParticleDataset.__getitems__``) pass through unchanged.
    """
    if isinstance(items, dict):
        return items
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "ctf": CTFParams.stack([it["ctf"] for it in items]),
        "index": torch.as_tensor([int(it["index"]) for it in items]),
    }
    if "rotation" in items[0]:
        batch["rotation"] = torch.stack([it["rotation"] for it in items])
        batch["shift"] = torch.stack([it["shift"] for it in items])
    return batch


class ParticleDataset(torch.utils.data.Dataset):
    """Particles for training: ``dataset[i]`` is ``{"image": (H, W) float32, "ctf": CTFParams (),
    "rotation": (3, 3), "shift": (2,) A (when the metadata has poses), "index": i}``.

    metadata: from ``data.metadata.read_particles``; stack: its ParticleStack (opened from the metadata
    if None). downsample_to: Fourier-crop to this box (``pixel_size`` grows to match). normalize:
    ``"background"`` (module docstring) or ``"none"``. Index i counts the usable particles; ``index``
    in the item is the particle's row in ``metadata`` (so NaN-skipped rows leave gaps).
    """

    def __init__(
        self,
        metadata: ParticleMetadata,
        stack: ParticleStack | None = None,
        downsample_to: int | None = None,
        normalize: str = "background",
        mask_radius: float | None = None,
        n_estimate: int = 1000,
        strict: bool = False,
        seed: int = 0,
    ):
        if normalize not in ("background", "none"):
            raise ValueError(f"normalize must be 'background' or 'none', got {normalize!r}")
        self.metadata = metadata
        self.stack = stack if stack is not None else metadata.open_stack()
        if len(self.stack) != len(metadata):
            raise ValueError(f"stack has {len(self.stack)} particles, metadata {len(metadata)}")
        self.box = int(downsample_to) if downsample_to else metadata.box
        if self.box > metadata.box or self.box % 2:
            source = metadata.source or self.stack.paths[0]
            raise InputError(
                source,
                f"cannot downsample {metadata.box}-pixel images to {self.box} pixels "
                "(need an even size no larger than the images)",
            )
        self.pixel_size = metadata.pixel_size * metadata.box / self.box
        bad_images = self._scan_nonfinite()
        bad_metadata, bad_names = validate.nonfinite_metadata_rows(
            {
                "defocus": torch.stack([metadata.ctf.defocus_u, metadata.ctf.defocus_v], -1).numpy(),
                **{
                    name: getattr(metadata.ctf, name).numpy()
                    for name in (
                        "astigmatism_angle",
                        "voltage",
                        "spherical_aberration",
                        "amplitude_contrast",
                        "phase_shift",
                        "bfactor",
                    )
                },
            },
            None if metadata.rotation is None else metadata.rotation.numpy(),
            None if metadata.shift is None else metadata.shift.numpy(),
        )
        source = (
            self.stack.paths[0]
            if len(self.stack.paths) == 1 and not bad_metadata.size
            else (metadata.source or self.stack.paths[0])
        )
        bad = validate.check_finite_particles(
            source, bad_images, bad_metadata, bad_names, len(metadata), strict
        )
        self.n_skipped = int(bad.size)
        self.rows = np.setdiff1d(np.arange(len(metadata)), bad)
        if len(self.rows) == 0:
            raise InputError(source, "no usable particles (each has NaN or Inf in its image or metadata)")
        self.mask_radius = mask_radius if mask_radius is not None else 0.4 * self.box
        self.mask = background_mask(self.box, self.mask_radius)
        self.normalize = normalize
        self.scale = 1.0  # the dataset-wide divisor of "background" normalisation
        sample_rows = self._estimation_rows(n_estimate, seed)
        sample = self._load(sample_rows)
        self.noise_sigma = estimate_noise_sigma(sample, self.mask)
        # relative to the values' size: constant images leave only rounding noise in the background
        if not (np.isfinite(self.noise_sigma) and self.noise_sigma > 1e-6 * float(sample.abs().max())):
            raise InputError(
                source,
                "the images' background (outside 0.4 box) does not vary: constant or "
                "blank images cannot be normalised or learnt from",
            )
        if normalize == "background":
            self.scale = self.noise_sigma
            self.noise_sigma = estimate_noise_sigma(self._load(sample_rows), self.mask)
        poses = metadata.poses()
        self._poses = None if poses is None else (poses[0].float(), poses[1].float())
        self._ctf = metadata.ctf.to(dtype=torch.float32)

    def _scan_nonfinite(self) -> np.ndarray:
        bad = []
        for start in range(0, len(self.stack), SCAN_CHUNK):
            chunk = self.stack.read(np.arange(start, min(start + SCAN_CHUNK, len(self.stack))))
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            bad.extend((start + np.flatnonzero(~finite)).tolist())
        return np.asarray(bad, dtype=np.int64)

    def _estimation_rows(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(self.rows, size=min(n, len(self.rows)), replace=False))

    def _load(self, rows: np.ndarray) -> torch.Tensor:
        """Images of metadata rows: read, Fourier-cropped, normalised -> ``(n, box, box)`` float32."""
        images = torch.from_numpy(self.stack.read(rows))
        images = fourier_crop(images, self.box)
        if self.normalize == "background":
            images = subtract_background_mean(images, self.mask) / self.scale
        return images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices) -> dict:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        t = torch.as_tensor(rows)
        batch = {"image": self._load(rows), "ctf": self._ctf.index(t), "index": t}
        if self._poses is not None:
            batch["rotation"] = self._poses[0][t]
            batch["shift"] = self._poses[1][t]
        return batch

    def __getitem__(self, i: int) -> dict:
        batch = self.__getitems__([i])
        return {
            key: (value.index(0) if isinstance(value, CTFParams) else value[0])
            for key, value in batch.items()
        }

    def loader(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs
    ) -> torch.utils.data.DataLoader:
        """A DataLoader yielding collated batches (reads each batch in one pass over the memory maps)."""
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate, **kwargs
        )
