"""Checks of everything ``atomvae train`` is given, run before the run folder is created.

A problem found after the run folder exists leaves a folder that a rerun refuses as "not empty" and that
``--resume`` cannot fix; so every input is read and checked here first, and errors name the user's file
(not the copy the run folder keeps). Also the particle file's fingerprint, recorded in run.yaml, which
``--resume`` compares so that a run never continues on other data.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from atomvae.errors import InputError, check_writable_folder
from atomvae.train import run as run_folder
from atomvae.train.config import TrainConfig

# A residue whose nearest other C-alpha is farther than this (A) is reported as detached from the rest:
# bonded neighbours sit 3.8 A apart, so this is a misplaced residue (or a coordinate typo), not a loop.
ISOLATED_RESIDUE_DISTANCE = 15.0
# Bytes of each stack hashed for the fingerprint besides its size: the header and first image are enough
# to tell two stacks apart without reading gigabytes.
STACK_HEAD_BYTES = 1 << 16


def check_options(config: TrainConfig, run_dir: Path, resume: bool, fresh: bool) -> None:
    """Options the config's own validation leaves to the run, and the run folder: for a new run (``fresh``)
    it must be absent or empty and creatable."""
    if config.data.num_workers < 0:
        raise InputError(
            "--workers", f"must be 0 (load in this process) or more, got {config.data.num_workers}"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(run_dir, "exists and is not a folder; -o names the run folder")
    if fresh and not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise InputError(run_dir, "output folder is not empty; use --resume to continue it or choose another")
    check_writable_folder(run_dir)


def read_base_structure(base_path: Path):
    """The user's base structure, read and checked (``structure.io.read_structure`` does the parsing):
    one model only, finite coordinates, at least two residues with N, CA and C."""
    from atomvae.structure.io import count_models, read_structure

    if not base_path.is_file():
        raise InputError(
            base_path,
            "base structure not found" if not base_path.exists() else "base structure is not a regular file",
        )
    n_models = count_models(base_path)
    if n_models > 1:
        raise InputError(
            base_path,
            f"holds {n_models} models; the base structure must be one model "
            "(save the one to start from, e.g. model 1, in its own file)",
        )
    structure = read_structure(base_path)
    if structure.topology.n_residues < 2:
        raise InputError(
            base_path, f"has {structure.topology.n_residues} usable residue; at least 2 are needed"
        )
    return structure


def warn_about_geometry(structure, base_path: Path, box: int, pixel_size: float) -> list[str]:
    """Warnings (returned and issued) for a base that does not fit the images: atoms farther from the
    centre of atoms than half the box (parts of the particle would fall outside every image) and
    residues detached from all others."""
    from scipy.spatial import cKDTree

    messages = []
    coords = np.asarray(structure.coords, dtype=np.float64)
    radius = np.linalg.norm(coords - coords.mean(axis=0), axis=1)
    half_box = 0.5 * box * pixel_size
    if radius.max() > half_box:
        atom = int(radius.argmax())
        label = structure.topology.residue_label(int(structure.topology.residue_index[atom]))
        messages.append(
            f"atoms reach {radius.max():.0f} A from the structure's centre (farthest: residue "
            f"{label}) but the images are {2 * half_box:.0f} A wide: parts of the particle fall "
            "outside the box (larger box, or check the structure)"
        )
    ca = structure.topology.select("CA")
    if len(ca) >= 2:
        distance, _ = cKDTree(coords[ca]).query(coords[ca], k=2)
        isolated = np.flatnonzero(distance[:, 1] > ISOLATED_RESIDUE_DISTANCE)
        if isolated.size:
            label = structure.topology.residue_label(int(structure.topology.residue_index[ca[isolated[0]]]))
            messages.append(
                f"residue {label} is {distance[isolated[0], 1]:.0f} A from any other residue "
                f"({isolated.size} such residue(s)); misplaced coordinates?"
            )
    for message in messages:
        warnings.warn(f"{base_path}: {message}", UserWarning, stacklevel=2)
    return messages


def check_init_run(config: TrainConfig, structure, source) -> None:
    """``--init RUN`` must hold a model of exactly this shape: same residues and atoms in its base structure
    and the same architecture (checked by loading its weights into a model built for this run)."""
    from atomvae.structure.io import read_structure
    from atomvae.train.checkpoint import load_checkpoint

    if config.init_from is None:
        return
    init_dir = Path(config.init_from)
    if not (init_dir / run_folder.CONFIG_FILE).is_file():
        raise InputError(init_dir, "--init: not a run folder (config.yaml is missing)")
    theirs = read_structure(run_folder.base_structure_path(init_dir)).topology
    ours = structure.topology
    if theirs.n_residues != ours.n_residues or theirs.n_atoms != ours.n_atoms:
        raise InputError(
            init_dir,
            f"--init: its base structure has {theirs.n_residues} residues, "
            f"{theirs.n_atoms} atoms; this run's has {ours.n_residues}, "
            f"{ours.n_atoms}",
        )
    _, checkpoint = run_folder.best_checkpoint_path(init_dir)
    state = {
        k: v
        for k, v in load_checkpoint(checkpoint, map_location="cpu")["model"].items()
        if k != "noise_sigma"
    }
    noise_sigma = config.data.noise_sigma or source.noise_sigma
    facts = {"box": source.box, "pixel_size": source.pixel_size, "noise_sigma": noise_sigma}
    model = run_folder.build_model(config, structure.topology, structure.coords, facts)
    own = {k: v for k, v in model.state_dict().items() if k != "noise_sigma"}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("different shapes of", reshaped),
            )
            if keys
        ]
        raise InputError(init_dir, f"--init: its model does not fit this run's ({'; '.join(parts)})")


def particles_fingerprint(source) -> str:
    """A content fingerprint of a particle set, cheap to compute: SHA-256 over the metadata file (the
    STAR/.cs/ctf.pkl bytes: every CTF, pose and image name) and, per stack, its size and first
    ``STACK_HEAD_BYTES`` (header and first images)."""
    metadata = source.dataset.metadata
    digest = hashlib.sha256()
    files = [metadata.source] if metadata.source is not None else []
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    for path in metadata.image_paths:
        digest.update(str(Path(path).stat().st_size).encode())
        with open(path, "rb") as f:
            digest.update(f.read(STACK_HEAD_BYTES))
    return "sha256:" + digest.hexdigest()


def check_same_particles(info: dict[str, Any], particles_path: Path, source, run_dir: Path) -> None:
    """``--resume`` must continue on the particles the run started with: same fingerprint (when run.yaml
    records one). The same content under another path (a moved project) is accepted with a warning."""
    recorded_path = info.get("particles")
    moved = recorded_path is not None and Path(recorded_path) != particles_path.resolve()
    recorded = info.get("particles_fingerprint")
    if recorded is not None and recorded != particles_fingerprint(source):
        raise InputError(
            particles_path,
            f"is not the particle file this run started with ({recorded_path}; "
            f"contents differ): --resume needs the same particles; start a new "
            f"run to train on these",
        )
    if moved:
        note = "same contents" if recorded is not None else "contents not recorded by this older run"
        warnings.warn(
            f"{particles_path}: the run {run_dir} started with {recorded_path} ({note}); continuing",
            UserWarning,
            stacklevel=2,
        )


class NonFiniteStreak:
    """Stops training once ``limit`` consecutive steps had a non-finite loss.

    Such steps are skipped (their update would poison Adam's moments), so the parameters do not move: a
    streak as long as an epoch (at most ``MAX_NONFINITE_STREAK`` steps) means nothing is being learnt, and
    going on would end in an exit code 0 with an untrained model.
    """

    def __init__(self, where: Path, steps_per_epoch: int):
        self.where = where
        self.limit = max(1, min(MAX_NONFINITE_STREAK, steps_per_epoch))
        self.streak = 0
        self.first = None

    def record(self, finite: bool, position) -> None:
        """After each step: ``finite`` is whether its loss was finite; position the step's Position."""
        if finite:
            self.streak, self.first = 0, None
            return
        self.streak += 1
        self.first = self.first or position.global_step
        if self.streak >= self.limit:
            raise InputError(
                self.where,
                f"{self.streak} consecutive training steps (global steps "
                f"{self.first} to {position.global_step}, stage {position.stage}) "
                "had a non-finite loss, so nothing is being learnt; stopping. Check "
                "the particles and the base structure for extreme values",
            )


# Consecutive non-finite steps tolerated at most (fewer when an epoch has fewer steps).
MAX_NONFINITE_STREAK = 100
