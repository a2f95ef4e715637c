"""The three pose modes, one object each: where a particle's pose comes from.

- ``inferred``: the amortised pose head (paper section 9) infers each pose from the image; the pose
  latent z (8) is a global pose (``pose.latent_to_pose``), its prior N(0, I).
- ``given``: the particle file's poses are used as they are; nothing of the pose path is trained.
- ``refine``: the particle file's poses start a local refinement; the pose latent is a correction to
  them (``pose.latent_to_pose_correction``; z = 0 is the given pose).

The loss (``AtomVAE.loss``), ``AtomVAE.encode``, the training loop and ``encode_particles`` ask this
object what to do instead of branching on the mode's name. Rotations (..., 3, 3) act on model-frame
coordinates about the model's centre; shifts (..., 2) are in A in the image plane (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atomvae.model.batch_noise import BatchNoiseRows, standard_normal
from atomvae.model.config import POSE_MODES, ModelConfig
from atomvae.model.losses import kl_diagonal_normal
from atomvae.model.pose import latent_to_pose, latent_to_pose_correction


@dataclass(frozen=True)
class PoseMode:
    """How poses are obtained in one pose mode (see the module docstring).

    name: one of ``POSE_MODES``; needs_given_poses: the particle file must carry poses;
    uses_pose_head: the pose head's posterior is sampled (and trained); the training loop runs stage 1
    (pose path on the fixed base) only for such modes; global_hypotheses: stage 1 may score rotations drawn
    uniformly on SO(3) as pose hypotheses (``hypothesis_rotations``; a global search only where the pose
    latent is a global pose).
    """

    name: str
    needs_given_poses: bool
    uses_pose_head: bool
    global_hypotheses: bool = False

    def check_given(self, given_rotation: torch.Tensor | None, given_shift: torch.Tensor | None) -> None:
        if self.needs_given_poses and (given_rotation is None or given_shift is None):
            raise ValueError(f"pose_mode {self.name!r} needs given_rotation and given_shift")

    def route_note(self, file_has_poses: bool) -> str | None:
        """One line for the user on where poses come from when the particle file's poses are not used
        (None when they are)."""
        if self.needs_given_poses:
            return None
        if file_has_poses:
            return (
                "the file's poses are not used: --poses inferred learns every pose with the amortised "
                "pose head (--poses given or refine uses them)"
            )
        return (
            "the file has no poses: --poses inferred learns them with the amortised pose head (paper "
            "stage 1); for the searched route (projection matching against references fitted to the "
            "particles) run `atomvae search-poses --route` first and train on its output with --poses given"
        )

    def latent_to_pose(
        self,
        z: torch.Tensor,
        config: ModelConfig,
        given_rotation: torch.Tensor | None,
        given_shift: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose latents z (B, ..., 8) -> rotation (B, ..., 3, 3), shift (B, ..., 2) A. given_rotation
        (B, 3, 3) and given_shift (B, 2) A (refine only) broadcast over z's middle dims."""
        if self.name == "inferred":
            return latent_to_pose(z, config.shift_scale)
        if self.name == "refine":
            given_rotation, given_shift = self._given(given_rotation, given_shift)
            middle = (1,) * (z.dim() - 2)
            rotation = given_rotation.to(z.dtype).reshape(given_rotation.shape[0], *middle, 3, 3)
            shift = given_shift.to(z.dtype).reshape(given_shift.shape[0], *middle, 2)
            return latent_to_pose_correction(
                z, rotation, shift, config.refine_rotation_scale, config.refine_shift_scale
            )
        raise ValueError(f"pose_mode {self.name!r} has no pose latent")

    def sample(
        self,
        mu: torch.Tensor | None,
        sigma: torch.Tensor | None,
        n_pose: int,
        config: ModelConfig,
        given_rotation: torch.Tensor | None = None,
        given_shift: torch.Tensor | None = None,
        generator: torch.Generator | BatchNoiseRows | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The poses a loss evaluation renders at, and the pose KL.

        mu, sigma (B, Kc, 8): the pose posterior at each of Kc conformation samples (None in ``given``).
        Returns rotation (B, Kc, Kp, 3, 3), shift (B, Kc, Kp, 2) A with Kp = n_pose (Kc = Kp = 1 in
        ``given``: the given pose, broadcast against any Kc), and kl (B,) nats: KL(q || N(0, I))
        averaged over the Kc conformation samples (None in ``given``: there is no pose latent).
        """
        if not self.uses_pose_head:
            given_rotation, given_shift = self._given(given_rotation, given_shift)
            return (given_rotation.to(dtype)[:, None, None], given_shift.to(dtype)[:, None, None], None)
        if mu is None or sigma is None:
            raise ValueError(f"pose_mode {self.name!r} needs the pose posterior (mu, sigma)")
        eps = standard_normal((*mu.shape[:2], n_pose, mu.shape[-1]), generator, mu.device, mu.dtype)
        z = mu.unsqueeze(2) + sigma.unsqueeze(2) * eps  # (B, Kc, Kp, 8)
        rotation, shift = self.latent_to_pose(z, config, given_rotation, given_shift)
        return rotation, shift, kl_diagonal_normal(mu, sigma).mean(dim=1)

    def hypothesis_rotations(
        self,
        batch: int,
        n: int,
        generator: torch.Generator | BatchNoiseRows | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """n rotations (batch, n, 3, 3) per image drawn uniformly on SO(3) (Gram-Schmidt of Gaussian 6D
        vectors: the pose prior's rotation marginal), from the step's sampling noise."""
        if not self.global_hypotheses:
            raise ValueError(f"pose_mode {self.name!r} draws no global pose hypotheses")
        six_d = standard_normal((batch, n, 6), generator, device, dtype)
        return latent_to_pose(torch.cat([six_d.new_zeros(batch, n, 2), six_d], dim=-1), 1.0)[0]

    def mean_pose(
        self,
        mu: torch.Tensor | None,
        config: ModelConfig,
        given_rotation: torch.Tensor | None = None,
        given_shift: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pose the model uses for each particle: mu (B, 8) the pose posterior mean -> rotation
        (B, 3, 3), shift (B, 2) A; in ``given`` the given pose itself."""
        if not self.uses_pose_head:
            return self._given(given_rotation, given_shift)
        if mu is None:
            raise ValueError(f"pose_mode {self.name!r} needs the pose posterior mean")
        return self.latent_to_pose(mu, config, given_rotation, given_shift)

    def _given(
        self, rotation: torch.Tensor | None, shift: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The given poses, which this mode cannot run without."""
        if rotation is None or shift is None:
            raise ValueError(f"pose_mode {self.name!r} needs given poses (rotation and shift)")
        return rotation, shift


INFERRED = PoseMode("inferred", needs_given_poses=False, uses_pose_head=True, global_hypotheses=True)
GIVEN = PoseMode("given", needs_given_poses=True, uses_pose_head=False)
REFINE = PoseMode("refine", needs_given_poses=True, uses_pose_head=True)
_MODES = {mode.name: mode for mode in (INFERRED, GIVEN, REFINE)}
assert tuple(_MODES) == POSE_MODES


def pose_mode(name: str) -> PoseMode:
    """The PoseMode called ``name`` (ValueError for an unknown one)."""
    try:
        return _MODES[name]
    except KeyError:
        raise ValueError(f"pose_mode must be one of {POSE_MODES}, got {name!r}") from None
