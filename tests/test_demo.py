"""The demo's input helpers (docking, evaluation ensemble) and one tiny end-to-end demo run.

The full-size demo (4,000 particles, ~minutes) is timed in BENCHMARKS.md; here the same code path runs on
a few particles so that a broken main job fails CI.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from atomvae.demo import ADK_WEIGHTS, DemoConfig, adk_inputs, docked_base, run_demo, write_gt_ensemble
from atomvae.geometry.superpose import kabsch
from atomvae.simulate import frame_weights
from atomvae.structure.io import read_ensemble, read_structure
from atomvae.train.domain_references import DomainFitConfig


@pytest.fixture(scope="module")
def adk_frames():
    inputs = adk_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        topology, frames = read_ensemble(inputs.trajectory, inputs.topology)
    return inputs, topology, frames


def test_docked_base_is_the_kabsch_superposition_onto_the_frame(adk_frames, tmp_path):
    inputs, topology, frames = adk_frames
    out = docked_base(inputs.base_pdb, frames, len(frames) - 1, tmp_path / "docked.pdb")
    original, docked = read_structure(inputs.base_pdb), read_structure(out)
    ca = docked.topology.select("CA")
    target = frames[-1][ca]
    # docking is rigid: every interatomic distance is kept (PDB output rounds to 1e-3 A)
    pairs = np.random.default_rng(0).integers(0, len(docked.coords), size=(500, 2))
    d_before = np.linalg.norm(original.coords[pairs[:, 0]] - original.coords[pairs[:, 1]], axis=1)
    d_after = np.linalg.norm(docked.coords[pairs[:, 0]] - docked.coords[pairs[:, 1]], axis=1)
    assert np.abs(d_before - d_after).max() < 5e-3
    # and it is the optimum: a further superposition moves the C-alphas by (almost) nothing
    rot, trans = kabsch(torch.as_tensor(docked.coords[ca]), torch.as_tensor(target))
    assert np.abs(rot.numpy() - np.eye(3)).max() < 1e-4 and np.abs(trans.numpy()).max() < 1e-3
    rmsd = np.sqrt(((docked.coords[ca] - target) ** 2).sum(-1).mean())
    assert 0.3 < rmsd < 1.0  # adk_open.pdb is 0.6 A from the open end frame (module docstring)


def test_gt_ensemble_draws_frames_in_proportion_to_the_weights(adk_frames, tmp_path):
    _, topology, frames = adk_frames
    weights = frame_weights(ADK_WEIGHTS, len(frames))
    dcd, top_pdb = write_gt_ensemble(tmp_path / "gt.dcd", topology, frames, weights, 2000, seed=3)
    _, drawn = read_ensemble(dcd, top_pdb)
    assert drawn.shape == (2000, *frames.shape[1:])
    # identify each drawn structure's frame (exact up to DCD float32 storage)
    ca = topology.select("CA")
    distance = ((drawn[:, None, ca[:20]] - frames[None, :, ca[:20]]) ** 2).sum(axis=(-1, -2))
    index = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1e-3
    closed, opened = (index < 30).mean(), (index >= 70).mean()
    expected_closed, expected_open = weights[:30].sum(), weights[70:].sum()
    # binomial standard error at n = 2000 is ~0.011: 4 of them
    assert abs(closed - expected_closed) < 0.045 and abs(opened - expected_open) < 0.045


def test_tiny_demo_writes_its_outputs_and_consistent_numbers(tmp_path):
    config = DemoConfig(
        out=tmp_path / "demo", n_particles=96, epochs_stage2=1, gt_n=64, n_eval=32, progress=False
    )
    summary = run_demo(config)
    out = config.out
    for path in (
        "samples.pdb",
        "samples.dcd",
        "evaluation.json",
        "demo.json",
        "evaluation/report.html",
        "run/config.yaml",
        "particles/particles.star",
    ):
        assert (out / path).is_file(), path
    evaluation = json.loads((out / "evaluation.json").read_text())
    model, base, floor = evaluation["emd_rmsd"], evaluation["base_only"], evaluation["floor"]
    assert np.isfinite([model, base, floor]).all() and 0 <= floor < base
    assert evaluation["recovered_fraction"] == pytest.approx((base - model) / (base - floor), rel=1e-6)
    assert summary["emd_rmsd"] == pytest.approx(model)
    _, samples = read_ensemble(out / "samples.pdb")  # the viewable subset: <= 64 all-atom models
    assert samples.shape == (min(64, config.n_eval), len(read_structure(out / "run" / "base.pdb").coords), 3)


def test_tiny_demo_with_searched_poses_trains_on_the_last_round(tmp_path):
    config = DemoConfig(
        out=tmp_path / "demo",
        n_particles=64,
        poses="searched",
        epochs_stage2=1,
        gt_n=64,
        n_eval=16,
        progress=False,
        search_rounds=2,
        search_round_epochs=1,
        search_fit=DomainFitConfig(
            n_rotations=500, search_box=16, subset=16, coarse_evaluations=8, em_rounds=1, em_steps=3
        ),
    )
    summary = run_demo(config)
    out = config.out
    assert (out / "poses" / "round2.star").is_file() and (out / "poses" / "run_round1").is_dir()
    run_config = (out / "run" / "config.yaml").read_text()
    assert "pose_mode: given" in run_config
    assert "round2.star" in (out / "run" / "run.yaml").read_text()  # trained on the searched poses
    assert "pose_center: null" in run_config  # searched poses turn the base about its centre of atoms
    assert np.isfinite(summary["emd_rmsd"])
