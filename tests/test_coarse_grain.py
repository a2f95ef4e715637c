"""Residue pseudo-atoms (physics.coarse_grain) and the model's image formation built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_small, PDB_xsmall  # adk_open.pdb, its first 10 residues

from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.vae import AtomVAE
from atomvae.physics.coarse_grain import coarse_grained_density, forward_scattering, residue_groups
from atomvae.physics.ctf import CTFParams
from atomvae.physics.render import render_projections
from atomvae.structure.frames import local_coordinates
from atomvae.structure.io import read_structure
from atomvae.structure.topology import Topology


def _residue(res_name: str, names: list[str]) -> Topology:
    elements = ["SE" if n == "SE" else n[0] for n in names]
    return Topology(
        atom_name=names,
        element=elements,
        residue_index=[0] * len(names),
        res_name=[res_name],
        res_seq=[1],
        ins_code=[""],
        chain_id=["A"],
        bonded_to_next=[False],
    )


@pytest.mark.parametrize(
    ("res_name", "names", "expected"),
    [
        ("GLY", ["N", "CA", "C", "O"], [0, 0, 0, 0]),
        ("ALA", ["N", "CA", "C", "O", "CB"], [0, 0, 0, 0, 1]),
        ("LYS", ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ"], [0, 0, 0, 0, 1, 1, 1, 2, 2]),
        (
            "ARG",
            ["N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"],
            [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2],
        ),
        ("MSE", ["N", "CA", "C", "O", "CB", "CG", "SE", "CE"], [0, 0, 0, 0, 1, 1, 1, 2]),
    ],
)
def test_groups_by_remoteness(res_name, names, expected):
    assert residue_groups(_residue(res_name, names)).tolist() == expected


def test_pseudo_atoms_conserve_mass_and_centroid():
    structure = read_structure(PDB_small)
    top = structure.topology
    local = local_coordinates(structure.coords, top).numpy()
    positions, residue, mass = coarse_grained_density(local, top)
    atom_mass = forward_scattering(top.element)
    group = residue_groups(top)
    assert len(positions) == group.max() + 1 < top.n_atoms / 3  # adk: 487 pseudo-atoms for 1,656 atoms
    assert mass.sum() == pytest.approx(atom_mass.sum())
    g = 5
    members = group == g
    np.testing.assert_allclose(
        positions[g],
        (atom_mass[members, None] * local[members]).sum(0) / atom_mass[members].sum(),
        atol=1e-12,
    )
    assert set(top.residue_index[members]) == {residue[g]}
    assert forward_scattering(["C", "N", "O", "S"]) == pytest.approx(
        [2.5088, 2.2135, 1.9834, 5.1604], abs=1e-4
    )


def _model(**changes) -> AtomVAE:
    structure = read_structure(PDB_xsmall)
    fields = dict(
        image_size=32,
        encoder_widths=(64, 32),
        decoder_width=32,
        decoder_blocks=2,
        decoded_dim=32,
        pose_width=16,
        render_atoms="residue",
        render_sigma=1.5,
    )
    fields.update(changes)
    torch.manual_seed(0)
    return AtomVAE(
        ModelConfig(**fields), structure.topology, structure.coords, box=32, pixel_size=1.5, noise_sigma=0.5
    )


def test_residue_rendering_places_weighted_pseudo_atoms_on_the_base():
    model = _model()
    structure = read_structure(PDB_xsmall)
    local = local_coordinates(structure.coords, structure.topology).numpy()
    _positions, residue, mass = coarse_grained_density(local, structure.topology)
    centred = structure.coords - structure.coords.mean(axis=0)
    # The decoder's render set at the prior mean (zero-initialised delta) is the base's pseudo-atoms.
    decoded = model.decode(torch.zeros(1, model.config.latent_conf), atoms="render")[0]
    torch.testing.assert_close(decoded, model.base_render_coords, atol=1e-4, rtol=0)
    rot = torch.eye(3)[None]
    image = model.render_images(model.base_render_coords[None], rot, torch.zeros(1, 2), None)[0]
    # Each pseudo-atom's image integrates to its mass (in units of the mean mass) times the amplitude.
    assert float(image.detach().sum()) == pytest.approx(float(model.amplitude.detach()) * len(mass), rel=1e-3)
    # Backbone lobes within 1.5 A of their C-alpha, side-chain lobes within a side chain's reach (7 A).
    ca_of_residue = centred[structure.topology.select("CA")][residue]
    distance = np.linalg.norm(model.base_render_coords.numpy() - ca_of_residue, axis=1)
    backbone = np.r_[True, residue[1:] != residue[:-1]]  # the first pseudo-atom of each residue
    assert distance[backbone].max() < 1.5 and distance.max() < 7.0


def test_per_image_amplitude_recovers_each_scale():
    model = _model(amplitude="per_image")
    coords = model.base_render_coords.expand(3, -1, -1)
    rotation = torch.eye(3).expand(3, 3, 3)
    shift = torch.zeros(3, 2)
    plain = render_projections(coords, rotation, shift, 32, 1.5, 1.5, model.render_mass)
    images = plain * torch.tensor([0.5, 2.0, 7.0])[:, None, None]
    predicted = model.render_images(coords, rotation, shift, None, images)
    torch.testing.assert_close(predicted, images, rtol=1e-5, atol=1e-6)
    # The global amplitude then takes no part in training (DDP would wait for its gradient).
    assert all(p is not model.log_amplitude for stage in (1, 2) for p in model.trainable_parameters(stage))
    # Anti-correlated images: a blank prediction, not a negative scale.
    assert float(model.render_images(coords, rotation, shift, None, -images).abs().max()) == 0.0


def test_learnt_width_gets_gradients_in_both_stages():
    model = _model(learn_render_sigma=True)
    assert model.log_render_sigma is not None
    assert any(p is model.log_render_sigma for p in model.trainable_parameters(1))
    images = torch.randn(2, 32, 32)
    ctf = CTFParams(defocus_u=torch.full((2,), 9000.0), defocus_v=torch.full((2,), 9500.0))
    for stage in (1, 2):
        model.zero_grad()
        out = model.loss(images, ctf, stage=stage, n_conf=2, n_pose=2, weights=LossWeights())
        out.total.backward()
        assert model.log_render_sigma.grad is not None and torch.isfinite(model.log_render_sigma.grad)
        assert out.terms["render_sigma"] == pytest.approx(1.5)
