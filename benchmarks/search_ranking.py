"""Does a cheaper score pick the conformation search's candidate that the full likelihood picks? (issue 12)

On a trained run and its particles (with poses): each particle's 17 candidates of a first search round
(the encoder's mean, 4 latents near it, 12 prior draws shared by all), scored by the full likelihood
(`AtomVAE.render_images`: real-space render, `apply_ctf`'s padded CTF) and by cheaper scores: the whole
image with a periodic CTF, and bands of low frequencies (`model.band_likelihood`, the CTF on the padded
grid as `loss.search_resolution` scores; and the same band of the exact render's spectrum). For each:
how often it picks the full likelihood's best candidate, and the full likelihood lost by its pick (nats).

    .venv/bin/python benchmarks/search_ranking.py RUN STAR [--particles 256] [--resolutions 12 8 6 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from atomvae.data.dataset import ParticleDataset
from atomvae.data.metadata import read_particles
from atomvae.model.band_likelihood import BandLikelihood
from atomvae.model.losses import gaussian_log_likelihood
from atomvae.physics.ctf import rfft_ctf
from atomvae.physics.render import band_rows, band_size, render_projections
from atomvae.train.run import load_run
from command_line import repository_command


def _inner(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Real-space inner product of two band-limited images from their half spectra (band_likelihood)."""
    return ((a.conj() * b).real * weights).sum((-2, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("particles")
    parser.add_argument("--particles", dest="n_particles", type=int, default=256)
    parser.add_argument("--resolutions", type=float, nargs="+", default=[12.0, 8.0, 6.0, 4.0])
    args = parser.parse_args()
    print(repository_command())
    model = load_run(args.run).model
    dataset = ParticleDataset(read_particles(args.particles))
    rows = np.linspace(0, len(dataset) - 1, min(args.n_particles, len(dataset))).astype(int)
    batch = dataset.__getitems__(rows)
    if "rotation" not in batch:
        raise SystemExit(f"{args.particles}: the particles carry no poses")
    images, ctf = batch["image"], batch["ctf"]
    rotation, shift = batch["rotation"][:, None], batch["shift"][:, None]
    generator = torch.Generator().manual_seed(0)
    box, pixel, mass = model.box, model.pixel_size, model.render_mass
    sigma = float(torch.as_tensor(model.render_sigma).detach())
    with torch.no_grad():
        mean, _ = model.conf_posterior(model.encoder(model.encoder_input(images, ctf)))
        n, latent = mean.shape
        near = mean[:, None] + 0.5 * torch.randn(n, 4, latent, generator=generator)
        prior = torch.randn(1, 12, latent, generator=generator).expand(n, 12, latent)
        candidates = torch.cat([mean[:, None], near, prior], dim=1)
        coords = model.decoder(candidates, "render")
        log_prior = -0.5 * candidates.square().sum(-1)
        target = images[:, None]
        renders = model._unit_renders(coords, rotation, shift, ctf)
        full = gaussian_log_likelihood(target, model._scaled(renders, target), model.noise_sigma) + log_prior
        print(
            f"{n} particles x {candidates.shape[1]} candidates; defocus {float(ctf.defocus_u.min()):.0f}-"
            f"{float(ctf.defocus_u.max()):.0f} A; box {box} px of {pixel} A; render sigma {sigma:.2f} A"
        )

        def report(name: str, scores: torch.Tensor) -> None:
            pick = scores.argmax(dim=1, keepdim=True)
            lost = full.max(dim=1).values - full.gather(1, pick)[:, 0]
            same = (pick[:, 0] == full.argmax(dim=1)).double().mean()
            print(f"{name:44s} same best {100 * same:5.1f}%   nats lost by its pick: mean {lost.mean():.2f}")

        unit = render_projections(coords, rotation, shift, box, pixel, sigma, mass)
        periodic = torch.fft.irfft2(torch.fft.rfft2(unit) * rfft_ctf(ctf, box, pixel)[:, None], s=(box, box))
        report(
            "whole image, CTF periodic",
            gaussian_log_likelihood(target, model._scaled(periodic, target), model.noise_sigma) + log_prior,
        )
        exact_spectra = torch.fft.rfft2(renders)
        image_spectra = torch.fft.rfft2(images)[:, None]
        for resolution in args.resolutions:
            band = BandLikelihood(images, ctf, shift[:, 0], box, pixel, resolution, float(model.noise_sigma))
            report(
                f"band {resolution:g} A, CTF padded (BandLikelihood)",
                band(coords, rotation, sigma, mass, None) + log_prior,
            )
            # The same band of the exact (padded, cropped) render: what truncating the band alone costs.
            n_band = band_size(box, pixel, resolution)
            index = band_rows(box, n_band)
            weights = torch.full((n_band,), 2.0)
            weights[0] = 1.0
            weights = weights / box**2

            model_band, data_band = exact_spectra[..., index, :n_band], image_spectra[..., index, :n_band]
            overlap, power = _inner(model_band, data_band, weights), _inner(model_band, model_band, weights)
            scale = (overlap / power).clamp_min(0.0)
            squared = _inner(data_band, data_band, weights) - 2 * scale * overlap + scale.square() * power
            report(
                f"band {resolution:g} A of the exact render",
                -0.5 * squared / float(model.noise_sigma) ** 2 + log_prior,
            )


if __name__ == "__main__":
    main()
