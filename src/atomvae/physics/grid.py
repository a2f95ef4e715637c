"""The pixel grid shared by the renderer and the simulator.

A box of ``D`` pixels of size ``p`` A has pixel centres at ``(i - D//2) * p`` for ``i = 0..D-1`` on
both image axes (RELION: the particle centre is pixel ``D//2``). Image axis 0 is y, axis 1 is x.
"""

from __future__ import annotations

import torch


def pixel_centers(
    box: int,
    pixel_size: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Pixel-centre positions along one image axis: ``(box,)`` in A, ``(i - box//2) * pixel_size``."""
    if box < 1:
        raise ValueError(f"box must be a positive number of pixels, got {box}")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be positive (A), got {pixel_size}")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    index = torch.arange(box, device=device, dtype=dtype)
    return (index - (box // 2)) * pixel_size
