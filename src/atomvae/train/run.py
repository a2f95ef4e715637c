"""The run folder: its layout, and loading a trained model from it (used by sample, interpolate, encode).

A run folder describes itself; nothing else is needed to use it::

    RUN/config.yaml            resolved TrainConfig + atomvae version + argv
    RUN/run.yaml               data facts: particles path, box, pixel size, noise sigma, split sizes
    RUN/base.<pdb|cif>         verbatim copy of the base structure (topology of every output)
    RUN/split.npz              train / val particle indices
    RUN/best.yaml              which seed won (held-out log-likelihood) and its checkpoint
    RUN/metrics.jsonl, training_curve.png   copies of the best seed's (written when training returns)
    RUN/seed_<s>/checkpoints/  last.pt (resume point), stage1.pt, stage2.pt
    RUN/seed_<s>/metrics.jsonl, training_curve.png, tensorboard/ (if installed)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from atomvae.errors import InputError, atomic_write_text
from atomvae.train.checkpoint import LAST, load_checkpoint
from atomvae.train.config import TrainConfig, load_config

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.yaml"
BEST_FILE = "best.yaml"
SPLIT_FILE = "split.npz"
BASE_STEM = "base"


def seed_dir(run_dir: str | Path, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def checkpoint_dir(run_dir: str | Path, seed: int) -> Path:
    return seed_dir(run_dir, seed) / "checkpoints"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def base_structure_path(run_dir: str | Path) -> Path:
    matches = sorted(Path(run_dir).glob(f"{BASE_STEM}.*"))
    if not matches:
        raise InputError(run_dir, f"run folder has no {BASE_STEM}.pdb/.cif (base structure)")
    return matches[0]


def layout_files(run_dir: str | Path) -> list[Path]:
    """The files of a run folder that ``atomvae train`` wrote and reads back (the base structure, configs,
    split, logs, checkpoints): inputs that no other command's output may replace, even with --overwrite."""
    run_dir = Path(run_dir)
    names = [CONFIG_FILE, RUN_INFO_FILE, BEST_FILE, SPLIT_FILE, "metrics.jsonl", "training_curve.png"]
    files = [run_dir / name for name in names] + sorted(run_dir.glob(f"{BASE_STEM}.*"))
    return files + sorted(run_dir.glob("seed_*/*.*")) + sorted(run_dir.glob("seed_*/checkpoints/*"))


def write_yaml(path: str | Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path.parent, f"not a complete run folder: {path.name} is missing")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping")
    return data


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The data facts written when the run started (box, pixel_size, noise_sigma, particles, ...)."""
    info = read_yaml(Path(run_dir) / RUN_INFO_FILE)
    missing = [k for k in ("box", "pixel_size", "noise_sigma") if k not in info]
    if missing:
        raise InputError(Path(run_dir) / RUN_INFO_FILE, f"missing keys: {', '.join(missing)}")
    return info


def read_split(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) into the run's particle file."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise InputError(run_dir, f"not a complete run folder: {SPLIT_FILE} is missing")
    with np.load(path) as split:
        return split["train"], split["val"]


def best_checkpoint_path(run_dir: str | Path) -> tuple[int, Path]:
    """(seed, checkpoint) of the best seed recorded in best.yaml; before any seed has finished (a run
    stopped by --max-steps and not yet summarised) the lowest seed's last checkpoint."""
    run_dir = Path(run_dir)
    best_path = run_dir / BEST_FILE
    if best_path.is_file():
        best = read_yaml(best_path)
        if "seed" not in best or "checkpoint" not in best:
            raise InputError(best_path, "expected keys 'seed' and 'checkpoint'")
        return int(best["seed"]), run_dir / best["checkpoint"]
    seeds = sorted(int(p.name.split("_", 1)[1]) for p in run_dir.glob("seed_*") if p.name[5:].isdigit())
    for seed in seeds:
        last = checkpoint_dir(run_dir, seed) / LAST
        if last.is_file():
            return seed, last
    raise InputError(run_dir, "run folder has no checkpoint yet (train it first)")


@dataclass
class LoadedRun:
    """A trained model ready for use, with everything needed to interpret its outputs."""

    run_dir: Path
    config: TrainConfig
    info: dict[str, Any]  # run.yaml
    model: Any  # atomvae.model.vae.AtomVAE, in eval mode on ``device``
    topology: Any  # atomvae.structure.topology.Topology of the all-atom output
    base_coords: np.ndarray  # (A, 3) A, float64
    seed: int
    checkpoint: Path
    device: torch.device


def build_model(config: TrainConfig, topology, base_coords, info: dict[str, Any]):
    """Construct the AtomVAE of a run (parameters as initialised) from its config and data facts."""
    from atomvae.model.vae import AtomVAE

    center = config.data.pose_center
    return AtomVAE(
        config.model,
        topology,
        torch.as_tensor(np.asarray(base_coords), dtype=torch.float32),
        box=int(info["box"]),
        pixel_size=float(info["pixel_size"]),
        noise_sigma=float(info["noise_sigma"]),
        center=None if center is None else np.asarray(center, dtype=np.float64),
    )


def load_run(run_dir: str | Path, device: str = "cpu", seed: int | None = None) -> LoadedRun:
    """Load a run folder's config, base structure and best (or the given seed's) checkpoint.

    InputError for a missing folder, a missing file of the layout or a corrupt checkpoint.
    """
    from atomvae.structure.io import read_structure

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run folder not found")
    if not (run_dir / CONFIG_FILE).is_file():
        raise InputError(run_dir, f"not a run folder ({CONFIG_FILE} is missing)")
    config = load_config(run_dir / CONFIG_FILE)
    info = read_run_info(run_dir)
    structure = read_structure(base_structure_path(run_dir))
    if seed is None:
        seed, checkpoint = best_checkpoint_path(run_dir)
    else:
        checkpoint = checkpoint_dir(run_dir, seed) / LAST
    torch_device = resolve_device(device)
    payload = load_checkpoint(checkpoint, map_location="cpu")  # load_state_dict moves it to the device
    model = build_model(config, structure.topology, structure.coords, info)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise InputError(checkpoint, f"checkpoint does not fit the run's model: {err}") from None
    model.to(torch_device).eval()
    return LoadedRun(
        run_dir=run_dir,
        config=config,
        info=info,
        model=model,
        topology=structure.topology,
        base_coords=np.asarray(structure.coords),
        seed=seed,
        checkpoint=checkpoint,
        device=torch_device,
    )
