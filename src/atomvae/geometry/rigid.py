"""Rigid transforms x -> R @ x + t as one small immutable object, batched with broadcasting."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Rigid:
    """A batch of rigid transforms: ``rot`` (..., 3, 3) acting on column vectors, ``trans`` (..., 3) in A.

    ``a @ b`` is the composition "first b, then a"; ``apply(points)`` maps points (..., 3) (broadcast
    against the batch shape) by ``R @ x + t``.
    """

    rot: torch.Tensor
    trans: torch.Tensor

    def __post_init__(self):
        if self.rot.shape[-2:] != (3, 3) or self.trans.shape[-1:] != (3,):
            raise ValueError(
                f"Rigid needs rot (...,3,3) and trans (...,3), got {tuple(self.rot.shape)} "
                f"and {tuple(self.trans.shape)}"
            )

    @classmethod
    def identity(
        cls,
        shape: tuple[int, ...] = (),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Rigid:
        rot = torch.eye(3, dtype=dtype, device=device).expand(*shape, 3, 3).clone()
        return cls(rot, torch.zeros(*shape, 3, dtype=dtype, device=device))

    @property
    def shape(self) -> torch.Size:
        return torch.broadcast_shapes(self.rot.shape[:-2], self.trans.shape[:-1])

    def compose(self, other: Rigid) -> Rigid:
        """self o other: x -> R_s (R_o x + t_o) + t_s."""
        rot = self.rot @ other.rot
        trans = (self.rot @ other.trans.unsqueeze(-1)).squeeze(-1) + self.trans
        return Rigid(rot, trans)

    def __matmul__(self, other: Rigid) -> Rigid:
        return self.compose(other)

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """points (..., 3) -> R @ p + t (..., 3)."""
        return (self.rot @ points.unsqueeze(-1)).squeeze(-1) + self.trans

    def apply_inverse(self, points: torch.Tensor) -> torch.Tensor:
        """points (..., 3) -> R^T (p - t)."""
        return (self.rot.transpose(-1, -2) @ (points - self.trans).unsqueeze(-1)).squeeze(-1)

    def inverse(self) -> Rigid:
        rot_t = self.rot.transpose(-1, -2)
        return Rigid(rot_t, -(rot_t @ self.trans.unsqueeze(-1)).squeeze(-1))

    def to(self, *args, **kwargs) -> Rigid:
        return Rigid(self.rot.to(*args, **kwargs), self.trans.to(*args, **kwargs))

    def __getitem__(self, index) -> Rigid:
        shape = self.shape
        return Rigid(self.rot.expand(*shape, 3, 3)[index], self.trans.expand(*shape, 3)[index])
