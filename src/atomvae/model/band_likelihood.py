"""The image likelihood over a band of low frequencies, from the renders' analytic spectra: the conformation
search's scores (``LossWeights.search_resolution``), forward only.

By Parseval, sum_x (y - s r)^2 = (1/N) sum_k w_k |Y_k - s C_k R_k|^2 over the half spectrum (w_k = 2 for
the columns that stand for two frequencies, N = H W). Kept to |k_x|, |k_y| <= 1 / resolution, the sum
drops the high frequencies, where at cryo-EM SNR the residual is mostly noise that every candidate shares;
the candidates' spectra come straight from the atoms' analytic transforms (``render.band_spectra``), so
neither the real-space render nor the CTF's FFT pair is computed. Two approximations against
``AtomVAE.render_images``: the CTF is applied as a multiply (periodic, where the training's is a padded
linear convolution cropped to the box) and the sampled image's aliases are left out; both matter only for
ranking candidates, never for the training's likelihood.
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
        n_band = band_size(box, pixel_size, resolution)
        rows = band_rows(box, n_band).to(images.device)
        real = images.dtype
        spectra = torch.fft.rfft2(images)[..., rows, :n_band]  # (B, 2F-1, F)
        k_y = torch.fft.fftfreq(box, d=pixel_size, device=images.device, dtype=real)[rows]
        k_x = torch.fft.rfftfreq(box, d=pixel_size, device=images.device, dtype=real)[:n_band]
        # A render at shift t is the unshifted one moved by t: its spectrum times exp(-2 pi i k.t).
        shift_x, shift_y = (shift[:, axis, None, None].to(real) for axis in (0, 1))
        angle = -2 * math.pi * (shift_x * k_x + shift_y * k_y[:, None])
        transfer = torch.polar(torch.ones_like(angle), angle)  # (B, 2F-1, F)
        if ctf is not None:
            transfer = transfer * rfft_ctf(ctf.to(dtype=real), box, pixel_size)[..., rows, :n_band]
        self.transfer = transfer[:, None]  # (B, 1, 2F-1, F): the same for every candidate of an image
        self.images = spectra[:, None]
        # Column 0 stands for k_x = 0 alone; the others for +k_x and -k_x (the band stops below Nyquist).
        weights = torch.full((n_band,), 2.0, dtype=real, device=images.device)
        weights[0] = 1.0
        self.weights = weights / box**2
        self.image_power = self._inner(self.images, self.images)  # (B, 1)

    def _inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Real-space inner product of two band-limited images from their half spectra: (...)."""
        return ((a.conj() * b).real * self.weights).sum(dim=(-2, -1))

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
        renders = (
            band_spectra(coords, rotation, self.box, self.pixel_size, sigma, self.resolution, masses)
            * self.transfer
        )
        overlap = self._inner(renders, self.images)  # (B, M)
        power = self._inner(renders, renders)
        if amplitude is None:
            scale = (overlap / power.clamp_min(1e-20)).clamp_min(0.0)
        else:
            scale = amplitude.to(overlap.dtype).expand_as(overlap)
        squared = self.image_power - 2 * scale * overlap + scale.square() * power
        return -0.5 * squared / self.noise_sigma**2
