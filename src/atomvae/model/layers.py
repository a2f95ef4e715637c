"""Shared building blocks: the paper's initialisation and a plain MLP.

Paper section 9: truncated-normal initialisation scaled by 1/sqrt(fan_in) (cut at 2 standard
deviations, as haiku's VarianceScaling(1, "fan_in", "truncated_normal") does), zero biases, and
zero-initialised residual updates / delta outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def init_linear(layer: nn.Linear, zero: bool = False) -> nn.Linear:
    """Truncated normal, std 1/sqrt(fan_in), cut at +-2 std; bias zero. ``zero`` zeroes the weight too."""
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            std = 1.0 / math.sqrt(layer.in_features)
            nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def linear(in_features: int, out_features: int, zero: bool = False) -> nn.Linear:
    """An ``nn.Linear`` with the paper's initialisation."""
    return init_linear(nn.Linear(in_features, out_features), zero=zero)


class MLP(nn.Module):
    """Linear layers with ReLU between them (not after the last: haiku's MLP default)."""

    def __init__(self, in_features: int, widths: tuple[int, ...], activate_final: bool = False):
        super().__init__()
        sizes = (in_features, *widths)
        self.layers = nn.ModuleList(linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out_features = sizes[-1]
        self.activate_final = activate_final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last or self.activate_final:
                x = torch.relu(x)
        return x
