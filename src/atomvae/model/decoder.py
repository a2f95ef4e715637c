"""Conformation decoder (paper section 9): z_conf -> per-residue delta frames -> atoms.

z (..., latent) -> Linear(width) -> blocks x [x + Linear(leaky_relu(Linear(LN(x))))] -> LN
-> Linear(decoded_dim) = d, the decoded representation (also read by the pose head)
-> Linear(9 R) -> per residue t (3), v1 (3), v2 (3) -> delta frame (Gram-Schmidt(e_x + v1, e_y + v2),
delta_translation_scale * t).

Delta frames act in each residue's local frame: new = base o delta, i.e. R = R_base R_delta and
t = t_base + R_base t_delta. (Local deltas keep the output scales the same for every residue
whatever its orientation; a zero delta output is exactly the identity, so at initialisation -- the
residual updates and the frame layer are zero -- the decoder returns the base structure.) Every
residue including its side chain is one rigid body: atoms = frame applied to the residue-local
coordinates of the base structure.

Not in the paper, optional (``ModelConfig.segment_size``): contiguous segments of residues move as rigid
bodies about their base centroids c_s, decoded by a second zero-initialised layer Linear(9 S) the same way
(rotation R_s, translation t_s); a residue's frame is then T_s o base o delta with T_s x = R_s (x - c_s) +
c_s + t_s, so a zero output is still the base.

Not in the paper, optional (``ModelConfig.domain_bodies``): the base's D dynamic domains
(``atomvae.structure.domains.dynamic_domains``) move as rigid bodies about their base C-alpha centroids the
same way, by a third zero-initialised layer Linear(9 D), applied over the segments: T_d o T_s o base o delta.

Not in the paper, optional (``ModelConfig.side_chains``): per-residue chi offsets (radians), one learnt
set for every particle ("shared") or read from d by a second zero-initialised layer Linear(4 R)
("decoded"), and the side chains turn about their chi bonds
(structure.torsions) before the frames place them; every atom set derived from the heavy atoms (the
render pseudo-atoms, the padded clash layout) is then recomputed from the turned atoms.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from atomvae.geometry.rigid import Rigid
from atomvae.geometry.rotations import gram_schmidt
from atomvae.model.config import ModelConfig
from atomvae.model.layers import linear
from atomvae.structure.domains import dynamic_domains
from atomvae.structure.frames import frames_to_coordinates
from atomvae.structure.torsions import MAX_CHI, SideChainTorsions

TORSION_RATE = 10.0  # radians of shared chi offset per unit of its parameter (see ConformationDecoder)


def residue_segments(bonded_to_next: np.ndarray, segment_size: int) -> np.ndarray:
    """Segment index (R,) of each residue: runs of ``segment_size`` consecutive residues, a new run starting
    after every residue not bonded to the next (a chain end or a gap in the model)."""
    segment = np.zeros(len(bonded_to_next), dtype=np.int64)
    current, length = 0, 0
    for r in range(len(bonded_to_next)):
        if length == segment_size or (r > 0 and not bonded_to_next[r - 1]):
            current, length = current + 1, 0
        segment[r] = current
        length += 1
    return segment


# The dense elastic-network eigenproblem behind the domains costs O(R^3) time and O(R^2) memory (3,000
# x 3,000 at 1,000 residues: seconds); above this size the decoder has no domain bodies.
MAX_DOMAIN_RESIDUES = 1000


def _domain_labels(base_trans: torch.Tensor, n_domains: int) -> np.ndarray | None:
    """Dynamic-domain labels (R,) of the base's residues (C-alphas base_trans (R, 3) A), or None when
    ``n_domains`` is 0 or the base has no such domains (too large for the dense elastic network, or a
    network that falls apart): the decoder then has no domain bodies. Deterministic in the base, so a
    checkpoint rebuilt from its base gets the same layers."""
    if n_domains == 0:
        return None
    n_residues = base_trans.shape[0]
    if n_residues > MAX_DOMAIN_RESIDUES:
        warnings.warn(
            f"{n_residues} residues, more than {MAX_DOMAIN_RESIDUES}: no domain bodies (model.domain_bodies)",
            stacklevel=3,
        )
        return None
    try:
        return dynamic_domains(base_trans.detach().double().cpu().numpy(), n_domains)
    except ValueError as error:
        warnings.warn(f"no domain bodies (model.domain_bodies): {error}", stacklevel=3)
        return None


def _centroids(points: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean (n_groups, 3) of points (R, 3) by group (R,) long."""
    total = torch.zeros(n_groups, 3, dtype=points.dtype).index_add(0, group, points)
    return total / torch.bincount(group, minlength=n_groups).unsqueeze(-1).to(points.dtype)


class ResidualBlock(nn.Module):
    """x + Linear(leaky_relu(Linear(LayerNorm(x)))), the update's last layer zero-initialised."""

    def __init__(self, width: int, negative_slope: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.hidden = linear(width, width)
        self.update = linear(width, width, zero=True)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.update(F.leaky_relu(self.hidden(self.norm(x)), self.negative_slope))


class ConformationDecoder(nn.Module):
    """Maps conformation latents to residue frames and atom positions around a base structure.

    base_rot (R, 3, 3), base_trans (R, 3) A: the base structure's residue frames (AlphaFold
    convention); atom sets name subsets of atoms by their residue-local coordinates (A', 3) A and
    residue index (A',), registered with :meth:`add_atom_set`.
    """

    base_rot: torch.Tensor  # buffers, declared for the type checker
    base_trans: torch.Tensor
    local_all: torch.Tensor
    segment_of_residue: torch.Tensor
    segment_centroid: torch.Tensor
    domain_of_residue: torch.Tensor
    domain_centroid: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        base_rot: torch.Tensor,
        base_trans: torch.Tensor,
        bonded_to_next: np.ndarray | None = None,
    ):
        """bonded_to_next (R,) bool: residue r is peptide-bonded to r + 1 (segments never span a chain
        break); None: one chain."""
        super().__init__()
        n_residues = base_rot.shape[0]
        width = config.decoder_width
        self.n_residues = n_residues
        self.delta_translation_scale = config.delta_translation_scale
        self.input = linear(config.latent_conf, width)
        self.blocks = nn.ModuleList(
            ResidualBlock(width, config.leaky_relu_slope) for _ in range(config.decoder_blocks)
        )
        self.final_norm = nn.LayerNorm(width)
        self.to_decoded = linear(width, config.decoded_dim)
        self.to_frames = linear(config.decoded_dim, 9 * n_residues, zero=True)
        # Domains (not in the paper): found once from the base; the labels are a persistent buffer, so a
        # checkpoint keeps the domains it was trained with.
        domain_labels = _domain_labels(base_trans, config.domain_bodies)
        self.n_domains = 0 if domain_labels is None else config.domain_bodies
        self.to_domains: nn.Linear | None = None
        if domain_labels is not None:
            domain = torch.as_tensor(domain_labels)
            self.to_domains = linear(config.decoded_dim, 9 * self.n_domains, zero=True)
            self.register_buffer("domain_of_residue", domain)
            self.register_buffer(
                "domain_centroid", _centroids(base_trans.detach().float(), domain, self.n_domains)
            )
        # Segments (not in the paper): runs of segment_size residues (residue_segments).
        self.n_segments = 0
        self.to_segments: nn.Linear | None = None
        if config.segment_size > 0:
            bonded = np.ones(n_residues, bool) if bonded_to_next is None else np.asarray(bonded_to_next, bool)
            segment = torch.as_tensor(residue_segments(bonded, config.segment_size))
            self.n_segments = int(segment[-1]) + 1
            self.to_segments = linear(config.decoded_dim, 9 * self.n_segments, zero=True)
            centroid = _centroids(base_trans.detach().float(), segment, self.n_segments)
            self.register_buffer("segment_of_residue", segment, persistent=False)
            self.register_buffer("segment_centroid", centroid, persistent=False)
        # Side-chain torsions (not in the paper): decoded from d, or one shared set of offsets (from 0).
        self.to_torsions: nn.Linear | None = None
        self.shared_torsions: nn.Parameter | None = None
        if config.side_chains == "decoded":
            self.to_torsions = linear(config.decoded_dim, MAX_CHI * n_residues, zero=True)
        elif config.side_chains == "shared":
            # chi = TORSION_RATE * parameter: Adam moves each parameter by about the learning rate per
            # step, 3e-4 rad, which would cap a short run's change at ~12 degrees; the particles' rotamers
            # are tens of degrees from the base's (BENCHMARKS.md, "Side-chain torsions").
            self.shared_torsions = nn.Parameter(torch.zeros(n_residues, MAX_CHI))
        self.side_chains: SideChainTorsions | None = None  # set by set_side_chains
        self._derived: set[str] = set()  # atom sets that follow the heavy atoms when side chains turn
        self.register_buffer("base_rot", base_rot.detach().clone())
        self.register_buffer("base_trans", base_trans.detach().clone())
        self._atom_sets: list[str] = []

    def add_atom_set(
        self,
        name: str,
        local: torch.Tensor,
        residue_index: np.ndarray | torch.Tensor,
        persistent: bool = True,
        from_all: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Register atoms (A', 3) in their residue frames with residue_index (A',) as set ``name``.

        persistent=False keeps the set out of the state dict (a set derived from others, added after
        checkpoints were written, must not make those checkpoints fail to load). ``from_all`` = (target,
        source, weight), each (P,): local[target] = sum of weight * all[source] -- how the set follows the
        heavy atoms when side chains turn (a selection, a padding, or weighted pseudo-atom centroids)."""
        self.register_buffer(f"local_{name}", local.detach().clone(), persistent=persistent)
        index = torch.as_tensor(np.array(residue_index, dtype=np.int64), device=local.device)
        self.register_buffer(f"residue_index_{name}", index, persistent=persistent)
        self._atom_sets.append(name)
        if from_all is not None:
            target, source, weight = (np.asarray(a) for a in from_all)
            self.register_buffer(f"derive_{name}_target", torch.as_tensor(target, dtype=torch.long), False)
            self.register_buffer(f"derive_{name}_source", torch.as_tensor(source, dtype=torch.long), False)
            self.register_buffer(f"derive_{name}_weight", torch.as_tensor(weight, dtype=torch.float32), False)
            self._derived.add(name)

    def set_side_chains(self, side_chains: SideChainTorsions) -> None:
        """The chi axes of the base's side chains (needed when the decoder outputs torsions)."""
        self.side_chains = side_chains

    @property
    def atom_sets(self) -> tuple[str, ...]:
        return tuple(self._atom_sets)

    def representation(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., latent_conf) -> decoded representation d (..., decoded_dim)."""
        x = self.input(z)
        for block in self.blocks:
            x = block(x)
        return self.to_decoded(self.final_norm(x))

    def delta_frames(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d (..., decoded_dim) -> delta rotations (..., R, 3, 3), delta translations (..., R, 3) A."""
        return self._rigid_deltas(self.to_frames(d).unflatten(-1, (self.n_residues, 9)))

    def _rigid_deltas(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs (..., N, 9) -> rotations (..., N, 3, 3), translations (..., N, 3) A."""
        translation = self.delta_translation_scale * out[..., 0:3]
        # Offsetting by the identity's first two columns makes a zero output the identity rotation.
        e_x = out.new_tensor([1.0, 0.0, 0.0])
        e_y = out.new_tensor([0.0, 1.0, 0.0])
        rotation = gram_schmidt(e_x + out[..., 3:6], e_y + out[..., 6:9])
        return rotation, translation

    def torsions(self, d: torch.Tensor) -> torch.Tensor | None:
        """d (..., decoded_dim) -> chi offsets (..., R, 4) radians from the base (0 where a residue has no
        such chi; "shared": one (R, 4) for every structure, broadcasting), or None when the decoder keeps the
        base's side chains (the paper)."""
        if self.side_chains is None:
            return None
        if self.to_torsions is not None:
            chi = self.to_torsions(d).unflatten(-1, (self.n_residues, MAX_CHI))
        elif self.shared_torsions is not None:
            # (R, 4), broadcast against d's batch: the side chains are turned once, not once per structure.
            chi = TORSION_RATE * self.shared_torsions.to(d.dtype)
        else:
            return None
        return chi * self.side_chains.chi_mask.to(chi.dtype)

    def frames(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d (..., decoded_dim) -> residue frames (..., R, 3, 3), (..., R, 3) A: new = base @ delta."""
        delta = Rigid(*self.delta_frames(d))
        new = Rigid(self.base_rot, self.base_trans).to(delta.rot.dtype) @ delta
        rot, trans = new.rot, new.trans
        if self.to_segments is not None:
            rot, trans = self._move_bodies(
                rot, trans, self.to_segments(d), self.segment_of_residue, self.segment_centroid
            )
        if self.to_domains is not None:
            rot, trans = self._move_bodies(
                rot, trans, self.to_domains(d), self.domain_of_residue, self.domain_centroid
            )
        return rot, trans

    def _move_bodies(
        self,
        rot: torch.Tensor,
        trans: torch.Tensor,
        out: torch.Tensor,
        body_of_residue: torch.Tensor,
        centroid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (..., R, 3, 3), (..., R, 3) A moved by rigid bodies of residues: raw outputs (..., 9 N) of
        N bodies, body_of_residue (R,), base centroids (N, 3) A. Each body turns about its centroid c and
        moves by t: x -> R (x - c) + c + t."""
        body_rot, body_trans = self._rigid_deltas(out.unflatten(-1, (centroid.shape[0], 9)))
        rot_r = body_rot.index_select(-3, body_of_residue)  # (..., R, 3, 3)
        centre = centroid.to(trans.dtype).index_select(0, body_of_residue)  # (R, 3)
        shift = body_trans.index_select(-2, body_of_residue)
        trans = (rot_r @ (trans - centre).unsqueeze(-1)).squeeze(-1) + centre + shift
        return rot_r @ rot, trans

    def local(self, atom_set: str, chi: torch.Tensor | None = None) -> torch.Tensor:
        """Residue-local coordinates of ``atom_set``: (A', 3) A, or (..., A', 3) with the side chains turned
        by chi (..., R, 4) radians."""
        if atom_set not in self._atom_sets:
            raise KeyError(f"unknown atom set {atom_set!r}; known: {self._atom_sets}")
        local = getattr(self, f"local_{atom_set}")
        if chi is None or self.side_chains is None or (atom_set != "all" and atom_set not in self._derived):
            return local
        turned = self.side_chains(self.local_all, chi)  # (..., A, 3)
        if atom_set == "all":
            return turned
        target, source, weight = (
            getattr(self, f"derive_{atom_set}_{part}") for part in ("target", "source", "weight")
        )
        picked = turned.index_select(-2, source) * weight.to(turned.dtype).unsqueeze(-1)
        return turned.new_zeros(*turned.shape[:-2], local.shape[0], 3).index_add(-2, target, picked)

    def atoms(
        self, rot: torch.Tensor, trans: torch.Tensor, atom_set: str, chi: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Positions (..., A', 3) A of the atoms of ``atom_set`` in the frames (..., R, 3, 3), (..., R, 3),
        the side chains turned by chi (..., R, 4) radians when given."""
        local = self.local(atom_set, chi).to(rot.dtype)
        return frames_to_coordinates(rot, trans, local, getattr(self, f"residue_index_{atom_set}"))

    def center_of_mass(
        self, rot: torch.Tensor, trans: torch.Tensor, atom_set: str = "all", chi: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-mass centre (..., 3) A of ``atom_set`` in the frames, without placing every atom.

        Each residue is rigid, so sum_a x_a = sum_r (R_r L_r + n_r t_r) with L_r the sum of the
        residue's local coordinates and n_r its atom count: O(R) per structure instead of O(A).
        """
        local = self.local(atom_set, chi).to(rot.dtype)
        index = getattr(self, f"residue_index_{atom_set}")
        local_sum = local.new_zeros(*local.shape[:-2], self.n_residues, 3).index_add(-2, index, local)
        counts = torch.bincount(index, minlength=self.n_residues).to(rot.dtype)
        total = (rot @ local_sum.unsqueeze(-1)).squeeze(-1) + counts.unsqueeze(-1) * trans
        return total.sum(dim=-2) / local.shape[-2]

    def forward(self, z: torch.Tensor, atom_set: str = "all") -> torch.Tensor:
        """z (..., latent_conf) -> atom positions (..., A', 3) A of ``atom_set``."""
        d = self.representation(z)
        rot, trans = self.frames(d)
        return self.atoms(rot, trans, atom_set, self.torsions(d))
