"""The searched pose route's pieces: local refinement against each particle's own structure, the search
restricted to allowed references, references spread over a learnt manifold, and the pseudo-atom
templates of the base."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import roma
import torch
from MDAnalysisTests.datafiles import PDB_small

from atomvae.data.dataset import ParticleDataset
from atomvae.data.metadata import read_particles
from atomvae.structure.io import read_structure
from atomvae.train.pose_search import PoseSearchConfig, pose_errors_deg, refine_poses, search_poses
from atomvae.train.searched import nearest_allowed, render_atoms_of_base, spread_references
from helpers_train import write_particles

ADK_OPEN = Path(PDB_small)  # adk_open.pdb, 214 residues
CONFIG = PoseSearchConfig(
    n_rotations=500,
    search_box=16,
    resolution=8.0,
    top_k=4,
    local_rounds=6,
    atoms="CA",
    sigma=2.0,
    batch_size=8,
)


def _dataset(tmp_path: Path, n: int = 8):
    star = write_particles(tmp_path / "data", n=n, seed=5, noise=0.5, base=ADK_OPEN, pixel_size=2.5)
    metadata = read_particles(star)
    structure = read_structure(ADK_OPEN)
    coords = torch.as_tensor(structure.coords - structure.coords.mean(axis=0), dtype=torch.float32)
    return ParticleDataset(metadata, downsample_to=32), metadata, coords


def test_refine_poses_brings_poses_6_degrees_off_back_to_the_truth(tmp_path):
    dataset, metadata, atoms = _dataset(tmp_path)  # every heavy atom at 1.5 A: the particles' image model
    truth = metadata.rotation.float()
    generator = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(len(truth), 3, generator=generator), dim=1)
    start = roma.rotvec_to_rotmat(axes * np.deg2rad(6.0)) @ truth
    assert np.allclose(pose_errors_deg(start, truth), 6.0, atol=1e-3)
    structures = atoms[None].expand(len(truth), -1, -1)
    config = dataclasses.replace(CONFIG, sigma=1.5)
    result = refine_poses(dataset, structures, start, torch.zeros(len(truth), 2), config, start_step_deg=3.0)
    errors = pose_errors_deg(result.rotation, truth)
    assert np.median(errors) < 2.0, errors
    assert (result.score >= result.global_score - 1e-6).all()  # never worse than the start
    shift_error = (result.shift - metadata.shift.float()).norm(dim=1)
    assert shift_error.median() < 1.0, shift_error


def test_refine_poses_starts_from_the_better_of_several_starting_poses(tmp_path):
    """A far-off start (90 deg) beside one 6 deg off: the climb starts from the near one, whichever slot it
    is in, and ends near the truth (from the far one alone it cannot)."""
    dataset, metadata, atoms = _dataset(tmp_path)
    truth = metadata.rotation.float()
    generator = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(len(truth), 3, generator=generator), dim=1)
    near = roma.rotvec_to_rotmat(axes * np.deg2rad(6.0)) @ truth
    far = roma.rotvec_to_rotmat(axes.flip(1) * np.deg2rad(90.0)) @ truth
    slot = torch.arange(len(truth)) % 2 == 0  # the near start first for even particles, second for odd
    starts = torch.where(slot[:, None, None, None], torch.stack([near, far], 1), torch.stack([far, near], 1))
    structures = atoms[None].expand(len(truth), -1, -1)
    config = dataclasses.replace(CONFIG, sigma=1.5)
    shifts = torch.zeros(len(truth), 2)
    result = refine_poses(dataset, structures, starts, shifts, config, start_step_deg=3.0)
    assert np.median(pose_errors_deg(result.rotation, truth)) < 2.0
    alone = refine_poses(dataset, structures, far, shifts, config, start_step_deg=3.0)
    assert np.median(pose_errors_deg(alone.rotation, truth)) > 45.0
    with pytest.raises(ValueError, match="rotation"):
        refine_poses(dataset, structures, starts[:, :, :2], shifts, config)


def test_route_config_epochs_per_learning_run_and_refined_rounds():
    from atomvae.train.searched import SearchedRouteConfig, last_learning_run

    route = SearchedRouteConfig(rounds=3, round_epochs=(1, 6))
    assert [route.epochs_of_run(i) for i in (1, 2)] == [1, 6]
    assert [route.refines(i) for i in (2, 3)] == [False, True]
    assert last_learning_run(Path("f"), route) == Path("f") / "run_round2"
    assert SearchedRouteConfig(round_epochs=4).epochs_of_run(3) == 4  # one value for every run
    assert [SearchedRouteConfig(rounds=3, refine="every").refines(i) for i in (2, 3)] == [True, True]
    assert not SearchedRouteConfig(refine="none").refines(2)
    assert last_learning_run(Path("f"), SearchedRouteConfig(rounds=1)) is None
    with pytest.raises(ValueError, match="refine"):
        SearchedRouteConfig(refine="sometimes")
    with pytest.raises(ValueError, match="round_epochs"):
        SearchedRouteConfig(round_epochs=(1, 0))


def test_search_matches_each_particle_only_against_its_allowed_references(tmp_path):
    dataset, metadata, atoms = _dataset(tmp_path)
    ca = atoms[read_structure(ADK_OPEN).topology.select("CA")]
    scrambled = ca[torch.randperm(len(ca), generator=torch.Generator().manual_seed(1))] * 0.7
    references = torch.stack([ca, scrambled])
    free = search_poses(dataset, references, CONFIG, progress=False)
    assert free.reference.tolist() == [0] * len(metadata)  # the true structure wins when allowed
    allowed = torch.zeros(len(metadata), 2, dtype=torch.bool)
    allowed[::2, 0] = True
    allowed[1::2, 1] = True
    forced = search_poses(dataset, references, CONFIG, progress=False, allowed=allowed)
    assert forced.reference.tolist() == [0, 1] * (len(metadata) // 2)
    errors = pose_errors_deg(forced.rotation, metadata.rotation)
    assert np.median(errors[::2]) < 5.0, errors


def test_masses_weight_the_templates(tmp_path):
    dataset, _metadata, atoms = _dataset(tmp_path, n=2)
    ca = atoms[read_structure(ADK_OPEN).topology.select("CA")]
    heavy_first = torch.ones(len(ca))
    heavy_first[: len(ca) // 2] = 5.0
    plain = search_poses(dataset, ca, CONFIG, progress=False)
    weighted = search_poses(dataset, ca, CONFIG, progress=False, masses=heavy_first)
    assert not torch.allclose(plain.score, weighted.score)  # the particles were rendered with unit masses
    assert (weighted.score < plain.score).all()


def test_spread_references_walk_out_along_the_manifold_and_nearest_allowed_picks_k():
    # conformations along a line: base at 0, particles at distances 1..9 A (one coordinate moved)
    base = torch.zeros(4, 3)
    ca = torch.zeros(10, 4, 3)
    ca[:, 0, 0] = torch.arange(10.0) * 2.0  # RMSD to the base: 2 t / 2 = t A
    chosen = spread_references(ca, base, 3)
    assert chosen[0] == 9  # the farthest from the base first
    assert chosen[1] in (4, 5)  # then the middle of the gap
    references = torch.cat([base[None], ca[chosen]])
    allowed = nearest_allowed(ca, references, 1)
    assert allowed.sum(dim=1).tolist() == [1] * 10
    assert allowed[0, 0] and allowed[9, 1]
    assert nearest_allowed(ca, references, 2).sum(dim=1).tolist() == [2] * 10


def test_base_pseudo_atoms_sit_near_their_residues_and_weigh_one_on_average():
    structure = read_structure(ADK_OPEN)
    coords = structure.coords - structure.coords.mean(axis=0)
    positions, masses = render_atoms_of_base(coords, structure.topology)
    assert len(positions) == len(masses) == 487  # adenylate kinase: 1-3 per residue (BENCHMARKS.md)
    assert abs(float(masses.mean()) - 1.0) < 1e-6
    ca = torch.as_tensor(coords[structure.topology.select("CA")], dtype=torch.float32)
    nearest = torch.cdist(positions, ca).min(dim=1).values
    assert nearest.max() < 6.0  # every lobe within a side chain's length of some C-alpha


def test_route_runs_two_rounds_keeps_good_poses_and_resumes(tmp_path):
    from atomvae.train.domain_references import DomainFitConfig
    from atomvae.train.searched import SearchedRouteConfig, searched_poses
    from helpers_train import tiny_config

    star = write_particles(tmp_path / "data", n=24, seed=7, noise=0.3, base=ADK_OPEN, pixel_size=2.5)
    config = tiny_config()
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, render_atoms="residue", learn_render_sigma=True)
    )
    # round 1 against the base alone (the fitted references have their own test, test_domains.py)
    route = SearchedRouteConfig(
        rounds=2, round_epochs=1, n_references=2, n_nearest=2, image_size=32, fit=DomainFitConfig(n_fitted=0)
    )
    search = dataclasses.replace(CONFIG, n_rotations=1000, local_rounds=4)
    last, seconds = searched_poses(star, ADK_OPEN, tmp_path / "route", config, route, search)
    assert last == tmp_path / "route" / "round2.star"
    assert set(seconds) == {"search1", "train1", "search2"}
    truth = read_particles(star)
    for name in ("round1", "round2"):
        found = read_particles(tmp_path / "route" / f"{name}.star")
        errors = pose_errors_deg(found.rotation, truth.rotation)
        assert np.median(errors) < 6.0, (name, errors)
    report = (tmp_path / "route" / "round2.json").read_text()
    assert '"particles_per_reference"' in report
    _last, again = searched_poses(star, ADK_OPEN, tmp_path / "route", config, route, search)
    assert again == {}  # every round's output exists: nothing is redone


def test_search_poses_route_from_the_command_line_writes_the_last_rounds_poses(tmp_path, monkeypatch, capsys):
    """`atomvae search-poses --route`: fitted references, a learning run, a second search; OUTPUT holds the
    last round's poses (the particles are the base itself: they come back within a few degrees)."""
    import functools

    from atomvae.cli.main import main
    from atomvae.train import domain_references

    star = write_particles(tmp_path / "data", n=24, seed=7, noise=0.3, base=ADK_OPEN, pixel_size=2.5)
    small_fit = functools.partial(
        domain_references.DomainFitConfig,
        n_rotations=500,
        search_box=16,
        subset=16,
        coarse_evaluations=8,
        em_rounds=1,
        em_steps=3,
    )
    monkeypatch.setattr(domain_references, "DomainFitConfig", small_fit)
    out = tmp_path / "posed.star"
    argv = [
        "search-poses",
        str(star),
        str(ADK_OPEN),
        "-o",
        str(out),
        "--route",
        "--round-epochs",
        "1",
        "--rotations",
        "1000",
        "--image-size",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert f"--init {tmp_path / 'posed.route' / 'run_round1'}" in capsys.readouterr().out  # how to continue
    fitted = np.load(tmp_path / "posed.route" / "round1_references.npz")
    assert fitted["kind"].tolist() == ["base", "path", "path", "fitted"]
    assert (tmp_path / "posed.route" / "round2.star").is_file()
    found = read_particles(out)
    errors = pose_errors_deg(found.rotation, read_particles(star).rotation)
    assert np.median(errors) < 6.0, errors
    assert main(argv) == 2  # never overwrites without --overwrite
