"""The image likelihood over a band of low frequencies, from the renders' analytic spectra: the conformation
search's scores (``LossWeights.search_resolution``), forward only.

By Parseval, sum_x y r = (1/N) sum_k w_k Re(conj(Y_k) R_k) over the half spectrum (w_k = 2 for the columns
that stand for two frequencies, N pixels). Kept to |k_x|, |k_y| <= 1 / resolution, the score drops the
high frequencies, where at cryo-EM SNR the residual is mostly noise that every candidate shares; the
candidates' spectra come straight from the atoms' analytic transforms (``render.band_spectra``), so
neither the real-space render nor the CTF's FFT pair is computed.

The CTF is a linear convolution (``apply_ctf``: zero-padded to twice the box, then cropped), not a
periodic one: at 2.5 um defocus a 4 A fringe is delocalised by ~120 A, more than the box, and scored as a
multiply on the box's own grid (periodic) the band chose another candidate than the full likelihood for
~9% of the particles at 4 A (``BENCHMARKS.md``). So the renders' spectra are taken on the padded grid and
the image zero-padded the same way: the overlap term sum_box y (C * r) is then exact in the band. One
approximation is left, for ranking only (the training's likelihood is unchanged): the render's norm is
taken over the padded grid, so it counts the part of the CTF's fringes that falls outside the box, which
the cropped model loses (about the same for every candidate of an image); and the sampled image's aliases
are left out.
"""

from __future__ import annotations

import math

import torch

from atomvae.physics.ctf import CTFParams, rfft_ctf
from atomvae.physics.render import band_rows, band_size, band_spectra


class BandLikelihood:
    """log N(y; s C * render, noise_sigma^2) over the band (nats, up to the high frequencies' constant) of
    renders of many candidates per image against ``images``.

    images (B, H, W); ctf (B,) or None; shift (B, 2) A, the pose's in-plane shift of every candidate of an
    image; box px of pixel_size A; resolution A (the band's edge); noise_sigma the pixel noise's sd.
    """

    def __init__(
        self,
        images: torch.Tensor,
        ctf: CTFParams | None,
        shift: torch.Tensor,
        box: int,
        pixel_size: float,
        resolution: float,
        noise_sigma: float,
    ):
        self.box, self.pixel_size, self.resolution = box, pixel_size, resolution
        self.noise_sigma = float(noise_sigma)
        # The CTF's grid (apply_ctf's padding): the images zero-padded at their end, as the renders are.
        self.period = box if ctf is None else 2 * box
        n_band = band_size(self.period, pixel_size, resolution)
        rows = band_rows(self.period, n_band).to(images.device)
        real = images.dtype
        padded = torch.nn.functional.pad(images, (0, self.period - box, 0, self.period - box))
        spectra = torch.fft.rfft2(padded)[..., rows, :n_band]  # (B, 2F-1, F)
        k_y = torch.fft.fftfreq(self.period, d=pixel_size, device=images.device, dtype=real)[rows]
        k_x = torch.fft.rfftfreq(self.period, d=pixel_size, device=images.device, dtype=real)[:n_band]
        # A render at shift t is the unshifted one moved by t: its spectrum times exp(-2 pi i k.t).
        shift_x, shift_y = (shift[:, axis, None, None].to(real) for axis in (0, 1))
        angle = -2 * math.pi * (shift_x * k_x + shift_y * k_y[:, None])
        transfer = torch.polar(torch.ones_like(angle), angle)  # (B, 2F-1, F)
        if ctf is not None:
            transfer = transfer * rfft_ctf(ctf.to(dtype=real), self.period, pixel_size)[..., rows, :n_band]
        self.transfer = transfer[:, None]  # (B, 1, 2F-1, F): the same for every candidate of an image
        self.images = spectra[:, None]
        # Column 0 stands for k_x = 0 alone; the others for +k_x and -k_x (the band stops below Nyquist).
        weights = torch.full((n_band,), 2.0, dtype=real, device=images.device)
        weights[0] = 1.0
        self.weights = weights / self.period**2
        self.image_power = self._inner(self.images, self.images)  # (B, 1)

    def _inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Real-space inner product of two band-limited images from their half spectra: (...)."""
        return ((a.conj() * b).real * self.weights).sum(dim=(-2, -1))

    def overlap_and_power(
        self, coords: torch.Tensor, rotation: torch.Tensor, sigma: float, masses: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sum over the box of image x (C * render) and sum over the padded grid of (C * render)^2, both over
        the band: (B, M) each. Shapes as ``__call__``."""
        renders = (
            band_spectra(
                coords, rotation, self.box, self.pixel_size, sigma, self.resolution, masses, self.period
            )
            * self.transfer
        )
        return self._inner(renders, self.images), self._inner(renders, renders)

    def __call__(
        self,
        coords: torch.Tensor,
        rotation: torch.Tensor,
        sigma: float,
        masses: torch.Tensor | None,
        amplitude: torch.Tensor | None,
    ) -> torch.Tensor:
        """Scores (B, M) nats of coords (B, M, A, 3) A at rotation (B, 1, 3, 3), atoms of width sigma A
        and masses (A,) (default 1). amplitude None: each render's least-squares scale onto its image,
        clamped at 0 (``AtomVAE._scaled``'s per-image amplitude); else that fixed scale."""
        overlap, power = self.overlap_and_power(coords, rotation, sigma, masses)
        if amplitude is None:
            scale = (overlap / power.clamp_min(1e-20)).clamp_min(0.0)
        else:
            scale = amplitude.to(overlap.dtype).expand_as(overlap)
        squared = self.image_power - 2 * scale * overlap + scale.square() * power
        return -0.5 * squared / self.noise_sigma**2
