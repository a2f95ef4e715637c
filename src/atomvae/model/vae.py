"""AtomVAE: encoder, conformation decoder, pose head and renderer tied into paper eq. 4.

Coordinates: the model works in a frame centred on the base structure (its unit-mass centre of
atoms, or a ``center`` the caller gives, e.g. the centre of the consensus map's box when poses come
from a refinement). Rotations and shifts of poses act about that centre. ``decode`` and ``sample``
return model-frame coordinates; ``to_base_frame`` adds the centre back for writing files that
overlay the user's base model.

Stages (paper section 2.4 and 9): stage 1 fits the pose path on the fixed base structure, stage 2
everything. The pose head reads a decoded representation d(z_conf) besides the image. In stage 1 it
gets d at z_conf sampled from the conformation posterior, as in stage 2, but with the posterior head and
the decoder not trained (and no gradient through them): d(0) would be exactly zero (zero biases, the
decoder's last LayerNorm of a constant), while d(z) for any z has an rms of ~0.9, so a head trained on
d(0) would see a jump in its input when stage 2 starts. Here the first stage-2 step computes the pose
posterior from the same inputs as the last stage-1 step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import roma
import torch
from torch import nn

from atomvae.geometry.rotations import random_rotations
from atomvae.model.band_likelihood import BandLikelihood
from atomvae.model.batch_noise import BatchNoiseRows, standard_normal
from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.decoder import ConformationDecoder
from atomvae.model.encoder import ConformationPosterior, ImageEncoder
from atomvae.model.losses import (
    LOCAL_CONTACT_ATOMS,
    backbone_continuity,
    bond_outliers,
    centering,
    clash_penalty,
    gaussian_log_likelihood,
    heavy_atom_clash_penalty,
    iwae_log_mean_likelihood,
    kl_diagonal_normal,
    local_contact_pairs,
    local_contact_penalty,
    neighbour_orientation,
    non_neighbour_pairs,
    peptide_distances,
    peptide_geometry,
    relative_orientations,
    residue_padded_layout,
)
from atomvae.model.pose import PoseHead
from atomvae.model.pose_modes import pose_mode as get_pose_mode
from atomvae.physics.coarse_grain import (
    coarse_grained_density,
    forward_scattering,
    group_kinds,
    residue_groups,
)
from atomvae.physics.ctf import CTFParams, apply_ctf, phase_flip
from atomvae.physics.render import render, render_projections
from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates
from atomvae.structure.torsions import BACKBONE_NAMES, SideChainTorsions


@dataclass
class LossOutput:
    """total: scalar to backprop (mean over the batch of eq. 4); per_image_log_likelihood (B,) detached:
    log mean_n N(y; render_n, sigma_noise) in nats (held-out model selection); terms: batch means
    for logging (nll, kl_conf, kl_pose, backbone, centering, clash, heavy_clash, orientation, amplitude,
    total)."""

    total: torch.Tensor
    per_image_log_likelihood: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)
    # What the loss's searches found per image, detached, for the caller's particle memory (``remembered``):
    # stage 1 with the hypothesis pull the best pose hypothesis, "rotation" (B, 3, 3) and "shift" (B, 2) A;
    # stage 2 with the conformation search its best latent, "latent" (B, latent_conf).
    found: dict[str, torch.Tensor] = field(default_factory=dict)


# Stage-1 pose memory (``AtomVAE.hypothesis_pull``): the largest turn (sd per axis, degrees) of the
# perturbations of each image's best pose found so far; each further one halves it, four scales in turn.
MEMORY_NEAR_DEGREES = 16.0

# Side-chain repacking of output structures (AtomVAE.relax_side_chains): the clash threshold of the training
# penalty (0.5 A over the 2.0 A check of evaluate.stereochemistry), radians per Adam step, and the penalty
# below which a structure counts as clear.
RELAX_CLASH_DISTANCE = 2.5
RELAX_LEARNING_RATE = 0.05
RELAX_TOLERANCE = 0.01  # A^2 of penalty per structure (one pair 0.1 A inside the threshold): clear enough
BACKBONE_CB_NAMES = (*BACKBONE_NAMES, "CB")
SIGMA_RATE = 30.0  # see AtomVAE.log_render_sigma


def _indices(selection) -> np.ndarray:
    """Atom indices from a topology selection given as indices or as a boolean mask."""
    selection = np.asarray(selection)
    return np.flatnonzero(selection) if selection.dtype == bool else selection.astype(np.int64)


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (from autocast) to float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class AtomVAE(nn.Module):
    """The VAE of Rosenbaum et al. on one base structure.

    config: architecture; base_topology: structure.topology.Topology of the base; base_coords (A, 3) A;
    box: image side in pixels (= config.image_size: the encoder and the renderer see the same grid);
    pixel_size: A per pixel of those images; noise_sigma: standard deviation of the pixel noise in
    image units (the likelihood's sigma); center (3,) A: rotation centre (default: mean atom position).
    """

    # Buffers registered in __init__, declared for the type checker (nn.Module.__getattr__ is untyped).
    render_mass: torch.Tensor | None
    padded_atom_mask: torch.Tensor
    padded_backbone_cb_mask: torch.Tensor
    padded_base_coords: torch.Tensor
    bonded_to_next: torch.Tensor
    clash_pairs: torch.Tensor
    base_relative_orientations: torch.Tensor
    base_peptide_distances: torch.Tensor  # (R-1, 4) A, losses.peptide_distances of the base
    contact_first: torch.Tensor  # (P,) indices into the "contacts" atom set, losses.local_contact_pairs
    contact_second: torch.Tensor  # (P,)
    contact_limit: torch.Tensor  # (P,) A
    base_center: torch.Tensor
    base_coords: torch.Tensor
    base_render_coords: torch.Tensor
    noise_sigma: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        base_topology,
        base_coords,
        box: int,
        pixel_size: float,
        noise_sigma: float,
        center=None,
    ):
        super().__init__()
        if box != config.image_size:
            raise ValueError(f"box ({box}) must equal config.image_size ({config.image_size})")
        if not noise_sigma > 0:
            raise ValueError(f"noise_sigma must be > 0, got {noise_sigma}")
        self.config = config
        self.topology = base_topology
        self.box = int(box)
        self.pixel_size = float(pixel_size)

        coords64 = torch.as_tensor(np.asarray(base_coords), dtype=torch.float64)
        center64 = (
            coords64.mean(dim=0)
            if center is None
            else torch.as_tensor(np.asarray(center), dtype=torch.float64)
        )
        coords64 = coords64 - center64
        base_rot, base_trans = backbone_frames(coords64, base_topology)
        local = torch.as_tensor(local_coordinates(coords64, base_topology), dtype=torch.float64)
        residue_index = np.asarray(base_topology.residue_index)

        self.encoder = ImageEncoder(config)
        self.conf_posterior = ConformationPosterior(self.encoder.out_features, config.latent_conf)
        self.decoder = ConformationDecoder(
            config, base_rot.float(), base_trans.float(), np.asarray(base_topology.bonded_to_next)
        )
        self.pose_head = PoseHead(config, self.encoder.out_features)
        # Images have an arbitrary intensity scale against unit-mass Gaussians: one learnt global
        # amplitude (log-parameterised: positive), set from data by initialise_amplitude().
        self.log_amplitude = nn.Parameter(torch.zeros(()))

        self.decoder.add_atom_set("all", local.float(), residue_index)
        every_atom = np.arange(base_topology.n_atoms)
        if config.side_chains != "rigid" or config.side_chain_relaxation_steps > 0:
            self.decoder.set_side_chains(SideChainTorsions(base_topology, local))
        if config.render_atoms == "residue":
            pseudo_local, pseudo_residue, mass = coarse_grained_density(local.numpy(), base_topology)
            render_local = torch.as_tensor(pseudo_local, dtype=torch.float64)
            group = residue_groups(base_topology)
            centroid_weight = forward_scattering(base_topology.element) / mass[group]
            self.decoder.add_atom_set(
                "render", render_local.float(), pseudo_residue, from_all=(group, every_atom, centroid_weight)
            )
            base_render = frames_to_coordinates(base_rot, base_trans, render_local, pseudo_residue)
            # Masses in units of their mean, so the amplitude keeps the scale of unit-mass atoms.
            render_mass: torch.Tensor | None = torch.as_tensor(mass / mass.mean(), dtype=torch.float32)
            kinds = group_kinds(base_topology)
        else:
            render_idx = _indices(base_topology.select(config.render_atoms))
            self.decoder.add_atom_set(
                "render",
                local[render_idx].float(),
                residue_index[render_idx],
                from_all=(np.arange(len(render_idx)), render_idx, np.ones(len(render_idx))),
            )
            base_render = coords64[render_idx]
            render_mass = None
            kinds = np.zeros(len(render_idx), dtype=np.int64)
        # Derived from the base and the config: kept out of the state dict.
        self.register_buffer("render_mass", render_mass, persistent=False)
        # Render atoms of each pseudo-atom kind (backbone, proximal, distal), when each has its own width.
        self.render_kinds: list[torch.Tensor] | None = (
            [torch.as_tensor(np.flatnonzero(kinds == k)) for k in range(3)]
            if config.render_sigma_by_kind
            else None
        )
        # Learnt blur: sigma = exp(SIGMA_RATE * parameter), positive, and moved by Adam SIGMA_RATE times
        # faster than a plain log-parameter (one width shared by every image would otherwise creep at the
        # learning rate per step and still be moving when training ends). A fixed width stays the config's.
        self.log_render_sigma = (
            nn.Parameter(
                torch.full(
                    (3,) if config.render_sigma_by_kind else (), math.log(config.render_sigma) / SIGMA_RATE
                )
            )
            if config.learn_render_sigma
            else None
        )
        # C and N of every residue feed the backbone loss even when the renderer sees only CA; CA the
        # clash penalty.
        for name in ("N", "C", "CA"):
            idx = _indices(base_topology.atom_index(name))
            self.decoder.add_atom_set(name, local[idx].float(), residue_index[idx])
        # Backbone and C-beta atoms, and the sequence neighbours' pairs of them the local-contact term
        # checks (indices into this set). Derived from the base: out of the state dict.
        contact_atoms = np.flatnonzero(np.isin(base_topology.atom_name, LOCAL_CONTACT_ATOMS))
        self.decoder.add_atom_set(
            "contacts",
            local[contact_atoms].float(),
            residue_index[contact_atoms],
            persistent=False,
            from_all=(np.arange(len(contact_atoms)), contact_atoms, np.ones(len(contact_atoms))),
        )
        first, second, limit = local_contact_pairs(
            base_topology.atom_name,
            base_topology.element,
            residue_index,
            np.asarray(base_topology.bonded_to_next),
            coords64.numpy(),
        )
        position = np.full(base_topology.n_atoms, -1, dtype=np.int64)
        position[contact_atoms] = np.arange(len(contact_atoms))
        self.register_buffer("contact_first", torch.as_tensor(position[first]), persistent=False)
        self.register_buffer("contact_second", torch.as_tensor(position[second]), persistent=False)
        self.register_buffer("contact_limit", torch.as_tensor(limit, dtype=torch.float32), persistent=False)
        # Every heavy atom again, padded to K slots per residue (atom k of residue r at r*K + k; empty
        # slots sit on the C-alpha and are masked) for the heavy-atom clash penalty. Derived from the base,
        # so kept out of the state dict (checkpoints written before it existed still load).
        slot, padded_mask = residue_padded_layout(residue_index)
        padded_residue = np.repeat(np.arange(padded_mask.shape[0]), padded_mask.shape[1])
        padded_local = torch.zeros(padded_mask.size, 3, dtype=torch.float64)
        padded_local[slot] = local
        padded_base = base_trans[padded_residue].clone()  # frame origins: the C-alpha atoms
        padded_base[slot] = coords64
        self.decoder.add_atom_set(
            "padded",
            padded_local.float(),
            padded_residue,
            persistent=False,
            from_all=(slot, every_atom, np.ones(len(every_atom))),
        )
        self.register_buffer("padded_atom_mask", torch.as_tensor(padded_mask), persistent=False)
        # The same slots less the side-chain atoms beyond CB (LossWeights.heavy_clash_atoms "backbone_cb").
        backbone_cb = np.zeros(padded_mask.size, dtype=bool)
        backbone_cb[slot] = np.isin(base_topology.atom_name, BACKBONE_CB_NAMES)
        backbone_cb_mask = torch.as_tensor(backbone_cb.reshape(padded_mask.shape))
        self.register_buffer("padded_backbone_cb_mask", backbone_cb_mask, persistent=False)
        self.register_buffer("padded_base_coords", padded_base.float(), persistent=False)
        self.register_buffer(
            "bonded_to_next", torch.as_tensor(np.asarray(base_topology.bonded_to_next), dtype=torch.bool)
        )
        self.register_buffer("clash_pairs", non_neighbour_pairs(self.bonded_to_next), persistent=False)
        self.register_buffer(
            "base_relative_orientations", relative_orientations(base_rot.float()), persistent=False
        )
        base_backbone = (
            self.decoder.atoms(base_rot.float(), base_trans.float(), atom) for atom in ("CA", "C", "N")
        )
        self.register_buffer("base_peptide_distances", peptide_distances(*base_backbone), persistent=False)
        self.register_buffer("base_center", center64.float())
        self.register_buffer("base_coords", coords64.float())  # (A, 3) model frame
        self.register_buffer("base_render_coords", base_render.float())
        self.register_buffer("noise_sigma", torch.tensor(float(noise_sigma)))

    # ------------------------------------------------------------------ helpers
    @property
    def amplitude(self) -> torch.Tensor:
        return self.log_amplitude.exp()

    def to_base_frame(self, coords: torch.Tensor) -> torch.Tensor:
        """Model-frame coordinates (..., A, 3) -> the base structure's input frame."""
        return coords + self.base_center.to(coords.dtype)

    @property
    def render_sigma(self) -> torch.Tensor | float:
        """Gaussian width of the rendered atoms, A (a 0-dim tensor when learnt; (3,) by pseudo-atom kind with
        ``config.render_sigma_by_kind``)."""
        if self.log_render_sigma is None:
            return self.config.render_sigma
        return (SIGMA_RATE * self.log_render_sigma).exp()

    def _render_sigma_terms(self) -> dict[str, float]:
        sigma = torch.as_tensor(self.render_sigma).detach().flatten().tolist()
        if len(sigma) == 1:
            return {"render_sigma": sigma[0]}
        return dict(zip(("render_sigma", "render_sigma_proximal", "render_sigma_distal"), sigma, strict=True))

    def _unit_renders(
        self, coords: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor, ctf: CTFParams | None
    ) -> torch.Tensor:
        """The image model before any amplitude: the render atoms (with their masses) at the current width,
        then the CTF when given. Shapes as ``render_images``."""
        sigma = self.render_sigma
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(coords.dtype)
        mass = None if self.render_mass is None else self.render_mass.to(coords.dtype)
        if self.render_kinds is not None:  # one width per kind: three projections, one CTF
            assert isinstance(sigma, torch.Tensor) and mass is not None  # by the config's check
            images = torch.stack(
                [
                    render_projections(
                        coords[..., idx.to(coords.device), :],
                        rotation,
                        shift,
                        self.box,
                        self.pixel_size,
                        sigma[k],
                        mass[idx.to(mass.device)],
                    )
                    for k, idx in enumerate(self.render_kinds)
                    if len(idx)
                ]
            ).sum(dim=0)
            return images if ctf is None else apply_ctf(images, ctf, self.pixel_size)
        if ctf is None:
            return render_projections(coords, rotation, shift, self.box, self.pixel_size, sigma, mass)
        return render(coords, rotation, shift, ctf, self.box, self.pixel_size, sigma, weights=mass)

    def render_images(
        self,
        coords: torch.Tensor,
        rotation: torch.Tensor,
        shift: torch.Tensor,
        ctf: CTFParams | None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted images (..., H, W): coords (..., A, 3), rotation (..., 3, 3), shift (..., 2) A, ctf (B,)
        or None (B the first of the leading dims; each particle's CTF is computed once for all its renders).

        Scaled by the learnt amplitude, or with ``config.amplitude == "per_image"`` by each render's
        least-squares scale onto ``images`` (broadcasting against the renders; clamped at 0, so an
        anti-correlated render predicts a blank image rather than a negative one).
        """
        return self._scaled(self._unit_renders(coords, rotation, shift, ctf), images)

    def _scaled(self, renders: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """Unit renders times the learnt amplitude, or their per-image least-squares scale (render_images)."""
        if self.config.amplitude == "per_image" and images is not None:
            scale = (renders * images).sum(dim=(-2, -1), keepdim=True) / renders.square().sum(
                dim=(-2, -1), keepdim=True
            ).clamp_min(1e-20)
            return scale.clamp_min(0.0) * renders
        return self.amplitude.to(renders.dtype) * renders

    def binned_renders(
        self,
        coords: torch.Tensor,
        rotation: torch.Tensor,
        shift: torch.Tensor,
        ctf: CTFParams | None,
        binning: int,
    ) -> torch.Tensor:
        """Unit renders (..., box/binning, box/binning) that approximate the full-size unit renders with each
        binning x binning block of pixels averaged, at binning^2 fewer pixels. A block's average samples
        the density at binning points per axis spaced one pixel apart: a blur of variance
        pixel^2 (binning^2 - 1) / 12 added to the width, and a block centre half a pixel (binning 2) off
        the coarse grid's pixel centre, which the shift takes up. Shapes as ``render_images``."""
        if self.render_kinds is not None:
            raise ValueError("binned renders need one render width (render_sigma_by_kind is off)")
        side, pixel = self.box // binning, self.pixel_size * binning
        # Block centre minus coarse pixel centre, A, on both axes (grid.pixel_centers: (i - box//2) px).
        offset = ((binning - 1) / 2 - self.box // 2 + binning * (side // 2)) * self.pixel_size
        sigma = torch.as_tensor(self.render_sigma, dtype=coords.dtype, device=coords.device)
        sigma = torch.sqrt(sigma.square() + self.pixel_size**2 * (binning**2 - 1) / 12)
        mass = None if self.render_mass is None else self.render_mass.to(coords.dtype)
        moved = shift - offset
        # Renders carry each pixel's mass: a binned pixel's average is its coarse pixel's mass / binning^2.
        if ctf is None:
            return render_projections(coords, rotation, moved, side, pixel, sigma, mass) / binning**2
        return render(coords, rotation, moved, ctf, side, pixel, sigma, weights=mass) / binning**2

    def trainable_parameters(self, stage: int) -> Iterable[nn.Parameter]:
        """Stage 1: encoder trunk, pose head and the image model's amplitude and (learnt) width (structure
        fixed). Stage 2: everything. The global amplitude only where it is used (``config.amplitude``
        "learnt"; "per_image" fits each render's scale in closed form)."""
        unused = {id(self.log_amplitude)} if self.config.amplitude == "per_image" else set()
        if stage == 1:
            modules = (self.encoder, self.pose_head)
            image_model = [self.log_amplitude] + [p for p in (self.log_render_sigma,) if p is not None]
            params = [p for m in modules for p in m.parameters()] + image_model
        elif stage == 2:
            params = list(self.parameters())
        else:
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        return [p for p in params if id(p) not in unused]

    # ------------------------------------------------------------------ objective
    def loss(
        self,
        images: torch.Tensor,
        ctf: CTFParams | None,
        *,
        stage: int,
        n_conf: int,
        n_pose: int,
        weights: LossWeights,
        given_rotation: torch.Tensor | None = None,
        given_shift: torch.Tensor | None = None,
        pose_mode: str = "inferred",
        generator: torch.Generator | BatchNoiseRows | None = None,
        n_hypotheses: int = 0,
        remembered: dict[str, torch.Tensor] | None = None,
    ) -> LossOutput:
        """Paper eq. 4 averaged over the batch.

        images (B, H, W) normalised as the noise_sigma; ctf (B,) or None (no CTF); stage 1 renders
        the base structure at n_pose pose samples per image, stage 2 decodes n_conf conformation
        samples and renders each at n_pose pose samples (the log-mean runs over all n_conf*n_pose).
        pose_mode "given" uses given_rotation (B, 3, 3) / given_shift (B, 2) A as they are (no pose
        samples, no pose KL); "refine" samples corrections to them (latent 0 = the given pose).
        generator: the sampling noise's generator, or a BatchNoiseRows when this process holds some rows
        of a larger batch (data-parallel training: the same noise per image as one process).
        n_hypotheses: stage 1 with ``weights.hypothesis_pull`` > 0 only: rotations drawn uniformly per image
        and scored beside the posterior samples as hypotheses the pose head's mean is pulled towards
        (``hypothesis_pull``; not in the paper).
        remembered: what earlier visits found for each image (``atomvae.train.particle_memory``): "rotation"
        (B, 3, 3) and "shift" (B, 2) A, scored again in stage 1 with ``weights.memory_near`` perturbations as
        further pose hypotheses; "latent" (B, latent_conf), scored again by the stage-2 conformation search.
        What the searches find comes back in ``LossOutput.found``.
        """
        mode = get_pose_mode(pose_mode)
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        mode.check_given(given_rotation, given_shift)
        batch = images.shape[0]
        remembered = remembered or {}
        found: dict[str, torch.Tensor] = {}
        # The networks may run under the caller's autocast (bf16 on CUDA).
        h = self.encoder(self.encoder_input(images, ctf))
        zero = _full(h).new_zeros(batch)
        kl_conf = backbone = outliers = peptide = contacts = center_sq = zero
        clash = heavy_clash = orientation = zero

        # Stage 1: the pose head's input as stage 2 will give it, without gradient (module docstring).
        searching = stage == 2 and weights.search_candidates > 0
        encoder_fit = search_gain = zero
        with torch.set_grad_enabled(stage == 2 and torch.is_grad_enabled()):
            mu_c, sigma_c = (_full(t) for t in self.conf_posterior(h))
            eps = standard_normal((batch, n_conf, mu_c.shape[-1]), generator, mu_c.device, mu_c.dtype)
            if searching:
                # The samples are drawn around the best latent the likelihood finds (LossWeights, "search");
                # the encoder learns to propose it.
                rotation0, shift0 = self._search_pose(h, mu_c.detach(), mode, given_rotation, given_shift)
                best, search_gain = self.search_conformations(
                    images,
                    ctf,
                    rotation0,
                    shift0,
                    mu_c.detach(),
                    weights.search_candidates,
                    weights.search_local,
                    generator,
                    binning=weights.search_binning,
                    remembered=remembered.get("latent"),
                    resolution=weights.search_resolution,
                )
                found["latent"] = best
                z_conf = best.unsqueeze(1) + weights.search_width * eps  # (B, Kc, latent)
                encoder_fit = -torch.distributions.Normal(mu_c, sigma_c).log_prob(best).sum(dim=-1)
            else:
                z_conf = mu_c.unsqueeze(1) + sigma_c.unsqueeze(1) * eps  # (B, Kc, latent)
            d = self.decoder.representation(z_conf)  # (B, Kc, D)
        mu_p: torch.Tensor | None  # None when the mode takes poses without the pose head
        sigma_p: torch.Tensor | None
        if mode.uses_pose_head:
            mu_p, sigma_p = (_full(t) for t in self.pose_head(h, d))  # (B, Kc, 8)
        else:
            mu_p = sigma_p = None

        # Geometry, rendering and the likelihood in full precision: Gram-Schmidt and sums over
        # thousands of pixels are not safe in bf16.
        with torch.autocast(device_type=zero.device.type, enabled=False):
            if stage == 1:
                coords = self.base_render_coords.to(zero.dtype).expand(batch, 1, -1, 3)
            else:
                rot, trans = self.decoder.frames(_full(d))
                chi = self.decoder.torsions(_full(d))  # (B, Kc, R, 4) radians, or None: rigid residues
                coords = self.decoder.atoms(rot, trans, "render", chi)  # (B, Kc, A_r, 3)
                if searching:  # the search posterior N(best, width^2): its KL has no gradient
                    kl_conf = kl_diagonal_normal(best, torch.full_like(best, weights.search_width))
                else:
                    kl_conf = kl_diagonal_normal(mu_c, sigma_c)
                c_atoms, n_atoms = self.decoder.atoms(rot, trans, "C"), self.decoder.atoms(rot, trans, "N")
                bond = backbone_continuity(c_atoms, n_atoms, self.bonded_to_next, weights.peptide_bond_length)
                backbone = bond.mean(dim=1)
                if weights.bond_outliers > 0:
                    outliers = bond_outliers(
                        c_atoms,
                        n_atoms,
                        self.bonded_to_next,
                        weights.peptide_bond_length,
                        weights.bond_tolerance,
                    ).mean(dim=1)
                if weights.peptide_geometry > 0:
                    every_ca = self.decoder.atoms(rot, trans, "CA")
                    peptide = peptide_geometry(
                        every_ca, c_atoms, n_atoms, self.base_peptide_distances, self.bonded_to_next
                    ).mean(dim=1)
                if weights.local_contacts > 0:
                    contacts = local_contact_penalty(
                        self.decoder.atoms(rot, trans, "contacts"),
                        self.contact_first,
                        self.contact_second,
                        self.contact_limit,
                    ).mean(dim=1)
                center_sq = centering(self.decoder.center_of_mass(rot, trans, chi=chi)).mean(dim=1)
                if weights.orientation > 0:
                    orientation = neighbour_orientation(
                        rot, self.base_relative_orientations, self.bonded_to_next
                    ).mean(dim=1)
                if weights.clash > 0:
                    # On the first conformation sample of each image only: the samples are i.i.d., so
                    # this is an unbiased estimate of their mean at 1/n_conf of the cost.
                    ca_atoms = self.decoder.atoms(rot[:, :1], trans[:, :1], "CA")
                    clash = clash_penalty(ca_atoms, self.clash_pairs, weights.clash_distance).mean(dim=1)
                if weights.heavy_clash > 0:
                    # The costliest structure term (~8 residue pairs per residue x K^2 atom distances per
                    # structure, without autograd; BENCHMARKS.md, "Training step against the renderer"), so
                    # on the first conformation sample of the first heavy_clash_images images only: the
                    # images of a batch are in random order and the samples i.i.d., so its mean there is an
                    # unbiased estimate of the batch mean.
                    n = min(batch, weights.heavy_clash_images or batch)
                    first_chi = chi if chi is None or chi.dim() == 2 else chi[:n, :1]  # (R, 4): shared
                    # (n, 1, R*K, 3)
                    padded = self.decoder.atoms(rot[:n, :1], trans[:n, :1], "padded", first_chi)
                    heavy_clash = heavy_atom_clash_penalty(
                        padded,
                        self.padded_backbone_cb_mask
                        if weights.heavy_clash_atoms == "backbone_cb"
                        else self.padded_atom_mask,
                        self.clash_pairs,
                        weights.heavy_clash_distance,
                        reference=self.padded_base_coords,
                    ).mean(dim=1)  # (n,)

            # (B, Kc, Kp, 3, 3), (B, Kc, Kp, 2) A; given poses: Kc = Kp = 1 and no pose KL
            rotation, shift, kl_pose = mode.sample(
                mu_p,
                sigma_p,
                n_pose,
                self.config,
                given_rotation,
                given_shift,
                generator=generator,
                dtype=coords.dtype,
            )
            kl_pose = zero if kl_pose is None else kl_pose

            target = images.to(coords.dtype)[:, None, None]
            # (B, Kc, Kp, H, W)
            predicted = self.render_images(coords.unsqueeze(2), rotation, shift, ctf, target)
            log_lik = gaussian_log_likelihood(target, predicted, self.noise_sigma)
            per_image = iwae_log_mean_likelihood(log_lik.flatten(start_dim=1))  # (B,)

            pull = zero
            if stage == 1 and weights.hypothesis_pull > 0 and mu_p is not None:
                pull, (found["rotation"], found["shift"]) = self.hypothesis_pull(
                    mode,
                    mu_p,
                    (rotation, shift, log_lik),
                    coords,
                    ctf,
                    target,
                    n_hypotheses,
                    (given_rotation, given_shift),
                    generator,
                    (remembered["rotation"], remembered["shift"]) if "rotation" in remembered else None,
                    weights.memory_near,
                )

            sleep = zero
            if weights.sleep > 0 and stage == 2:
                sleep = self.sleep_loss(
                    images,
                    ctf,
                    rotation.reshape(batch, -1, 3, 3)[:, 0],
                    shift.reshape(batch, -1, 2)[:, 0],
                    generator,
                )
            per_image_loss = (
                -per_image
                + weights.sleep * sleep
                + weights.beta_conf * kl_conf
                + weights.beta_pose * kl_pose
                + weights.backbone * backbone
                + weights.bond_outliers * outliers
                + weights.peptide_geometry * peptide
                + weights.local_contacts * contacts
                + weights.centering * center_sq
                + weights.clash * clash
                + weights.orientation * orientation
                + weights.search_encoder * encoder_fit
                + weights.hypothesis_pull * pull
            )
            total = per_image_loss.mean() + weights.heavy_clash * heavy_clash.mean()
        terms = {
            "nll": float(-per_image.detach().mean()),
            "kl_conf": float(kl_conf.detach().mean()),
            "kl_pose": float(kl_pose.detach().mean()),
            "backbone": float(backbone.detach().mean()),
            "bond_outliers": float(outliers.detach().mean()),
            "peptide_geometry": float(peptide.detach().mean()),
            "local_contacts": float(contacts.detach().mean()),
            "centering": float(center_sq.detach().mean()),
            "clash": float(clash.detach().mean()),
            "heavy_clash": float(heavy_clash.detach().mean()),
            "orientation": float(orientation.detach().mean()),
            "sleep": float(sleep.detach().mean()),
            "search_encoder": float(encoder_fit.detach().mean()),
            "search_gain": float(search_gain.mean()),
            "hypothesis_pull": float(pull.detach().mean()),
            "amplitude": float(self.amplitude.detach()),
            **self._render_sigma_terms(),
            "total": float(total.detach()),
        }
        return LossOutput(total=total, per_image_log_likelihood=per_image.detach(), terms=terms, found=found)

    def _search_pose(
        self,
        h: torch.Tensor,
        mu_c: torch.Tensor,
        mode,
        given_rotation: torch.Tensor | None,
        given_shift: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pose (B, 3, 3), (B, 2) A each image's conformation search renders at: the given pose, or the
        pose head's mean at the encoder's mean conformation (as ``encode`` reports it)."""
        with torch.no_grad():
            if mode.uses_pose_head:
                mu_p = _full(self.pose_head(h, self.decoder.representation(mu_c))[0])
            else:
                mu_p = mu_c.new_zeros(mu_c.shape[0], self.config.latent_pose)
            rotation, shift = mode.mean_pose(mu_p, self.config, given_rotation, given_shift)
        return rotation.to(mu_c.dtype), shift.to(mu_c.dtype)

    @torch.no_grad()
    def search_conformations(
        self,
        images: torch.Tensor,
        ctf: CTFParams | None,
        rotation: torch.Tensor,
        shift: torch.Tensor,
        start: torch.Tensor,
        n_candidates: int,
        local_scale: float,
        generator: torch.Generator | BatchNoiseRows | None = None,
        rounds: int = 1,
        binning: int = 1,
        remembered: torch.Tensor | None = None,
        resolution: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best latent of each image by log p(y | z) + log p(z) (nats), and its gain over ``start``.
        With ``binning`` > 1 (and the box divisible by it) the candidates are first scored on the binned
        images (``binned_renders``, a quarter of the render cost at 2) and only the best n_candidates // 4
        (and the start) at full resolution. With ``resolution`` > 0 (A) log p(y | z) is taken over the
        frequencies below it only, from the renders' analytic spectra (``band_likelihood``; no real-space
        render, no CTF FFTs).

        images (B, H, W); ctf (B,) or None; rotation (B, 3, 3), shift (B, 2) A: the pose each candidate is
        rendered at; start (B, latent): the first candidate (the encoder's mean). Each round scores the
        current best, n_candidates // 4 latents drawn around it (sd ``local_scale``, halved each round) and,
        in the first round, the rest drawn from the prior N(0, I), the same draws for every image of the
        batch (decoded once: the decodes were ~40% of the search); ``remembered`` (B, latent), each image's
        best latent of earlier visits (``atomvae.train.particle_memory``; NaN rows: none yet), is a
        first-round candidate too. Returns best (B, latent), gain (B,) >= 0.
        """
        batch, latent = start.shape
        with torch.autocast(device_type=start.device.type, enabled=False):
            band = None
            if resolution > 0:
                if self.render_kinds is not None:
                    raise ValueError("the band-limited search needs one render width")
                band = BandLikelihood(
                    images.to(start.dtype),
                    ctf,
                    shift.to(start.dtype),
                    self.box,
                    self.pixel_size,
                    resolution,
                    float(self.noise_sigma),
                )
                sigma = float(self.render_sigma)
                mass = None if self.render_mass is None else self.render_mass.to(start.dtype)
                amplitude = None if self.config.amplitude == "per_image" else self.amplitude.detach()
            target = images.to(start.dtype)[:, None]
            rotation, shift = rotation[:, None].to(start.dtype), shift[:, None].to(start.dtype)

            def decode(z: torch.Tensor, n_shared: int) -> torch.Tensor:
                """(B, M, latent) whose last n_shared columns are the same in every row -> (B, M, A, 3)."""
                if n_shared == 0:
                    return self.decoder(z, "render")
                shared = self.decoder(z[0, z.shape[1] - n_shared :], "render")
                shared = shared.expand(z.shape[0], *shared.shape)
                if n_shared == z.shape[1]:
                    return shared
                return torch.cat([self.decoder(z[:, : z.shape[1] - n_shared], "render"), shared], dim=1)

            def score(z: torch.Tensor, n_shared: int = 0) -> torch.Tensor:  # (B, M, latent) -> (B, M) nats
                if band is not None:
                    log_lik = band(decode(z, n_shared), rotation, sigma, mass, amplitude)
                else:
                    predicted = self.render_images(decode(z, n_shared), rotation, shift, ctf, target)
                    log_lik = gaussian_log_likelihood(target, predicted, self.noise_sigma)
                return log_lik - 0.5 * z.square().sum(-1)

            coarse_score = None
            if binning > 1 and self.box % binning == 0:
                # Binned pixels average binning^2 independent noises: their sd is noise_sigma / binning.
                side = self.box // binning
                blocks = target.unflatten(-1, (side, binning)).unflatten(-3, (side, binning))
                binned_target = blocks.mean(dim=(-3, -1))

                def coarse_score(z: torch.Tensor, n_shared: int) -> torch.Tensor:  # (B, M, latent) -> (B, M)
                    renders = self.binned_renders(decode(z, n_shared), rotation, shift, ctf, binning)
                    predicted = self._scaled(renders, binned_target)
                    noise = self.noise_sigma / binning
                    return gaussian_log_likelihood(binned_target, predicted, noise) - 0.5 * z.square().sum(-1)

            # The start is scored with the first round's candidates: one decode and render per round.
            best = start
            best_score = start_score = start.new_full((batch,), -math.inf)
            n_local = max(1, n_candidates // 4)
            rows = torch.arange(batch, device=start.device)
            for round_index in range(rounds):
                scale = local_scale / 2**round_index
                near = best[:, None] + scale * standard_normal(
                    (batch, n_local, latent), generator, start.device, start.dtype
                )
                parts = [near]
                n_shared = 0
                if round_index == 0:
                    parts.insert(0, start[:, None])
                    if remembered is not None:  # NaN rows: nothing remembered yet, the start stands in
                        known = torch.isfinite(remembered).all(dim=-1, keepdim=True)
                        parts.insert(1, torch.where(known, remembered.to(start.dtype), start)[:, None])
                    if n_candidates > n_local:
                        n_shared = n_candidates - n_local
                        prior = standard_normal(
                            (n_shared, latent), generator, start.device, start.dtype, shared=True
                        )
                        parts.append(prior.expand(batch, n_shared, latent))
                candidates = torch.cat(parts, dim=1)  # (B, M, latent), the last n_shared the same in each row
                if coarse_score is not None and candidates.shape[1] > n_local + 1:
                    # Coarse to fine: the binned images keep the best n_local (and, in the first round, the
                    # start, so that the gain is measured at full resolution); only those are rendered full.
                    coarse = coarse_score(candidates, n_shared)
                    if round_index == 0:
                        coarse[:, 0] = math.inf
                    keep = coarse.topk(n_local + (1 if round_index == 0 else 0), dim=1).indices
                    candidates, n_shared = candidates[rows[:, None], keep], 0
                scores = score(candidates, n_shared)
                if round_index == 0:
                    start_score = scores[:, 0]
                top = scores.argmax(dim=1)
                better = scores[rows, top] > best_score
                best = torch.where(better[:, None], candidates[rows, top], best)
                best_score = torch.where(better, scores[rows, top], best_score)
        return best, best_score - start_score

    def hypothesis_pull(
        self,
        mode,
        mu_p: torch.Tensor,
        samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        coords: torch.Tensor,
        ctf: CTFParams | None,
        images: torch.Tensor,
        n_hypotheses: int,
        given: tuple[torch.Tensor | None, torch.Tensor | None],
        generator: torch.Generator | BatchNoiseRows | None,
        remembered: tuple[torch.Tensor, torch.Tensor] | None = None,
        n_near: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The stage-1 pull of the pose head's mean towards its best-scoring pose hypothesis, (B,) per image
        (``LossWeights.hypothesis_pull``; not in the paper), and that hypothesis.

        mu_p (B, Kc, 8): the pose posterior's mean; samples: the loss's posterior samples as rotation
        (B, Kc, Kp, 3, 3), shift (B, Kc, Kp, 2) A and their log-likelihoods (B, Kc, Kp); coords (B, 1, A, 3)
        the base; images (B, 1, 1, H, W). The hypotheses are the mean pose itself, the posterior samples,
        where the pose mode allows a global search n_hypotheses rotations drawn uniformly on SO(3) at the
        mean's shift, and with ``remembered`` (each image's best pose so far: rotation (B, 3, 3), shift
        (B, 2) A) that pose and n_near perturbations of it (turns of ``MEMORY_NEAR_DEGREES`` sd, halved
        from one to the next, and shifts of half a pixel sd): a search that keeps what it found. All are
        scored by the likelihood without gradient. Returns the pull
        gain * (|R_mean - R_best|_F^2 + |t_mean - t_best|^2 / pixel_size^2), averaged over Kc, with gain the
        best hypothesis's log-likelihood minus the mean's (nats, >= 0, detached: zero once the mean scores
        best, strongest where a hypothesis explains the image much better), and the best hypothesis of
        each image's first conformation sample, rotation (B, 3, 3), shift (B, 2) A.
        """
        rotation, shift, log_lik = samples
        batch, n_conf = mu_p.shape[:2]
        mean_rotation, mean_shift = mode.latent_to_pose(mu_p.to(coords.dtype), self.config, *given)
        with torch.no_grad():
            extra_rotation = mean_rotation.detach().unsqueeze(2)  # (B, Kc, 1, 3, 3)
            extra_shift = mean_shift.detach().unsqueeze(2)  # (B, Kc, 1, 2)
            if n_hypotheses > 0 and mode.global_hypotheses:
                drawn = mode.hypothesis_rotations(
                    batch, n_conf * n_hypotheses, generator, coords.device, coords.dtype
                ).reshape(batch, n_conf, n_hypotheses, 3, 3)
                extra_rotation = torch.cat([extra_rotation, drawn], dim=2)
                extra_shift = extra_shift.expand(-1, -1, extra_rotation.shape[2], -1)
            if remembered is not None:
                near_rotation, near_shift = self._near_poses(remembered, n_near, generator, coords.dtype)
                extra_rotation = torch.cat(
                    [extra_rotation, near_rotation[:, None].expand(-1, n_conf, -1, 3, 3)], 2
                )
                extra_shift = torch.cat([extra_shift, near_shift[:, None].expand(-1, n_conf, -1, 2)], 2)
            predicted = self.render_images(coords.unsqueeze(2), extra_rotation, extra_shift, ctf, images)
            extra_log_lik = gaussian_log_likelihood(images, predicted, self.noise_sigma)  # (B, Kc, M)
            all_rotation = torch.cat([extra_rotation, rotation.detach().expand(batch, n_conf, -1, 3, 3)], 2)
            all_shift = torch.cat([extra_shift, shift.detach().expand(batch, n_conf, -1, 2)], dim=2)
            all_log_lik = torch.cat([extra_log_lik, log_lik.detach().expand(batch, n_conf, -1)], dim=2)
            best_log_lik, best = all_log_lik.max(dim=2)  # (B, Kc)
            gain = best_log_lik - extra_log_lik[..., 0]
            index = best[:, :, None, None]  # (B, Kc, 1, 1)
            best_rotation = all_rotation.gather(2, index[..., None].expand(-1, -1, 1, 3, 3))[:, :, 0]
            best_shift = all_shift.gather(2, index.expand(-1, -1, 1, 2))[:, :, 0]
        distance = (mean_rotation - best_rotation).square().sum(dim=(-2, -1)) + (
            mean_shift - best_shift
        ).square().sum(dim=-1) / self.pixel_size**2
        return (gain * distance).mean(dim=1), (best_rotation[:, 0], best_shift[:, 0])

    def _near_poses(
        self,
        remembered: tuple[torch.Tensor, torch.Tensor],
        n_near: int,
        generator: torch.Generator | BatchNoiseRows | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The remembered pose (B, 3, 3), (B, 2) A and n_near perturbations of it: (B, 1 + n_near, 3, 3),
        (B, 1 + n_near, 2) A. Perturbation k turns by a rotation vector of sd MEMORY_NEAR_DEGREES / 2^(k % 4)
        per axis (coarse to fine, so a far optimum and the last degree are both within reach) and shifts by
        half a pixel sd."""
        rotation, shift = (t.to(dtype) for t in remembered)
        batch = rotation.shape[0]
        noise = standard_normal((batch, n_near, 5), generator, rotation.device, dtype)
        scale = math.radians(MEMORY_NEAR_DEGREES) / 2.0 ** (torch.arange(n_near, device=rotation.device) % 4)
        turn = roma.rotvec_to_rotmat(noise[..., :3] * scale.to(dtype)[:, None])  # (B, n_near, 3, 3)
        near_rotation = rotation[:, None] @ turn
        near_shift = shift[:, None] + 0.5 * self.pixel_size * noise[..., 3:]
        return torch.cat([rotation[:, None], near_rotation], 1), torch.cat([shift[:, None], near_shift], 1)

    def sleep_loss(
        self,
        images: torch.Tensor,
        ctf: CTFParams | None,
        rotation: torch.Tensor,
        shift: torch.Tensor,
        generator: torch.Generator | BatchNoiseRows | None = None,
    ) -> torch.Tensor:
        """-log q(z | y~) per image (B,), nats: the encoder's error on synthetic particles y~ whose latents z
        are known (the sleep phase of reweighted wake-sleep; ``LossWeights.sleep``).

        images (B, H, W) only set the synthetic images' scale (their signal variance: the per-dataset
        variance above the noise); rotation (B, 3, 3), shift (B, 2) A and ctf (B,) are the poses and CTFs
        the synthetic particles are rendered at (the batch's own, so they look like the data). The decoder
        and renderer run without gradients: only the encoder learns here.
        """
        batch = images.shape[0]
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            z = standard_normal((batch, self.config.latent_conf), generator, images.device, torch.float32)
            coords = self.decoder(z, "render")  # (B, A_r, 3)
            rotation, shift = rotation.detach().to(coords.dtype), shift.detach().to(coords.dtype)
            clean = self._unit_renders(coords, rotation, shift, ctf)
            noise_var = self.noise_sigma.square()
            signal_var = (images.float().var(dim=(-2, -1)).mean() - noise_var).clamp_min(1e-3 * noise_var)
            scale = torch.sqrt(signal_var / clean.var(dim=(-2, -1)).mean().clamp_min(1e-30))
            noise = standard_normal(tuple(clean.shape), generator, clean.device, clean.dtype)
            synthetic = scale * clean + self.noise_sigma * noise
        h = self.encoder(self.encoder_input(synthetic, ctf))
        mu, sigma_q = (_full(t) for t in self.conf_posterior(h))
        return -torch.distributions.Normal(mu, sigma_q).log_prob(z).sum(dim=-1)

    # ------------------------------------------------------------------ using a trained model
    def encoder_input(self, images: torch.Tensor, ctf: CTFParams | None) -> torch.Tensor:
        """What the encoder sees of images (B, H, W): as they are, or phase-flipped (config.encoder_input)."""
        if self.config.encoder_input == "phase_flipped" and ctf is not None:
            with torch.autocast(device_type=images.device.type, enabled=False):
                return phase_flip(images.float(), ctf, self.pixel_size).to(images.dtype)
        return images

    @torch.no_grad()
    def encode(
        self,
        images: torch.Tensor,
        pose_mode: str = "inferred",
        given_rotation: torch.Tensor | None = None,
        given_shift: torch.Tensor | None = None,
        ctf: CTFParams | None = None,
        search: LossWeights | None = None,
        search_rounds: int = 3,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """images (B, H, W) and their CTFs (B,) (used when the encoder sees phase-flipped images) ->
        mu_conf, sigma_conf (B, latent_conf), and the pose the model uses for each image as rotation
        (B, 3, 3) and shift (B, 2) A: in ``inferred`` the pose head's mean at z_conf = mu_conf (the centre
        of the conformation samples it was trained on, in both stages), in ``refine`` the given pose
        corrected by that mean, in ``given`` the given pose (given_rotation (B, 3, 3), given_shift (B, 2) A,
        needed by refine and given). pose_mu,
        pose_sigma (B, 8): the pose posterior at z_conf = mu_conf (all zeros / ones in ``given``).

        search: the run's loss weights when it was trained with conformation search
        (``search_candidates`` > 0): mu_conf is then the best latent a search of ``search_rounds`` rounds
        from the encoder's mean finds (``search_conformations``, candidates drawn from ``generator``) and
        sigma_conf the search posterior's width."""
        mode = get_pose_mode(pose_mode)
        mode.check_given(given_rotation, given_shift)
        h = self.encoder(self.encoder_input(images, ctf))
        mu_c, sigma_c = self.conf_posterior(h)
        if search is not None and search.search_candidates > 0:
            rotation0, shift0 = self._search_pose(h, _full(mu_c), mode, given_rotation, given_shift)
            mu_c, _ = self.search_conformations(
                images,
                ctf,
                rotation0,
                shift0,
                _full(mu_c),
                search.search_candidates,
                search.search_local,
                generator,
                rounds=search_rounds,
                binning=search.search_binning,
                resolution=search.search_resolution,
            )
            sigma_c = torch.full_like(mu_c, search.search_width)
        if mode.uses_pose_head:
            mu_p, sigma_p = self.pose_head(h, self.decoder.representation(mu_c))
        else:
            mu_p = h.new_zeros(h.shape[0], self.config.latent_pose)
            sigma_p = torch.ones_like(mu_p)
        rotation, shift = mode.mean_pose(_full(mu_p), self.config, given_rotation, given_shift)
        return {
            "mu_conf": mu_c,
            "sigma_conf": sigma_c,
            "pose_mu": mu_p,
            "pose_sigma": sigma_p,
            "rotation": rotation,
            "shift": shift,
        }

    def decode(self, z_conf: torch.Tensor, atoms: str = "all") -> torch.Tensor:
        """z_conf (..., latent_conf) -> coordinates (..., A, 3) A in the model frame. atoms: "all"
        (every heavy atom of the base) or "render" (the atoms the renderer sees). All-atom structures
        have their side chains repacked (``config.side_chain_relaxation_steps``; the backbone is kept)."""
        if atoms != "all" or self.config.side_chain_relaxation_steps == 0:
            return self.decoder(z_conf, atoms)
        d = self.decoder.representation(z_conf)
        rot, trans = self.decoder.frames(d)
        chi = self.relax_side_chains(rot, trans, self.decoder.torsions(d))
        return self.decoder.atoms(rot, trans, "all", chi)

    def relax_side_chains(
        self, rot: torch.Tensor, trans: torch.Tensor, chi: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Side-chain torsions (..., R, 4) radians that clear the heavy-atom clashes of the structures in the
        frames rot (..., R, 3, 3), trans (..., R, 3) A, the backbone kept: Adam on the chi offsets (from
        ``chi`` or the base's rotamers) against the heavy-atom clash penalty at RELAX_CLASH_DISTANCE,
        ``config.side_chain_relaxation_steps`` steps. The rotamer repacking of a modelling program, for
        output structures whose backbones moved where the base's side chains do not fit (closed states of
        an open base: BENCHMARKS.md, "Side chains against the clash term")."""
        rot, trans = rot.detach(), trans.detach()
        start = rot.new_zeros(*rot.shape[:-2], 4) if chi is None else chi.detach().expand(*rot.shape[:-2], 4)
        flat_rot, flat_trans = rot.reshape(-1, *rot.shape[-3:]), trans.reshape(-1, *trans.shape[-2:])
        result = start.reshape(-1, *start.shape[-2:]).clone()

        def penalty(rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:  # (S,) A^2
            padded = self.decoder.atoms(flat_rot[rows], flat_trans[rows], "padded", offsets)
            return heavy_atom_clash_penalty(
                padded, self.padded_atom_mask, self.clash_pairs, RELAX_CLASH_DISTANCE, self.padded_base_coords
            )

        with torch.enable_grad(), torch.autocast(device_type=rot.device.type, enabled=False):
            with torch.no_grad():  # only the structures that clash are repacked
                rows = torch.nonzero(penalty(torch.arange(len(result)), result) > RELAX_TOLERANCE)[:, 0]
            offsets = result[rows].clone().requires_grad_(True)
            optimizer = torch.optim.Adam([offsets], lr=RELAX_LEARNING_RATE)
            for _ in range(self.config.side_chain_relaxation_steps if len(rows) else 0):
                current = penalty(rows, offsets)
                if not current.requires_grad or bool((current <= RELAX_TOLERANCE).all()):
                    break
                optimizer.zero_grad()
                current.sum().backward()
                optimizer.step()
        result[rows] = offsets.detach()
        return result.reshape(start.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n structures (n, A, 3) A (all atoms, model frame) decoded from z_conf ~ N(0, I)."""
        device = self.base_coords.device
        z = torch.randn(n, self.config.latent_conf, generator=generator, device=device)
        return self.decode(z, "all")

    @torch.no_grad()
    def initialise_amplitude(
        self,
        images: torch.Tensor,
        ctf: CTFParams | None,
        rotation: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> float:
        """Set the image amplitude from data before training; returns it.

        With poses (rotation (B, 3, 3), shift (B, 2) A) it is the least-squares scale of base-structure
        renders onto the images (each with its mean removed). Without, it matches variances: the images'
        mean per-image variance minus noise_sigma^2 against that of base renders at uniformly random
        rotations (no shift).
        """
        batch = images.shape[0]
        coords = self.base_render_coords
        poses_given = rotation is not None
        if rotation is None:
            rotation = random_rotations(batch, generator=generator, dtype=coords.dtype, device=coords.device)
            shift = coords.new_zeros(batch, 2)
        elif shift is None:
            shift = coords.new_zeros(batch, 2)
        renders = self._unit_renders(coords, rotation.to(coords.dtype), shift.to(coords.dtype), ctf)
        images = images.to(renders.dtype)
        amplitude = None
        if poses_given:
            # per-image means removed: data normalisation may subtract the mean, renders keep theirs
            y = images - images.mean(dim=(-2, -1), keepdim=True)
            r = renders - renders.mean(dim=(-2, -1), keepdim=True)
            amplitude = (y * r).sum() / r.square().sum().clamp_min(1e-30)
            if not amplitude > 0:
                warnings.warn(
                    "images anti-correlate with base renders at the given poses (inverted "
                    "contrast?); setting the amplitude by variance matching instead",
                    stacklevel=2,
                )
                amplitude = None
        if amplitude is None:
            signal_var = (images.var(dim=(-2, -1)).mean() - self.noise_sigma.square()).clamp_min(1e-12)
            amplitude = torch.sqrt(signal_var / renders.var(dim=(-2, -1)).mean().clamp_min(1e-30))
        self.log_amplitude.copy_(amplitude.log())
        return float(amplitude)
