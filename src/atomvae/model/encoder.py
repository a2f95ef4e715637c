"""Image encoder and conformation posterior (paper section 9).

images (B, H, W) -> flatten -> LayerNorm(H*W) -> MLP 2048-1024-512-512 (ReLU) -> h (B, 512);
q(z_conf | y) = N(mu, diag sigma^2) with mu = Linear(LN(h)) and sigma = softplus(Linear(LN(h))).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atomvae.model.config import ModelConfig
from atomvae.model.layers import MLP, linear

# Floor on posterior standard deviations: keeps log(sigma) in the KL finite in float32 when the
# softplus argument is very negative. Far below any sigma that matters (latents are O(1)).
MIN_SIGMA = 1e-5


class ImageEncoder(nn.Module):
    """(B, H, W) images -> h (B, encoder_widths[-1]), the representation shared by both posteriors."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        n_pixels = config.image_size * config.image_size
        self.input_norm = nn.LayerNorm(n_pixels)  # "to get unit scaling" of each image
        # The last layer is linear (haiku MLP default); both heads start with a LayerNorm anyway.
        self.mlp = MLP(n_pixels, tuple(config.encoder_widths))
        self.image_size = config.image_size

    @property
    def out_features(self) -> int:
        return self.mlp.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"encoder expects {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}"
            )
        return self.mlp(self.input_norm(images.flatten(start_dim=-2)))


class ConformationPosterior(nn.Module):
    """h (B, F) -> mu (B, latent_conf), sigma (B, latent_conf) > 0.

    The paper: "we apply layer norm and a linear layer to get mu, and another linear layer with a
    softplus activation to get sigma". We read "another linear layer" as acting on the same
    layer-normed h (one LayerNorm shared by both branches).
    """

    def __init__(self, in_features: int, latent: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.mu = linear(in_features, latent)
        self.sigma = linear(in_features, latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm(h)
        return self.mu(normed), F.softplus(self.sigma(normed)) + MIN_SIGMA
