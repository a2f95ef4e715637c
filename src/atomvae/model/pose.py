"""Pose posterior q(z_pose | y, z_conf) and the map from pose latents to a global pose (section 9).

x = Linear(LN(h)) + d  (h: encoder representation, d: decoded representation of the conformation
sample; the linear maps h to d's width so the two can be added, as the paper describes)
-> MLP pose_layers x pose_width (ReLU) -> mu (8), softplus sigma (8).

A pose latent z (..., 8) is a global pose: shift = shift_scale * z[:2] (A, in the image plane, x then
y) and rotation = Gram-Schmidt of z[2:5], z[5:8]. Under the N(0, I) prior the rotation is uniform on
SO(3) (Gram-Schmidt of Gaussian vectors is Haar-distributed) and the shift is N(0, shift_scale^2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atomvae.geometry.rotations import gram_schmidt, six_d_to_rotation
from atomvae.model.config import ModelConfig
from atomvae.model.encoder import MIN_SIGMA
from atomvae.model.layers import MLP, linear


class PoseHead(nn.Module):
    """(h (B, F), d (B, ..., D)) -> mu, sigma (B, ..., latent_pose)."""

    def __init__(self, config: ModelConfig, encoder_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(encoder_features)
        self.project = linear(encoder_features, config.decoded_dim)
        self.mlp = MLP(config.decoded_dim, (config.pose_width,) * config.pose_layers, activate_final=True)
        self.mu = linear(config.pose_width, config.latent_pose)
        self.sigma = linear(config.pose_width, config.latent_pose)
        if config.pose_sigma_init is not None:  # softplus(bias) + MIN_SIGMA = pose_sigma_init
            with torch.no_grad():
                target = torch.tensor(max(config.pose_sigma_init - MIN_SIGMA, 1e-12))
                self.sigma.bias.fill_(float(target + torch.log(-torch.expm1(-target))))

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_part = self.project(self.norm(h))  # (B, D)
        image_part = image_part.reshape(image_part.shape[0], *([1] * (d.dim() - 2)), image_part.shape[-1])
        x = self.mlp(image_part + d)
        return self.mu(x), F.softplus(self.sigma(x)) + MIN_SIGMA


def latent_to_pose(z: torch.Tensor, shift_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z (..., 8) -> rotation (..., 3, 3), shift (..., 2) A."""
    return six_d_to_rotation(z[..., 2:8]), shift_scale * z[..., 0:2]


def latent_to_pose_correction(
    z: torch.Tensor,
    given_rotation: torch.Tensor,
    given_shift: torch.Tensor,
    rotation_scale: float,
    shift_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine mode: z (..., 8) is a correction to a given pose; z = 0 gives the given pose exactly.

    rotation = C @ given_rotation with C = Gram-Schmidt(e_x + s z[2:5], e_y + s z[5:8]) (a turn in
    the image frame), shift = given_shift + shift_scale * z[:2]. given_rotation (..., 3, 3) and
    given_shift (..., 2) broadcast against z's leading dims.
    """
    e_x = z.new_tensor([1.0, 0.0, 0.0])
    e_y = z.new_tensor([0.0, 1.0, 0.0])
    correction = gram_schmidt(e_x + rotation_scale * z[..., 2:5], e_y + rotation_scale * z[..., 5:8])
    return correction @ given_rotation, given_shift + shift_scale * z[..., 0:2]
