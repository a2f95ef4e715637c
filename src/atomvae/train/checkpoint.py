"""Checkpoints: atomic save and validated load of everything needed to continue a run exactly.

A checkpoint holds the model and optimizer state, the training position (stage, epoch, step within the
epoch, global step), the global random states (torch, CUDA, numpy, python) and the facts needed to rebuild
the model from the run folder alone (box, pixel size, noise sigma). The data order and the per-step
sampling noise are pure functions of (seed, stage, epoch) and (seed, stage, step) (see ``loop.py``), so
resuming mid-epoch needs only the position; likewise the learning-rate schedule is a pure function of
(stage, epoch) (``StageConfig.learning_rate_at``), so it has no state of its own to save. Files are
written to a temporary name and renamed, so a crash during a save leaves the previous checkpoint intact;
they load with ``weights_only=True`` (no pickled code is executed from a checkpoint file).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomvae import __version__
from atomvae.errors import InputError, atomic_path

FORMAT = "atomvae-checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"  # overwritten every ``checkpoint_every`` steps, at each stage end and at a stop


@dataclass(frozen=True)
class Position:
    """Where training stands after the last completed step.

    ``stage`` 1 or 2 (3 = both stages finished); ``epoch`` within the stage (0-based);
    ``step_in_epoch`` = steps already done in that epoch; ``global_step`` counts steps over all stages.
    """

    stage: int = 1
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0

    @property
    def complete(self) -> bool:
        return self.stage > 2


def stage_checkpoint_name(stage: int) -> str:
    return f"stage{stage}.pt"


def capture_rng_state() -> dict[str, Any]:
    """Global random states as tensors and plain Python values (loadable with ``weights_only=True``)."""
    legacy_state = np.random.get_state()
    if not isinstance(legacy_state, tuple):  # numpy's global generator is always MT19937
        raise RuntimeError("numpy's global random state is not MT19937; cannot capture it")
    kind, keys, pos, has_gauss, cached = legacy_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    position: Position,
    model_init: dict[str, Any],
    seed: int,
    metrics: dict[str, Any] | None = None,
    particle_memory: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically.

    ``model_init``: the constructor facts of the model that are not in the config (``box``,
    ``pixel_size`` A, ``noise_sigma``). ``metrics``: small summary numbers (e.g. the last validation
    log-likelihood) for run selection without loading the weights twice. ``particle_memory``: what the
    loss's searches found per particle (``ParticleMemory.state_dict``), when the run keeps it.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "atomvae_version": __version__,
        "seed": int(seed),
        "position": asdict(position),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": capture_rng_state(),
        "model_init": dict(model_init),
        "metrics": dict(metrics or {}),
    }
    if particle_memory is not None:
        payload["particle_memory"] = particle_memory
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; ``InputError`` if it is missing, unreadable or not ours."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise InputError(path, f"cannot read checkpoint (corrupt or not a checkpoint): {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, "not an atomvae checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(path, f"checkpoint format {payload['format_version']} is newer than this atomvae")
    missing = [k for k in ("position", "model", "rng", "model_init") if k not in payload]
    if missing:
        raise InputError(path, f"checkpoint lacks {', '.join(missing)}")
    payload["position"] = Position(**payload["position"])
    return payload


def rewrite_position(path: str | Path, position: Position) -> None:
    """Set a checkpoint's training position, everything else kept (a finished run reopened for more epochs
    of its final stage: ``atomvae.train.prepare.extend_stages``). Atomic, like every save."""
    payload = load_checkpoint(path)
    payload["position"] = asdict(position)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
