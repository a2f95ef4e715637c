"""Side-chain torsions (structure.torsions) and the decoder that turns side chains with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_small, PDB_xsmall  # adk_open.pdb, its first 10 residues

from atomvae.geometry.rotations import random_rotations
from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.vae import AtomVAE
from atomvae.physics.coarse_grain import coarse_grained_density
from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates
from atomvae.structure.io import read_structure
from atomvae.structure.torsions import CHI_AXES, SideChainTorsions, dihedral

# The fourth atom of each chi (the first three are N/CA/CB, CA/CB/CG, ... along the axis table).
CHI_END = {
    "ARG": ("CG", "CD", "NE", "CZ"),
    "LYS": ("CG", "CD", "CE", "NZ"),
    "GLU": ("CG", "CD", "OE1"),
    "ILE": ("CG1", "CD"),  # CHARMM names ILE's CD1 "CD"
    "THR": ("OG1",),
    "PHE": ("CG", "CD1"),
}


def _structure():
    structure = read_structure(PDB_small)
    local = local_coordinates(structure.coords, structure.topology)
    return structure, local


def _turn(structure, local, chi):
    """All atoms (..., A, 3) of the base with its side chains turned by chi (..., R, 4), frames kept."""
    top = structure.topology
    rot, trans = backbone_frames(torch.as_tensor(structure.coords, dtype=torch.float64), top)
    turned = SideChainTorsions(top, local)(local, chi)
    return frames_to_coordinates(rot, trans, turned, top.residue_index)


def test_each_chi_turns_its_own_dihedral_by_the_offset_and_keeps_every_bond():
    structure, local = _structure()
    top = structure.topology
    generator = torch.Generator().manual_seed(0)
    chi = (torch.rand(top.n_residues, 4, generator=generator, dtype=torch.float64) - 0.5) * 4.0
    base = torch.as_tensor(structure.coords, dtype=torch.float64)
    turned = _turn(structure, local, chi)
    checked = 0
    for r in range(top.n_residues):
        name = str(top.res_name[r])
        if name not in CHI_END:
            continue
        start = top.residue_start[r]
        index = {str(n): start + i for i, n in enumerate(top.atom_name[start : top.residue_start[r + 1]])}
        for k, ((a2, a3), a4) in enumerate(zip(CHI_AXES[name], CHI_END[name], strict=True)):
            a1 = "N" if k == 0 else CHI_AXES[name][k - 1][0]
            quad = [index[a] for a in (a1, a2, a3, a4)]
            before = dihedral(*base[quad])
            after = dihedral(*turned[quad])
            change = torch.remainder(after - before - chi[r, k] + torch.pi, 2 * torch.pi) - torch.pi
            assert abs(float(change)) < 1e-6, (name, k)  # float32 axes
            checked += 1
        # Rotations about bonds: every intra-residue distance from the backbone to the side chain's bonds
        # changes, but bond lengths do not.
        atoms = torch.arange(start, top.residue_start[r + 1])
        d_before = torch.cdist(base[atoms], base[atoms])
        d_after = torch.cdist(turned[atoms], turned[atoms])
        bonded = d_before < 1.9
        assert torch.allclose(d_before[bonded], d_after[bonded], atol=1e-6)
    assert checked > 20
    # The backbone never moves.
    backbone = np.isin(top.atom_name, ["N", "CA", "C", "O"])
    assert torch.allclose(turned[backbone], base[backbone], atol=1e-6)


def test_zero_torsions_are_the_base_and_the_turn_has_exact_gradients():
    structure, local = _structure()
    top = structure.topology
    torsions = SideChainTorsions(top, local)
    zero = torch.zeros(2, top.n_residues, 4, dtype=torch.float64)
    assert torch.allclose(torsions(local, zero), local.expand(2, -1, -1), atol=1e-12)
    # Gradcheck on the first 10 residues' atoms (PDB_xsmall is adk's first 10 residues).
    small = read_structure(PDB_xsmall)
    small_local = local_coordinates(small.coords, small.topology)
    small_torsions = SideChainTorsions(small.topology, small_local)
    chi = (0.3 * torch.randn(small.topology.n_residues, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: small_torsions(small_local, c), (chi,))


def test_proline_glycine_and_alanine_have_no_torsions():
    structure, local = _structure()
    top = structure.topology
    mask = SideChainTorsions(top, local).chi_mask
    for name in ("PRO", "GLY", "ALA"):
        assert not mask[torch.as_tensor(top.res_name == name)].any()
    assert mask[torch.as_tensor(top.res_name == "ARG")].all()


def _model(**changes):
    structure = read_structure(PDB_small)
    fields = {
        "image_size": 32,
        "latent_conf": 4,
        "encoder_widths": (64,),
        "decoder_width": 32,
        "decoder_blocks": 1,
        "decoded_dim": 32,
        "render_atoms": "residue",
        "side_chains": "decoded",
    }
    fields.update(changes)
    torch.manual_seed(0)
    model = AtomVAE(
        ModelConfig(**fields), structure.topology, structure.coords, box=32, pixel_size=1.5, noise_sigma=0.5
    )
    return model, structure


def test_decoder_starts_at_the_base_and_its_pseudo_atoms_follow_the_turned_side_chains():
    model, structure = _model()
    top = structure.topology
    z = torch.randn(3, 4)
    assert torch.allclose(model.decoder(z, "all"), model.base_coords.expand(3, -1, -1), atol=1e-4)
    with torch.no_grad():
        model.decoder.to_torsions.bias.normal_(0.0, 0.5)
        d = model.decoder.representation(z)
        rot, trans = model.decoder.frames(d)
        chi = model.decoder.torsions(d)
    assert chi is not None and chi.abs().max() > 0.1
    everything = model.decoder.atoms(rot, trans, "all", chi)
    # Brute force: coarse-grain each turned structure from scratch, then place the pseudo-atoms.
    for i in range(3):
        own_local = local_coordinates(everything[i].double(), top).numpy()
        positions, residue, _mass = coarse_grained_density(own_local, top)
        positions = torch.as_tensor(positions)
        expected = frames_to_coordinates(rot[i].double(), trans[i].double(), positions, residue)
        assert torch.allclose(model.decoder.atoms(rot, trans, "render", chi)[i].double(), expected, atol=1e-4)
    # The padded clash layout holds the same turned atoms, and the centre of mass is theirs.
    padded = model.decoder.atoms(rot, trans, "padded", chi)
    slot = torch.as_tensor(np.flatnonzero(model.padded_atom_mask.flatten().numpy()))
    assert torch.allclose(padded[:, slot], everything, atol=1e-5)
    centre = model.decoder.center_of_mass(rot, trans, chi=chi)
    assert torch.allclose(centre, everything.mean(dim=1), atol=1e-4)


@pytest.mark.parametrize("mode", ["decoded", "shared"])
def test_the_loss_learns_a_turned_side_chain(mode):
    """Images of the base with one arginine's side chain turned: fitting only the torsions by the model's
    loss moves that residue's pseudo-atoms onto the turned ones, and no residue without chis."""
    model, structure = _model(amplitude="per_image", side_chains=mode)
    top = structure.topology
    arg = int(np.flatnonzero(top.res_name == "ARG")[0])
    chi = torch.zeros(1, top.n_residues, 4)
    chi[0, arg] = torch.tensor([1.2, -0.8, 0.5, 0.0])
    pseudo = torch.as_tensor(model.decoder.residue_index_render == arg)
    with torch.no_grad():
        rot, trans = model.decoder.frames(model.decoder.representation(torch.zeros(1, 4)))
        target = model.decoder.atoms(rot, trans, "render", chi)[0]
        rotation = random_rotations(8, torch.Generator().manual_seed(0))  # views from all sides: depth
        shift = torch.zeros(8, 2)
        images = model.render_images(target.expand(8, -1, -1), rotation, shift, None)

    def arg_error() -> float:
        with torch.no_grad():
            decoded = model.decoder(torch.zeros(1, 4), "render")[0, pseudo]
            return float((decoded - target[pseudo]).norm(dim=-1).max())

    before = arg_error()
    weights = LossWeights(backbone=0.0, clash=0.0, orientation=0.0, heavy_clash=0.0)
    torsions = model.decoder.to_torsions
    optimizer = torch.optim.Adam(
        [model.decoder.shared_torsions] if torsions is None else list(torsions.parameters()), lr=0.03
    )
    for _ in range(200):
        optimizer.zero_grad()
        out = model.loss(
            images,
            None,
            stage=2,
            n_conf=1,
            n_pose=1,
            weights=weights,
            given_rotation=rotation,
            given_shift=shift,
            pose_mode="given",
        )
        out.total.backward()
        optimizer.step()
    assert before > 1.0
    assert arg_error() < 0.1 * before
    no_chi = ~model.decoder.side_chains.chi_mask
    raw = model.decoder.shared_torsions if torsions is None else torsions.bias.view(top.n_residues, 4)
    assert raw[torch.as_tensor(top.res_name == "ARG")].abs().max() > 0
    assert (raw[no_chi] == 0).all()


def test_shared_torsions_are_the_same_for_every_latent():
    model, _structure = _model(side_chains="shared")
    with torch.no_grad():
        model.decoder.shared_torsions.normal_(0.0, 0.5)
        chi = model.decoder.torsions(model.decoder.representation(torch.randn(5, 4)))
    assert chi is not None and chi.shape == (model.decoder.n_residues, 4) and chi.abs().max() > 0.1
    structures = model.decoder(torch.randn(5, 4), "render")
    assert structures.shape[0] == 5 and torch.equal(structures[0], structures[4])


def test_relaxation_clears_the_clashes_of_base_side_chains_on_a_closed_backbone():
    """The closed DIMS frame's backbone carrying the open crystal structure's rigid side chains clashes;
    repacking the chi torsions clears the clashes and moves no backbone atom."""
    from MDAnalysisTests.datafiles import DCD, PSF

    from atomvae.evaluate.stereochemistry import clash_counts
    from atomvae.structure.io import read_ensemble

    model, structure = _model(side_chains="rigid", side_chain_relaxation_steps=100)
    top = structure.topology
    _dims_top, frames = read_ensemble(DCD, PSF)
    closed = torch.as_tensor(frames[8], dtype=torch.float64) - model.base_center.double()
    rot, trans = (f.float() for f in backbone_frames(closed, top))
    rigid = model.decoder.atoms(rot, trans, "all")
    chi = model.relax_side_chains(rot[None], trans[None])
    relaxed = model.decoder.atoms(rot, trans, "all", chi[0])
    before, after = (int(clash_counts(x[None].detach().numpy(), top)[0]) for x in (rigid, relaxed))
    assert before > 10 and after == 0
    backbone = torch.as_tensor(np.isin(top.atom_name, ["N", "CA", "C", "O"]))
    assert torch.allclose(relaxed[backbone], rigid[backbone], atol=1e-5)
    # decode repacks every all-atom output the same way (here: the base, which has nothing to clear).
    assert torch.allclose(model.decode(torch.zeros(1, 4)), model.base_coords[None], atol=1e-4)
