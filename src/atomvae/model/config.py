"""Model and loss configuration (paper section 9 numbers as defaults).

Every number of the architecture and of the objective is a field here, never a literal in the
model code, so the ``paper`` preset is just the defaults and smaller presets override fields.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAVY_CLASH_ATOMS = ("heavy", "backbone_cb")
SIDE_CHAIN_MODES = ("rigid", "shared", "decoded")
RENDER_ATOM_KINDS = ("heavy", "backbone", "CA", "residue")
AMPLITUDE_MODES = ("learnt", "per_image")
ENCODER_INPUTS = ("raw", "phase_flipped")
POSE_MODES = ("inferred", "given", "refine")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the VAE (paper section 9).

    Paper values are the defaults. Fields that the paper does not fix (scales of the pose and delta
    outputs, the leaky-ReLU slope) carry our choice and say why below.
    """

    image_size: int = 64  # pixels per side of the (downsampled) particle image the encoder sees
    latent_conf: int = 32  # conformation latent dimension
    latent_pose: int = 8  # pose latent: 2D shift + 6D rotation
    encoder_widths: tuple[int, ...] = (2048, 1024, 512, 512)
    decoder_width: int = 256
    decoder_blocks: int = 5
    decoded_dim: int = 512  # width of the decoded representation d
    pose_width: int = 32
    pose_layers: int = 3
    # What the renderer sees (the output is all-atom either way): "heavy" | "backbone" | "CA" atoms of unit
    # mass, or "residue": a few pseudo-atoms per residue at the centroids of its backbone and side-chain
    # lobes, each weighing its atoms' summed forward scattering (physics.coarse_grain).
    render_atoms: str = "heavy"
    render_sigma: float = 1.0  # A, Gaussian width of each rendered atom (the start value when learnt)
    # Learn one global Gaussian width: the data's blur (atomic B-factors, motion, detector MTF, pixel
    # averaging) is never stated in a STAR file, and a fixed width that is wrong biases the structure.
    learn_render_sigma: bool = False
    # With "residue" rendering and a learnt width: one width per pseudo-atom kind (backbone, proximal and
    # distal side chain). The base's side-chain rotamers are not the particles' (adenylate kinase: 27% of
    # side-chain atoms > 2 A apart between the crystal structure and the DIMS frames, backbone superposed),
    # and a wider side-chain blob lets that uncertainty show as blur instead of as moved residues.
    render_sigma_by_kind: bool = False
    # Side chains: "rigid" (the paper: each residue moves as one body and keeps the base's rotamers),
    # "shared" (one learnt set of chi1-chi4 offsets from the base for every particle: the consensus
    # rotamers) or "decoded" (offsets decoded from the latent beside the frames, per conformation). With the
    # base's rotamers the image model's optimum is not the truth's backbone (BENCHMARKS.md, "Side-chain
    # torsions").
    side_chains: str = "rigid"
    # Not in the paper: Adam steps of side-chain repacking (AtomVAE.relax_side_chains) on every all-atom
    # structure the model outputs (samples, interpolations, exports); 0 = none. Only the chi torsions move.
    side_chain_relaxation_steps: int = 0
    # Image intensity scale: "learnt" (one global amplitude, a parameter) or "per_image" (the least-squares
    # scale of each render onto its image, in closed form: contrast varies between micrographs with ice
    # thickness, and a profiled scale never lags behind the structure the way a learnt one does).
    amplitude: str = "learnt"
    # What the encoder sees: the images as they are (the paper) or "phase_flipped" (each Fourier component
    # times the sign of the particle's CTF, physics.ctf.phase_flip), so the encoder need not learn the CTF.
    encoder_input: str = "raw"
    # A of in-plane shift per unit of the pose latent: the N(0, I) prior then says "particles are
    # centred to within a few A", which is what particle picking/extraction gives.
    shift_scale: float = 5.0
    # A of per-residue translation per unit of the decoder's delta output (the output layer is
    # zero-initialised; this sets how far one unit of it moves a residue).
    delta_translation_scale: float = 1.0
    # Not in the paper (0 there): residues also move in contiguous segments of this many (a segment a rigid
    # body about its base centroid, decoded beside the residues' own deltas). Domains move as bodies, and a
    # segment's motion gets the image gradient of all its residues at once where a residue alone, a blob
    # several A from where the particles put it, gets almost none (BENCHMARKS.md, "Segments").
    segment_size: int = 0
    # Not in the paper (0 there): the base's dynamic domains (k-means of the slowest elastic-network modes,
    # atomvae.structure.domains) also move as rigid bodies, composed over the segments: hinge motions
    # (adenylate kinase's NMP and LID closing) are one output each instead of a dozen segments in step.
    domain_bodies: int = 0
    # "refine" pose mode: the pose latent is a correction to the given pose. A unit latent turns
    # the rotation by about atan(refine_rotation_scale) (0.1 -> ~6 degrees) and shifts by
    # refine_shift_scale A, so the N(0, I) prior is a prior on small corrections.
    refine_rotation_scale: float = 0.1
    refine_shift_scale: float = 1.0
    leaky_relu_slope: float = 0.01  # the paper does not give it; haiku/JAX default is 0.01
    # Not in the paper (None there: the sigma layer starts at softplus(0) = 0.69 per pose-latent component):
    # the pose posterior's initial sigma. Against a 6D mean of norm ~0.4 at initialisation, 0.69 spreads
    # the pose samples over all of SO(3) (median 108 deg from the mean) and by ~4 A in shift: measured on
    # a tiny problem (BENCHMARKS.md, "Amortised stage 1"), that destroys a 3-deg warm start within 100
    # stage-1 steps, where a start at 0.02 keeps it. A value sets the sigma layer's bias to
    # softplus^-1(value).
    pose_sigma_init: float | None = None

    def __post_init__(self) -> None:
        if self.side_chain_relaxation_steps < 0:
            raise ValueError(
                f"side_chain_relaxation_steps must be >= 0, got {self.side_chain_relaxation_steps}"
            )
        if self.side_chains not in SIDE_CHAIN_MODES:
            raise ValueError(f"side_chains must be one of {SIDE_CHAIN_MODES}, got {self.side_chains!r}")
        if self.render_atoms not in RENDER_ATOM_KINDS:
            raise ValueError(f"render_atoms must be one of {RENDER_ATOM_KINDS}, got {self.render_atoms!r}")
        for name in (
            "image_size",
            "latent_conf",
            "decoder_width",
            "decoder_blocks",
            "decoded_dim",
            "pose_width",
            "pose_layers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_pose != 8:
            raise ValueError("latent_pose must be 8 (2D shift + 6D rotation)")
        if not self.encoder_widths:
            raise ValueError("encoder_widths must name at least one layer")
        if self.render_sigma_by_kind and not (self.render_atoms == "residue" and self.learn_render_sigma):
            raise ValueError("render_sigma_by_kind needs render_atoms 'residue' and learn_render_sigma")
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {self.encoder_input!r}")
        if self.amplitude not in AMPLITUDE_MODES:
            raise ValueError(f"amplitude must be one of {AMPLITUDE_MODES}, got {self.amplitude!r}")
        if self.pose_sigma_init is not None and self.pose_sigma_init <= 0:
            raise ValueError(f"pose_sigma_init must be > 0, got {self.pose_sigma_init}")
        if self.domain_bodies < 0 or self.domain_bodies == 1:
            raise ValueError(f"domain_bodies must be 0 (none) or >= 2, got {self.domain_bodies}")
        if self.segment_size < 0:
            raise ValueError(f"segment_size must be >= 0 (0: no segments), got {self.segment_size}")
        if self.render_sigma <= 0:
            raise ValueError(f"render_sigma must be > 0 A, got {self.render_sigma}")


@dataclass(frozen=True)
class LossWeights:
    """Weights of paper eq. 4 (section 9 values as defaults)."""

    beta_conf: float = 1.0  # KL of the conformation posterior
    beta_pose: float = 0.01  # KL of the pose posterior
    backbone: float = 0.01  # backbone continuity (peptide bond length)
    centering: float = 0.1  # squared norm of the centre of mass
    peptide_bond_length: float = 1.33  # A, C(i)-N(i+1)
    # Not in the paper (0 there): single strained peptide bonds, summed over bonds, beyond a tolerance
    # (losses.bond_outliers).
    bond_outliers: float = 0.0
    bond_tolerance: float = 0.1  # A
    # Not in the paper (0 there): the peptide unit's other distances (CA-N, C-CA, CA-CA across each peptide
    # bond) and its planarity kept at the base's (losses.peptide_geometry): with the bond length, the
    # backbone angles and omega.
    peptide_geometry: float = 0.0
    # Not in the paper (0 there): C-alpha clash penalty between residues that are not sequence
    # neighbours, closer than clash_distance (losses.clash_penalty).
    clash: float = 0.0
    # Not in the paper (0 there): keeps bonded neighbours' relative orientation near the base's
    # (losses.neighbour_orientation).
    orientation: float = 0.0
    clash_distance: float = 4.0  # A; non-adjacent C-alpha pairs in real proteins stay above ~3.8 A
    # Not in the paper (0 there): hard-sphere contacts of sequence neighbours' backbone and C-beta atoms,
    # the walls of the Ramachandran plot (losses.local_contact_penalty).
    local_contacts: float = 0.0
    # Not in the paper (0 there): heavy-atom clash penalty between residues that are not sequence
    # neighbours (losses.heavy_atom_clash_penalty).
    heavy_clash: float = 0.0
    # A; each atom pair's threshold is min(this, its distance in the base structure). 2.5 A leaves 0.5 A
    # of margin over the 2.0 A clash check (evaluate.stereochemistry) and sits below real contacts: the
    # adk base's closest non-neighbour heavy-atom pairs are salt bridges / H-bonds at 2.54-2.6 A, its
    # 4,096-member ground-truth ensemble's closest pairs 2.42-2.51 A.
    heavy_clash_distance: float = 2.5
    # Images of each batch (the first ones, one conformation sample each) the heavy-atom clash penalty is
    # evaluated on; None = all. Its cost (cdist over heavy atoms) is a few percent of a cpu-preset step
    # at 32 (BENCHMARKS.md, section "Training step against the renderer").
    heavy_clash_images: int | None = 32
    # Atoms the heavy-atom clash penalty sees: "heavy" (every heavy atom) or "backbone_cb" (N, CA, C, O and
    # CB: the atoms a rigid residue places right whatever its rotamer). With rigid residues the side chains
    # beyond CB are the base's, and in states the base is not in they clash where the particles' own do
    # not: adenylate kinase's true closed backbone carrying the open crystal structure's side chains scores
    # 240-370 nats of penalty (at weight 10), against ~0 on backbone and CB (BENCHMARKS.md, "Side chains
    # against the clash term").
    heavy_clash_atoms: str = "heavy"
    # Not in the paper (0 there): the "sleep" phase of reweighted wake-sleep (Bornschein & Bengio 2015).
    # Latents drawn from the prior are decoded, rendered at the batch's poses and CTFs with the data's noise,
    # and the encoder is trained to recover them (-log q(z | y_synthetic), nats per image, times this
    # weight; no gradient reaches the decoder). The importance-weighted bound alone teaches the encoder
    # little (its signal falls with the number of samples, Rainforth et al. 2018): on adk the conformation
    # posterior carried about one nat per image (BENCHMARKS.md, section "Image model").
    sleep: float = 0.0
    # Not in the paper (0 there): conformation search. The paper's encoder cannot tell the states apart on
    # its own (BENCHMARKS.md, "Conformation search": trained supervised on the true states it reaches r 0.65),
    # while the likelihood can. Each image's stage-2 samples are then drawn around the best of its encoder
    # mean and this many other latents (a quarter of them near that mean, the rest prior draws), scored by
    # log p(y | z) + log p(z) at the image's pose, without gradients; the encoder learns to predict that
    # best latent (-log q(best | y), times ``search_encoder``), so it proposes better starts as it learns.
    search_candidates: int = 0
    search_width: float = 0.1  # sd of the samples around the best latent (the search posterior's width)
    search_local: float = 0.5  # sd of the candidates drawn near the encoder's mean
    search_encoder: float = 1.0
    # Coarse to fine (as cryoDRGN2's pose search): candidates first scored on images binned by this factor
    # (2: 2x2 pixels averaged, a quarter of the render cost) against renders at the binned pixel size, and
    # only the best quarter rescored at full resolution. 1 = every candidate at full resolution.
    search_binning: int = 1
    # Candidates scored over the frequencies below this resolution (A) only, straight from the renders'
    # analytic spectra, the CTF on apply_ctf's padded grid (``model.band_likelihood``): no real-space render
    # and no FFT per candidate. 0 = the full likelihood, as the training's (both presets: at 8 A training
    # is 1.2x faster and the ensemble's recovered fraction holds on the standard data and issue 10's four
    # variations, but each particle's latent follows its state less well (conditional r with the closed
    # base 0.88 against 0.96); BENCHMARKS.md, "The band search at 8 A on issue 10's variations").
    search_resolution: float = 0.0
    # Keep each particle's best latent between its visits and score it again beside the fresh candidates
    # (``atomvae.train.particle_memory``): the search then builds on what it found in earlier epochs.
    search_memory: bool = False
    # Not in the paper (0 there): in stage 1, pull the pose head's mean pose towards the best-scoring of
    # several pose hypotheses (its own posterior samples and ``StageConfig.pose_hypotheses`` rotations drawn
    # uniformly), with a per-image weight of that hypothesis's log-likelihood gain over the mean (nats):
    # weight * gain * (|R_mean - R_best|_F^2 + |t_mean - t_best|^2 / pixel_size^2). The reparameterised
    # gradient of the bound only follows the likelihood locally around each sample, and at high SNR that
    # landscape has many local optima; this term lets the amortised head jump to a better hypothesis
    # (a winner-takes-all step). It vanishes once the mean scores best (``AtomVAE.loss``).
    hypothesis_pull: float = 0.0
    # With the hypothesis pull and a particle memory (``atomvae.train.particle_memory``, one best pose per
    # particle): perturbations of each image's remembered pose scored as further hypotheses per step, so the
    # search keeps and refines what it found rather than drawing afresh (``AtomVAE.hypothesis_pull``).
    memory_near: int = 8

    def __post_init__(self) -> None:
        if self.search_candidates < 0:
            raise ValueError(f"search_candidates must be >= 0, got {self.search_candidates}")
        if self.search_binning < 1:
            raise ValueError(f"search_binning must be >= 1, got {self.search_binning}")
        if self.search_resolution < 0:
            raise ValueError(f"search_resolution must be >= 0 A, got {self.search_resolution}")
        if self.search_resolution > 0 and self.search_binning > 1:
            raise ValueError("search_resolution and search_binning both cheapen the search: set one")
        if self.search_width <= 0 or self.search_local <= 0:
            raise ValueError("search_width and search_local must be > 0")
        if self.heavy_clash_distance <= 0:
            raise ValueError(f"heavy_clash_distance must be > 0 A, got {self.heavy_clash_distance}")
        if self.hypothesis_pull < 0:
            raise ValueError(f"hypothesis_pull must be >= 0, got {self.hypothesis_pull}")
        if self.memory_near < 0:
            raise ValueError(f"memory_near must be >= 0, got {self.memory_near}")
        if self.heavy_clash_atoms not in HEAVY_CLASH_ATOMS:
            raise ValueError(
                f"heavy_clash_atoms must be one of {HEAVY_CLASH_ATOMS}, got {self.heavy_clash_atoms!r}"
            )
        if self.heavy_clash_images is not None and self.heavy_clash_images < 1:
            raise ValueError(f"heavy_clash_images must be >= 1 (or None: all), got {self.heavy_clash_images}")
