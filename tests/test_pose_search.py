"""Pose search: the rotation grid, the elastic-network modes, the matched-filter scores against brute force,
and the search recovering known poses and shifts of rendered particles (round trip through a STAR file)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_small

from atomvae.data.metadata import read_particles
from atomvae.errors import InputError
from atomvae.physics.ctf import CTFParams, ctf_2d
from atomvae.structure.io import read_structure
from atomvae.structure.normal_modes import anm_modes, displaced_references
from atomvae.train.pose_search import (
    PoseSearchConfig,
    _Scorer,
    grid_spacing_deg,
    pose_errors_deg,
    rotation_angle_deg,
    search_poses_to_file,
    small_rotations,
    super_fibonacci_rotations,
)
from helpers_train import BASE_PDB, write_particles

ADK_OPEN = Path(PDB_small)  # adk_open.pdb, 214 residues


def test_super_fibonacci_grid_is_a_uniform_set_of_rotations():
    grid = super_fibonacci_rotations(2000)
    eye = torch.eye(3, dtype=grid.dtype)
    assert torch.allclose(grid @ grid.transpose(1, 2), eye.expand_as(grid), atol=1e-12)
    assert torch.allclose(torch.linalg.det(grid), torch.ones(len(grid), dtype=grid.dtype), atol=1e-12)
    # Haar-uniform rotations average to the zero matrix (each entry has mean 0 and variance 1/3)
    assert grid.mean(dim=0).abs().max() < 0.02
    # n points on SO(3) (volume pi^2 in the half-angle metric of unit quaternions up to sign) sit about
    # (volume / n)^(1/3) apart; the spiral's median nearest-neighbour angle is of that order
    expected = math.degrees(2.0 * (math.pi**2 / 2000) ** (1.0 / 3.0))
    assert 0.4 * expected < grid_spacing_deg(grid) < 1.5 * expected


def test_small_rotations_turn_by_the_step_about_each_axis():
    turns = small_rotations(5.0, dtype=torch.float64)
    angles = rotation_angle_deg(torch.eye(3, dtype=torch.float64).expand_as(turns), turns)
    assert torch.allclose(angles, torch.tensor([0.0] + [5.0] * 6, dtype=torch.float64), atol=1e-6)


def test_anm_modes_are_orthonormal_internal_motions():
    rng = np.random.default_rng(0)
    ca = np.cumsum(rng.normal(size=(40, 3)) * 2.2, axis=0)  # a compact random chain
    modes = anm_modes(ca, 5, cutoff=15.0).reshape(5, -1)
    assert np.allclose(modes @ modes.T, np.eye(5), atol=1e-8)
    # orthogonal to the rigid-body motions: translations and infinitesimal rotations about the centroid
    centred = ca - ca.mean(axis=0)
    rigid = [np.tile(np.eye(3)[k], (len(ca), 1)).ravel() for k in range(3)]
    rigid += [np.cross(np.eye(3)[k], centred).ravel() for k in range(3)]
    for motion in rigid:
        assert np.abs(modes @ motion).max() < 1e-8 * np.linalg.norm(motion)


def test_displaced_references_move_by_the_asked_rmsd():
    structure = read_structure(BASE_PDB)
    ca_index = structure.topology.select("CA")
    refs = displaced_references(
        structure.coords,
        structure.topology.residue_index,
        structure.coords[ca_index],
        n_modes=2,
        amplitudes=(1.5, 3.0),
        cutoff=15.0,
    )
    assert refs.shape == (1 + 2 * 2 * 2, len(structure.coords), 3)
    assert np.array_equal(refs[0], structure.coords)
    ca_rmsd = np.sqrt(((refs[:, ca_index] - structure.coords[ca_index]) ** 2).sum(-1).mean(-1))
    assert np.allclose(ca_rmsd[1:], [1.5, 1.5, 3.0, 3.0] * 2, atol=1e-9)


def _circular_ctf_filter(images: torch.Tensor, spectrum_factor: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft2(torch.fft.rfft2(images) * spectrum_factor, s=images.shape[-2:])


def test_scores_match_brute_force_normalised_cross_correlation():
    gen = torch.Generator().manual_seed(1)
    box, pixel = 16, 2.0
    images = torch.randn(3, box, box, generator=gen, dtype=torch.float64).float()
    templates = torch.randn(5, box, box, generator=gen, dtype=torch.float64).float()
    ctf = CTFParams(
        defocus_u=torch.tensor([9000.0, 12000.0, 15000.0]),
        defocus_v=torch.tensor([9500.0, 12000.0, 14000.0]),
        astigmatism_angle=torch.tensor([0.0, 30.0, 60.0]),
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
        phase_shift=0.0,
        bfactor=0.0,
    )
    scorer = _Scorer(box, pixel, resolution=5.0)
    filtered, power = scorer.filtered_images(images, ctf)
    template_power = torch.fft.rfft2(templates).abs().square().flatten(1)
    scores = scorer.global_scores(filtered, power, templates.flatten(1), template_power)
    shifted, shifts = scorer.shifted_scores(
        filtered, power, torch.fft.rfft2(templates)[None].expand(3, -1, -1, -1), max_shift=0.0
    )
    c = ctf_2d(ctf, box, pixel, rfft=True)
    for i in range(3):
        for t in range(5):
            predicted = _circular_ctf_filter(templates[t], scorer.mask * c[i])  # M C T
            expected = (predicted * images[i]).sum() / predicted.norm()
            assert scores[i, t].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
            assert shifted[i, t].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    assert torch.equal(shifts, torch.zeros_like(shifts))


def test_shift_search_finds_a_whole_pixel_shift_with_the_render_sign_convention():
    from atomvae.physics.render import render_projections

    structure = read_structure(BASE_PDB)
    coords = torch.as_tensor(structure.coords - structure.coords.mean(axis=0), dtype=torch.float32)
    box, pixel = 32, 1.5
    rotation = super_fibonacci_rotations(7, torch.float32)[3:4]
    true_shift = torch.tensor([[3.0, -4.5]])  # 2 and -3 pixels
    image = render_projections(coords, rotation, true_shift, box, pixel, 1.5)
    ctf = CTFParams(
        defocus_u=torch.tensor([10000.0]),
        defocus_v=torch.tensor([10000.0]),
        astigmatism_angle=torch.tensor([0.0]),
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
        phase_shift=0.0,
        bfactor=0.0,
    )
    scorer = _Scorer(box, pixel, resolution=3.5)
    filtered, power = scorer.filtered_images(image, ctf)
    template = render_projections(coords, rotation, torch.zeros(1, 2), box, pixel, 1.5)
    _, shift = scorer.shifted_scores(filtered, power, torch.fft.rfft2(template)[:, None], max_shift=10.0)
    assert torch.allclose(shift[0, 0], true_shift[0], atol=0.3)


def test_search_recovers_the_poses_of_rendered_particles_and_writes_a_star_file(tmp_path):
    # the whole adenylate kinase (a 10-residue fragment is too close to a rod: its views are ambiguous)
    star = write_particles(tmp_path / "data", n=12, seed=3, noise=1.0, base=ADK_OPEN, pixel_size=2.5)
    out = tmp_path / "searched.star"
    config = PoseSearchConfig(
        n_rotations=2000,
        search_box=16,
        resolution=8.0,
        top_k=8,
        local_rounds=6,
        atoms="CA",
        sigma=2.0,
        batch_size=8,
    )
    result = search_poses_to_file(star, ADK_OPEN, out, config=config, image_size=32, progress=False)
    truth = read_particles(star)
    errors = pose_errors_deg(result.rotation, truth.rotation)
    assert np.median(errors) < 5.0, errors
    assert (errors < 10.0).mean() >= 0.8, errors
    good = torch.as_tensor(errors < 10.0)
    shift_error = (result.shift - truth.shift.float()).norm(dim=1)[good]
    assert shift_error.median() < 0.75, shift_error
    # the STAR file carries the same poses (RELION Euler angles and origins, round trip)
    written = read_particles(out)
    assert len(written) == len(truth)
    assert rotation_angle_deg(written.rotation.double(), result.rotation.double()).max() < 0.05  # float32
    assert torch.allclose(written.shift.float(), result.shift, atol=1e-4)
    assert np.load(out.with_suffix(".npz"))["reference"].tolist() == [0] * len(truth)
    with pytest.raises(InputError, match="already exists"):
        search_poses_to_file(star, BASE_PDB, out, config=config, image_size=32, progress=False)


def test_search_config_rejects_nonsense():
    with pytest.raises(ValueError):
        PoseSearchConfig(search_box=15)
    with pytest.raises(ValueError):
        PoseSearchConfig(n_rotations=0)
