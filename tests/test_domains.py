"""Dynamic domains from the elastic network, rigid domain motions, and references fitted to particles as
rigid domain motions of the base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import roma
import torch
from MDAnalysisTests.datafiles import PDB_small

from atomvae.data.dataset import ParticleDataset
from atomvae.data.metadata import read_particles
from atomvae.physics.coarse_grain import group_residues
from atomvae.structure.domains import (
    domain_centres,
    dynamic_domains,
    motion_between,
    move_domains,
    rigid_mode_parts,
)
from atomvae.structure.io import read_structure, write_ensemble
from atomvae.train.domain_references import DomainFitConfig, _PoseScores, fit_domain_references
from atomvae.train.pose_search import PoseSearchConfig, _Scorer
from atomvae.train.searched import render_atoms_of_base
from helpers_train import write_particles

ADK_OPEN = Path(PDB_small)  # adk_open.pdb, 214 residues
# Adenylate kinase's domains in the literature (1-based residue ranges): CORE, NMP, LID.
ADK_LITERATURE = ((1, 29), (60, 121), (160, 214)), ((30, 59),), ((122, 159),)


def _adk_ca() -> np.ndarray:
    structure = read_structure(ADK_OPEN)
    return structure.coords[structure.topology.select("CA")].astype(np.float64)


def test_dynamic_domains_of_adenylate_kinase_are_its_literature_domains():
    labels = dynamic_domains(_adk_ca(), 3)
    literature = np.zeros(len(labels), dtype=np.int64)
    for k, ranges in enumerate(ADK_LITERATURE):
        for lo, hi in ranges:
            literature[lo - 1 : hi] = k
    assert np.bincount(labels).tolist() == sorted(np.bincount(labels).tolist(), reverse=True)  # 0 largest
    # labels are numbered by size, as the literature's CORE (122) > NMP (30) < LID (38): match by overlap
    agreement = max(np.mean(np.asarray(order)[labels] == literature) for order in ([0, 1, 2], [0, 2, 1]))
    assert agreement > 0.9, agreement  # 97% measured (BENCHMARKS.md, "Searched poses")
    assert (dynamic_domains(_adk_ca(), 3) == labels).all()  # deterministic


def test_move_domains_keeps_each_domain_rigid_and_motion_between_inverts_it():
    ca = _adk_ca()
    labels = dynamic_domains(ca, 3)
    centres = domain_centres(ca, labels)
    motions = np.array(
        [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.3, -0.2, 0.5, 1.0, -2.0, 0.5], [-0.4, 0.1, 0.2, 0.0, 3.0, 1.0]]
    )
    moved = move_domains(
        torch.as_tensor(ca), torch.as_tensor(labels), torch.as_tensor(centres), torch.as_tensor(motions)
    )
    moved = moved.numpy()
    for d in range(3):
        x, y = ca[labels == d], moved[labels == d]
        assert np.allclose(
            np.linalg.norm(x[:, None] - x[None], axis=-1),
            np.linalg.norm(y[:, None] - y[None], axis=-1),
            atol=1e-9,
        )
    assert np.allclose(moved[labels == 0], ca[labels == 0])  # zero motion: in place
    # domain 1's centroid moved by exactly its v (turned about itself)
    assert np.allclose(moved[labels == 1].mean(axis=0), centres[1] + motions[1, 3:])
    assert np.allclose(motion_between(ca, moved, labels, centres), motions, atol=1e-6)
    # half the motion is halfway along the path: domain 2 turned by half the angle
    half = move_domains(
        torch.as_tensor(ca), torch.as_tensor(labels), torch.as_tensor(centres), torch.as_tensor(motions / 2)
    )
    turned = motion_between(ca, half.numpy(), labels, centres)[2, :3]
    assert np.allclose(turned, motions[2, :3] / 2, atol=1e-6)


def test_rigid_mode_parts_reproduce_a_mode_that_is_a_rigid_motion():
    # the slowest modes of adenylate kinase are mostly its domains moving as bodies: each domain's rigid
    # part leaves under a quarter of the mode's squared displacement unexplained
    ca = _adk_ca()
    labels = dynamic_domains(ca, 3)
    parts = rigid_mode_parts(ca, labels, 2)  # (2, 3, 6)
    assert parts.shape == (2, 3, 6)
    from atomvae.structure.normal_modes import anm_modes

    modes = anm_modes(ca, 2) * np.sqrt(len(ca))
    for j in range(2):
        explained = 0.0
        for d in range(3):
            x = ca[labels == d]
            r = x - x.mean(axis=0)
            fitted = np.cross(parts[j, d, :3], r) + parts[j, d, 3:]
            explained += ((modes[j][labels == d] - fitted) ** 2).sum()
        assert explained / (modes[j] ** 2).sum() < 0.25


def test_pose_scores_equal_the_search_scorer_at_the_same_pose(tmp_path):
    star = write_particles(tmp_path / "data", n=4, seed=3, noise=0.3, base=ADK_OPEN, pixel_size=2.5)
    metadata = read_particles(star)
    dataset = ParticleDataset(metadata, downsample_to=32)
    structure = read_structure(ADK_OPEN)
    coords = structure.coords - structure.coords.mean(axis=0)
    render, masses = render_atoms_of_base(coords, structure.topology)
    search = PoseSearchConfig(resolution=8.0, sigma=1.5)
    rows = np.arange(4)
    rotation, shift = metadata.rotation.float(), torch.zeros(4, 2)
    ours = _PoseScores(dataset, rows, search)(render, rotation, shift, masses)
    # the search's shifted score at zero shift (max_shift 0) is the same normalised cross-correlation
    from atomvae.physics.render import render_projections

    scorer = _Scorer(32, float(dataset.pixel_size), 8.0)
    batch = dataset.__getitems__(rows.tolist())
    filtered, ctf_power = scorer.filtered_images(batch["image"].float(), batch["ctf"])
    templates = render_projections(
        render, rotation[:, None], torch.zeros(2), 32, float(dataset.pixel_size), 1.5, masses
    )
    theirs, _shift = scorer.shifted_scores(filtered, ctf_power, torch.fft.rfft2(templates), 0.0)
    assert torch.allclose(ours, theirs[:, 0], rtol=1e-4)


def test_fitted_reference_moves_the_base_towards_the_particles_state(tmp_path):
    """Particles of adenylate kinase with two domains turned 50 and 40 degrees (2.6 A from the base): the
    fitted reference comes much nearer their state than the base, from the images alone (1.25 A)."""
    structure = read_structure(ADK_OPEN)
    coords = structure.coords - structure.coords.mean(axis=0)
    ca_index = structure.topology.select("CA")
    ca = coords[ca_index]
    labels = dynamic_domains(ca, 3)
    centres = domain_centres(ca, labels)
    truth = np.zeros((3, 6))
    truth[1, :3] = np.deg2rad(50.0) * np.array([0.0, 0.6, 0.8])
    truth[2, :3] = np.deg2rad(40.0) * np.array([1.0, 0.0, 0.0])
    atom_domain = torch.as_tensor(labels[structure.topology.residue_index])
    moved = move_domains(
        torch.as_tensor(coords), atom_domain, torch.as_tensor(centres), torch.as_tensor(truth)
    )
    moved_pdb = tmp_path / "moved.pdb"
    write_ensemble(moved_pdb, structure.topology, moved.numpy())
    star = write_particles(tmp_path / "data", n=32, seed=11, noise=0.3, base=moved_pdb, pixel_size=2.5)
    # write_particles centres the moved structure on its own centre of atoms: so does the reference frame
    dataset = ParticleDataset(read_particles(star), downsample_to=32)
    base_render, masses = render_atoms_of_base(coords, structure.topology)
    config = DomainFitConfig(
        n_rotations=1500,
        search_box=16,
        subset=32,
        coarse_evaluations=40,
        em_rounds=2,
        em_steps=25,
        path_points=1,
    )
    search = PoseSearchConfig(
        n_rotations=1500, search_box=16, resolution=8.0, sigma=1.5, top_k=4, batch_size=8
    )
    fitted = fit_domain_references(
        dataset, base_render, group_residues(structure.topology), ca, masses, config, search
    )
    assert fitted.kind == ["base", "path", "fitted"]
    assert fitted.references.shape == (3, len(base_render), 3)
    assert fitted.gain[1] > 0.0
    found = move_domains(
        torch.as_tensor(ca),
        torch.as_tensor(fitted.labels),
        torch.as_tensor(fitted.centres),
        torch.as_tensor(fitted.motions[-1]),
    ).numpy()
    target = moved.numpy()[ca_index]

    def rmsd(x: np.ndarray) -> float:
        rotation, translation = roma.rigid_points_registration(torch.as_tensor(x), torch.as_tensor(target))
        return float(((x @ rotation.numpy().T + translation.numpy() - target) ** 2).sum(-1).mean() ** 0.5)

    assert rmsd(found) < 0.6 * rmsd(ca), (rmsd(found), rmsd(ca))
    # the path point is halfway: between the two
    assert np.allclose(fitted.motions[1], fitted.motions[2] / 2)
