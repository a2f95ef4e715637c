"""Simulator noise models: additive Gaussian noise at a given SNR, and electron shot noise at a given dose.

Both act on noise-free detector images in radians from ``physics.scattering.phase_contrast_images``
(``image = CTF (*) phase``, positive density at low frequency) and return images in the same units
and polarity, so that a noisy image is ``clean + noise`` with zero-mean noise in either model.

- SNR: ``snr = signal variance / noise variance``, where the signal variance of an image is the
  variance of its noise-free pixel values over the whole box. :func:`snr_noise_sigma` turns a
  requested SNR into one noise standard deviation for a whole data set (the mean signal variance over
  the images it is given, divided by the SNR); one sigma for all images matches the model, whose
  likelihood uses a single ``sigma_noise``. :func:`measured_snr` is the same ratio measured back.
- Dose: a weak-phase image has intensity ``1 - 2 * image`` relative to the empty beam (RELION's
  ``ctf(0) = +Q``: protein is dark at low frequency on the detector). With ``dose`` e/A^2 on pixels of
  ``p`` A, the expected count of a pixel is ``n = dose * p^2 * (1 - 2 * image)``; counts are Poisson,
  and the returned image ``(1 - counts / (dose * p^2)) / 2`` is an unbiased estimate of ``image`` with
  the particle bright again (contrast inverted as RELION stores particles). Its noise variance is
  ``(1 - 2 * image) / (4 * dose * p^2)``, about ``1 / (4 * dose * p^2)``.
"""

from __future__ import annotations

import torch


def signal_variance(clean: torch.Tensor) -> torch.Tensor:
    """Per-image variance over the box of noise-free images ``(..., H, W)`` -> ``(...)``."""
    return clean.flatten(-2).var(dim=-1, unbiased=False)


def snr_noise_sigma(clean: torch.Tensor, snr: float) -> float:
    """Noise standard deviation giving ``snr`` on average over the images ``clean (B, H, W)``.

    ``sigma^2 = mean_b var(clean_b) / snr`` (set average, see the module docstring).
    """
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    return float(torch.sqrt(signal_variance(clean).double().mean() / snr))


def add_gaussian_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """``clean + N(0, sigma^2)`` per pixel, drawn from ``generator``."""
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
    return clean + sigma * noise


def shot_noise(
    clean: torch.Tensor, dose: float, pixel_size: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Poisson electron counts at ``dose`` e/A^2, returned as a noisy image in the units of ``clean``.

    clean ``(..., H, W)`` radians. Intensities below zero (a phase too strong for the weak-phase
    approximation) are clipped at zero expected counts.
    """
    if not dose > 0:
        raise ValueError(f"dose must be positive (e/A^2), got {dose}")
    electrons_per_pixel = dose * pixel_size**2
    rate = (electrons_per_pixel * (1.0 - 2.0 * clean.double())).clamp_min(0.0)
    counts = torch.poisson(rate, generator=generator)
    return ((1.0 - counts / electrons_per_pixel) / 2.0).to(clean.dtype)


def shot_noise_sigma(dose: float, pixel_size: float) -> float:
    """Noise standard deviation of :func:`shot_noise` for a weak image: ``1 / (2 sqrt(dose * p^2))``."""
    return 0.5 / (dose * pixel_size**2) ** 0.5


def measured_snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Set-average SNR measured back: ``mean_b var(clean_b) / mean_b var(noisy_b - clean_b)``."""
    return float(signal_variance(clean).double().mean() / signal_variance(noisy - clean).double().mean())
