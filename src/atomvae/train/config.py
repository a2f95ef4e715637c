"""Training configuration: frozen dataclasses, the ``paper`` and ``cpu`` presets, YAML round trip.

Every number of the training recipe is a field here (the model's numbers live in
``atomvae.model.config``). A YAML file overrides a preset field by field::

    stage1: {epochs: 50, n_pose: 32}
    model: {render_atoms: CA, render_sigma: 2.0}
    batch_size: 128

Unknown keys are an ``InputError`` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atomvae import __version__
from atomvae.errors import InputError, atomic_write_text
from atomvae.model.config import POSE_MODES, LossWeights, ModelConfig

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class StageConfig:
    """One training stage. Stage 1 trains the pose path on the fixed base structure (``n_conf`` unused);
    stage 2 trains everything with ``n_conf`` conformation samples x ``n_pose`` pose samples per image."""

    epochs: int
    n_pose: int
    n_conf: int = 1
    learning_rate: float = 3e-4
    # The learning rate is multiplied by ``lr_decay_factor`` at each of these epochs (counted from the start
    # of the stage): paper stage 1 halves it after 1000 epochs.
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 0.5
    # Stage 1 only, not in the paper (0 there): rotations drawn uniformly per image and step, scored by the
    # likelihood beside the posterior samples as hypotheses the pose head's mean is pulled towards (with
    # ``loss.hypothesis_pull`` > 0; ``AtomVAE.hypothesis_pull``). Each costs one render per image.
    pose_hypotheses: int = 0

    def with_epochs(self, epochs: int) -> StageConfig:
        """The same stage over ``epochs`` epochs, its decay milestones moved in proportion (floored, at least
        epoch 1). Why: the schedule is a shape, not a date (the paper halves stage 1's rate after half its
        epochs); kept as absolute epochs, a shorter stage (``--epochs-stage1 2`` against the cpu preset's
        decay at 6 of 8) would never decay and a longer one would decay early."""
        if self.epochs <= 0 or epochs == self.epochs:
            return dataclasses.replace(self, epochs=epochs)
        milestones = tuple(max(1, milestone * epochs // self.epochs) for milestone in self.lr_decay_epochs)
        return dataclasses.replace(self, epochs=epochs, lr_decay_epochs=milestones)

    def extended(self, epochs: int) -> StageConfig:
        """The same stage continued to ``epochs`` epochs (``atomvae train --resume --epochs-stage2``). Unlike
        ``with_epochs`` the decay milestones stay where they are: the epochs already trained ran under them,
        and the added epochs run at the schedule's last rate."""
        return dataclasses.replace(self, epochs=epochs)

    def learning_rate_at(self, epoch: int) -> float:
        """Learning rate during ``epoch`` (0-based, within the stage)."""
        n_decays = sum(1 for milestone in self.lr_decay_epochs if epoch >= milestone)
        return self.learning_rate * self.lr_decay_factor**n_decays


@dataclass(frozen=True)
class DataConfig:
    """How particles are split and calibrated. (Images are downsampled to ``model.image_size``: the encoder
    and the renderer see the same grid.)"""

    # Held-out fraction for validation log-likelihood (model selection across seeds, per-epoch curve).
    val_fraction: float = 0.05
    # At most this many held-out images are scored per validation pass (cost bound on CPU).
    max_val_images: int = 1024
    # Noise standard deviation in normalised image units; None = estimated from the particles'
    # background outside the particle radius (``atomvae.data.dataset.estimate_noise_sigma``).
    noise_sigma: float | None = None
    # Training images used to set the renderer's amplitude before training (AtomVAE.initialise_amplitude).
    n_calibration_images: int = 512
    # DataLoader worker processes (0 = load in the training process; the order is identical either way).
    num_workers: int = 0
    # Particles with NaN/Inf in their image or metadata: skipped with a warning (False) or an error (True).
    strict: bool = False
    # Rotation centre of the particles' poses in the base structure's coordinates (A): the model rotates the
    # base about this point. None = the base's centre of atoms, right for inferred poses. With --poses
    # given/refine it must be the centre the poses refer to: for a consensus refinement the map's box
    # centre in model coordinates; for `atomvae simulate` data truth.npz's `center` when the base is in the
    # simulated ensemble's input frame (0, 0, 0 when it is in gt_ensemble.pdb's centred frame).
    pose_center: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run computes with; the defaults are the paper's numbers (``PRESETS["paper"]`` adds its
    three seeds). Invalid values raise ``InputError``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(
        default_factory=lambda: StageConfig(epochs=2000, n_pose=128, lr_decay_epochs=(1000,))
    )
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=500, n_pose=4, n_conf=64))
    batch_size: int = 256
    # "inferred": poses learnt by the pose head; "given": poses from the STAR file, fixed (stage 1 is then
    # skipped: nothing of the pose path is trained); "refine": STAR poses as the start of a local refinement.
    pose_mode: str = "inferred"
    seed: int = 0
    # A run folder whose best checkpoint starts the weights (same base structure and model config) instead
    # of the paper's initialisation: fine-tuning, or continuing between rounds of pose search.
    init_from: str | None = None
    # Independent runs with seeds seed, seed+1, ...; the best by held-out log-likelihood is kept (paper).
    n_seeds: int = 1
    device: str = "auto"
    # bf16 autocast on CUDA only; the CPU route always runs float32.
    mixed_precision: bool = True
    checkpoint_every: int = 500  # steps
    validate_every: int = 1  # epochs
    log_every: int = 1  # steps

    def __post_init__(self) -> None:
        problems = []
        if self.pose_mode not in POSE_MODES:
            problems.append(f"pose_mode must be one of {', '.join(POSE_MODES)}, got {self.pose_mode!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("batch_size", "n_seeds", "checkpoint_every", "validate_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for stage_name in ("stage1", "stage2"):
            stage = getattr(self, stage_name)
            if stage.epochs < 0 or stage.n_pose < 1 or stage.n_conf < 1 or stage.learning_rate <= 0:
                problems.append(f"{stage_name}: epochs >= 0, n_pose >= 1, n_conf >= 1, learning_rate > 0")
            if stage.pose_hypotheses < 0:
                problems.append(f"{stage_name}: pose_hypotheses must be >= 0, got {stage.pose_hypotheses}")
        if not 0.0 < self.data.val_fraction < 1.0:
            problems.append(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        if self.data.pose_center is not None and len(self.data.pose_center) != 3:
            problems.append(f"data.pose_center must be 3 values (x, y, z in A), got {self.data.pose_center}")
        if self.data.noise_sigma is not None and self.data.noise_sigma <= 0:
            problems.append(f"data.noise_sigma must be > 0, got {self.data.noise_sigma}")
        if self.loss.search_resolution > 0 and self.model.render_sigma_by_kind:
            problems.append("loss.search_resolution needs one render width: model.render_sigma_by_kind is on")
        if problems:
            raise InputError("config", "; ".join(problems))

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_seeds)]


def _paper() -> TrainConfig:
    """Paper section 2.4 and 9, exactly: heavy atoms at sigma 1 A, 2000 + 500 epochs, 128 and 64 x 4
    samples, batch 256, Adam 3e-4 halved after 1000 stage-1 epochs, three seeds."""
    return TrainConfig(n_seeds=3)


def _cpu() -> TrainConfig:
    """Small enough to train the adenylate-kinase benchmark (20,000 particles, 64 px, 214 residues) on 2 CPU
    cores. The renders dominate a step, so the trade-offs cut renders per image. Every choice below was
    measured; the figures are in BENCHMARKS.md (sections named in each comment), not here, where they
    would drift."""
    return TrainConfig(
        # The image model ("Image model"): each residue as 1-3 pseudo-atoms (backbone, proximal and distal
        # side chain) at the scattering-weighted centroids of their atoms, weighing their forward scattering;
        # one learnt Gaussian width (the data's blur is never stated: B-factors, pixel size, oversampling);
        # each render's amplitude in closed form (contrast varies between micrographs). The C-alpha model it
        # replaced made the truth score worse than the learnt structures.
        # Segments ("Segments"): runs of 12 residues also move as rigid bodies, so a domain's motion gets
        # the image gradient of all its residues at once (demo: 0.83 / 0.81 recovered against 0.76 / 0.78).
        # Domain bodies ("Domains as rigid bodies"): the base's 3 dynamic domains move as bodies too; without
        # them a segment across a hinge strained its edge's peptide bond (20,000 particles: 90.4% plausible
        # samples; with them 100% in two seeds at the same recovered fraction).
        model=ModelConfig(
            render_atoms="residue",
            render_sigma=1.5,
            learn_render_sigma=True,
            amplitude="per_image",
            segment_size=12,
            domain_bodies=3,
        ),
        # Stage 1: 8 pose samples instead of 128, 8 epochs instead of 2000 (lr halved for the last 2, as the
        # paper halves it for its second half): a much coarser search over SO(3) per image.
        stage1=StageConfig(epochs=8, n_pose=8, lr_decay_epochs=(6,)),
        # Stage 2: 4 conformations x 2 poses instead of 64 x 4 renders per image, 12 epochs instead of 500.
        stage2=StageConfig(epochs=12, n_pose=2, n_conf=4),
        # Batch 64 instead of 256: 4x more Adam steps per epoch, which matters with so few epochs.
        batch_size=64,
        # One seed instead of three: three would triple the wall time (--seeds 3 when there is time).
        n_seeds=1,
        # Structure terms far stronger than the paper's, and three it does not have ("End to end:
        # adenylate kinase", "Image model"): with batch 64 and few samples per image the likelihood's
        # gradient is noisy and Adam turns the noise into independent moves of each residue. Backbone
        # weight 1000 (the paper's 0.01 tore the chain; at 100 single peptide bonds strained under the
        # residue model); a C-alpha clash penalty (10, 4 A); a neighbour-orientation term (3: without it
        # the NMP domain closes less and side chains clash; at 100 it pulls hinges towards the base; 3
        # against 10 at 20,000 particles: 0.853 / 0.854 recovered against 0.842-0.852, held on the four
        # variations of issue 10, "The neighbour-orientation weight on issue 10's variations"); a
        # heavy-atom clash penalty (10, 2.5 A, on 32 images of each batch: the C-alpha one cannot see
        # side-chain clashes).
        # Peptide geometry 1000 ("Peptide geometry"): with the bond length alone the residues turned about
        # their peptide bonds (CA-C-N and C-N-CA 17 degrees rms from Engh & Huber; 3.5 with it, at the same
        # recovered fraction).
        # Conformation search ("Conformation search"): the paper's encoder alone cannot tell the states
        # apart; with the search each particle's latent follows its true state. Its ensemble is the
        # particles' aggregate posterior (sample --latents), not the prior.
        loss=LossWeights(
            backbone=1000.0,
            peptide_geometry=1000.0,
            clash=10.0,
            orientation=3.0,
            heavy_clash=10.0,
            search_candidates=16,
        ),
        # Validation on at most 512 held-out images per epoch (forward only).
        data=DataConfig(max_val_images=512),
        checkpoint_every=200,
    )


PRESETS: dict[str, TrainConfig] = {"paper": _paper(), "cpu": _cpu()}


# --------------------------------------------------------------------------------------------- YAML

META_KEYS = ("atomvae_version", "argv")  # written beside the config, ignored when read back


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) suitable for YAML."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        return value

    return convert(config)


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check/convert one YAML value to a field's annotated type (int, float, str, bool, None, tuple[...])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except InputError as err:
                errors.append(err.problem)
        raise InputError(source, errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(source, f"{key}: expected a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation)
        return tuple(_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(source, f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(source, f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(source, f"{key}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(config: Any, overrides: dict[str, Any], source: str = "config", prefix: str = "") -> Any:
    """Return ``config`` (a dataclass) with ``overrides`` (nested dict) applied field by field.

    Raises ``InputError(source, ...)`` naming the full dotted key when a key is unknown or a value has the
    wrong type.
    """
    if not isinstance(overrides, dict):
        where = prefix.rstrip(".") or "top level"
        raise InputError(source, f"{where}: expected a mapping, got {overrides!r}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config), vars(sys.modules[type(config).__module__]))
    changes = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise InputError(source, f"unknown config key '{dotted}' (known: {', '.join(fields)})")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            changes[key] = apply_overrides(current, value, source, prefix=f"{dotted}.")
        else:
            changes[key] = _coerce(value, hints[key], dotted, source)
    try:
        return dataclasses.replace(config, **changes)
    except InputError as err:
        raise InputError(source, err.problem) from None
    except (TypeError, ValueError) as err:
        raise InputError(source, f"{prefix or 'config'}: {err}") from None


def load_config(
    path: str | Path,
    base: TrainConfig | None = None,
    preset: str | None = None,
    default_preset: str = "paper",
) -> TrainConfig:
    """Read a YAML file and apply it field by field over a starting config.

    The start is ``base`` if given, else the preset named by ``preset``, else by the file's own
    ``preset:`` key, else ``default_preset``. A file written by :func:`save_config` (every field) reads
    back to the same config whatever the start (its meta keys are skipped).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping of config keys at the top level")
    data = {k: v for k, v in data.items() if k not in META_KEYS}
    file_preset = data.pop("preset", None)
    if base is None:
        name = preset or file_preset or default_preset
        if name not in PRESETS:
            raise InputError(path, f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
        base = PRESETS[name]
    return apply_overrides(base, data, source=str(path))


def save_config(config: TrainConfig, path: str | Path, argv: list[str] | None = None) -> None:
    """Write the resolved config (every field) as YAML, atomically, with the atomvae version and argv."""
    data: dict[str, Any] = {"atomvae_version": __version__, "argv": list(argv) if argv is not None else None}
    data.update(config_to_dict(config))
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
