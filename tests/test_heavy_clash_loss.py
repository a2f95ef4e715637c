"""Heavy-atom clash penalty: the padded layout, brute force, neighbours, gradients, config, model wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_xsmall  # adk_open_10res.pdb

from atomvae.errors import InputError
from atomvae.model.config import LossWeights
from atomvae.model.losses import heavy_atom_clash_penalty, non_neighbour_pairs, residue_padded_layout
from atomvae.train.config import PRESETS, load_config, save_config

# Residue 2 | 3 is a gap (not bonded), 5 a chain end; atoms per residue 3, 1, 4, 2, 5, 3, in a scrambled
# order (the layout must not assume contiguous residues).
RESIDUE_INDEX = np.array([0, 1, 0, 2, 2, 3, 0, 4, 2, 4, 4, 5, 2, 3, 4, 5, 4, 5])
BONDED = np.array([True, True, False, True, True, False])


def test_padded_layout_places_each_atom_once_in_its_residue_row():
    slot, mask = residue_padded_layout(RESIDUE_INDEX)
    counts = np.bincount(RESIDUE_INDEX)
    assert mask.shape == (6, counts.max())
    assert np.array_equal(mask.sum(axis=1), counts)
    assert len(np.unique(slot)) == len(slot)
    assert np.array_equal(slot // mask.shape[1], RESIDUE_INDEX)
    assert mask.reshape(-1)[slot].all()


def brute_force(coords: np.ndarray, min_distance: float, reference: np.ndarray | None = None) -> np.ndarray:
    """All atom pairs (unpadded), neighbours as in evaluate.stereochemistry.clash_counts."""
    out = np.zeros(len(coords))
    n = len(RESIDUE_INDEX)
    for m, xyz in enumerate(coords):
        for a in range(n):
            for b in range(a + 1, n):
                lo, hi = sorted((RESIDUE_INDEX[a], RESIDUE_INDEX[b]))
                if lo == hi or (hi - lo == 1 and BONDED[lo]):
                    continue
                threshold = min_distance
                if reference is not None:
                    threshold = min(threshold, np.linalg.norm(reference[a] - reference[b]))
                distance = np.linalg.norm(xyz[a] - xyz[b])
                out[m] += max(threshold - distance, 0.0) ** 2
    return out


def padded(coords: np.ndarray, fill: np.ndarray) -> torch.Tensor:
    """Unpadded (..., A, 3) -> padded (..., R*K, 3) with empty slots set to ``fill`` (anything: masked)."""
    slot, mask = residue_padded_layout(RESIDUE_INDEX)
    out = np.broadcast_to(fill, coords.shape[:-2] + (mask.size, 3)).copy()
    out[..., slot, :] = coords
    return torch.as_tensor(out)


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_matches_brute_force_over_all_atom_pairs(chunk):
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(3, len(RESIDUE_INDEX), 3)) * 2.0  # crowded: many pairs within 2.5 A
    fill = rng.normal(size=(3, 1, 3))  # empty slots inside the crowd: they must be ignored
    _, mask = residue_padded_layout(RESIDUE_INDEX)
    pairs = non_neighbour_pairs(torch.as_tensor(BONDED))
    value = heavy_atom_clash_penalty(padded(coords, fill), torch.as_tensor(mask), pairs, 2.5, chunk=chunk)
    expected = brute_force(coords, 2.5)
    assert (expected > 0).all()
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-10)
    # Per pair min(d0, reference distance): a reference where some pairs are closer than d0.
    reference = coords[0] * 0.8
    value = heavy_atom_clash_penalty(
        padded(coords, fill),
        torch.as_tensor(mask),
        pairs,
        2.5,
        reference=padded(reference, np.zeros(3)),
        chunk=chunk,
    )
    np.testing.assert_allclose(value.numpy(), brute_force(coords, 2.5, reference), rtol=1e-10)
    assert float(value[0]) < float(expected[0])
    # Leading dimensions are kept.
    shaped = heavy_atom_clash_penalty(
        padded(coords, fill).reshape(3, 1, -1, 3), torch.as_tensor(mask), pairs, 2.5, chunk=chunk
    )
    assert shaped.shape == (3, 1)


def test_reference_structure_itself_costs_nothing():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(len(RESIDUE_INDEX), 3)) * 2.0
    _, mask = residue_padded_layout(RESIDUE_INDEX)
    pairs = non_neighbour_pairs(torch.as_tensor(BONDED))
    x = padded(coords, np.zeros(3))
    assert float(heavy_atom_clash_penalty(x, torch.as_tensor(mask), pairs, 2.5)) > 0
    assert float(heavy_atom_clash_penalty(x, torch.as_tensor(mask), pairs, 2.5, reference=x)) == 0.0


def test_same_residue_and_bonded_neighbours_are_excluded_gaps_are_not():
    # Two atoms per residue; every atom 1 A from the next along x (all within 2.5 A of their neighbours).
    residue_index = np.repeat(np.arange(4), 2)
    _, mask = residue_padded_layout(residue_index)
    coords = torch.zeros(8, 3, dtype=torch.float64)
    coords[:, 0] = torch.arange(8, dtype=torch.float64) * 1.0
    bonded = torch.tensor([True, False, True, False])  # 0-1 bonded, 1|2 a gap, 2-3 bonded
    pairs = non_neighbour_pairs(bonded)
    # Only residues 1 and 2 (across the gap) and 0-2, 1-3, 0-3 could count; within 2.5 A: atoms 2,3 of
    # residue 1 against 4,5 of residue 2 at distances 2, 1, 2 (3 is out) -> 0.25 + 2.25 + 0.25; residue 0
    # (atoms 0, 1) against residue 2 (atoms 4, 5): 1-4 at 3 A, out; 1-3 and 2-3 likewise out.
    value = heavy_atom_clash_penalty(coords, torch.as_tensor(mask), pairs, 2.5)
    assert torch.allclose(value, torch.tensor(0.25 + 2.25 + 0.25, dtype=torch.float64))
    all_bonded = non_neighbour_pairs(torch.tensor([True, True, True, False]))
    # Now 1-2 are neighbours; 0-2 (atom 1 vs 4: 3 A) and beyond are out of reach.
    assert float(heavy_atom_clash_penalty(coords, torch.as_tensor(mask), all_bonded, 2.5)) == 0.0


def test_zero_with_zero_gradient_when_nothing_is_close():
    rng = np.random.default_rng(2)
    coords = rng.normal(size=(2, len(RESIDUE_INDEX), 3)) * 0.3
    coords += 10.0 * RESIDUE_INDEX[:, None]  # residues 10 A apart: no pair within 2.5 A
    _, mask = residue_padded_layout(RESIDUE_INDEX)
    x = padded(coords, np.zeros(3)).requires_grad_()
    pairs = non_neighbour_pairs(torch.as_tensor(BONDED))
    value = heavy_atom_clash_penalty(x, torch.as_tensor(mask), pairs, 2.5)
    assert torch.equal(value.detach(), torch.zeros(2, dtype=torch.float64))
    value.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    coords = rng.normal(size=(2, len(RESIDUE_INDEX), 3)) * 2.0
    _, mask = residue_padded_layout(RESIDUE_INDEX)
    pairs = non_neighbour_pairs(torch.as_tensor(BONDED))
    reference = padded(coords[0] * 0.9, np.zeros(3))
    x = padded(coords, rng.normal(size=(2, 1, 3))).requires_grad_()
    assert float(heavy_atom_clash_penalty(x.detach(), torch.as_tensor(mask), pairs, 2.5).min()) > 0
    assert torch.autograd.gradcheck(
        lambda y: heavy_atom_clash_penalty(y, torch.as_tensor(mask), pairs, 2.5, reference=reference), (x,)
    )


def test_config_fields_round_trip_and_validate(tmp_path):
    assert LossWeights().heavy_clash == 0.0  # not in the paper
    assert PRESETS["paper"].loss.heavy_clash == 0.0 and PRESETS["cpu"].loss.heavy_clash > 0
    path = tmp_path / "config.yaml"
    path.write_text("loss: {heavy_clash: 5, heavy_clash_distance: 2.8, heavy_clash_images: null}\n")
    config = load_config(path, preset="cpu")
    assert (config.loss.heavy_clash, config.loss.heavy_clash_distance) == (5.0, 2.8)
    assert config.loss.heavy_clash_images is None
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    for bad in ("heavy_clash_distance: 0", "heavy_clash_images: 0"):
        path.write_text(f"loss: {{{bad}}}\n")
        with pytest.raises(InputError, match=bad.split(":")[0]):
            load_config(path)


def test_model_loss_logs_the_term_and_old_checkpoints_still_load():
    from atomvae.model.config import ModelConfig
    from atomvae.model.vae import AtomVAE
    from atomvae.structure.io import read_structure

    structure = read_structure(PDB_xsmall)
    config = ModelConfig(
        image_size=16,
        encoder_widths=(16,),
        decoder_width=16,
        decoder_blocks=1,
        decoded_dim=16,
        pose_width=8,
        render_atoms="CA",
    )
    torch.manual_seed(0)
    model = AtomVAE(config, structure.topology, structure.coords, box=16, pixel_size=3.0, noise_sigma=1.0)
    # The padded set places every atom exactly where the "all" set does.
    rot, trans = model.decoder.frames(model.decoder.representation(torch.zeros(1, config.latent_conf)))
    slot, _ = residue_padded_layout(structure.topology.residue_index)
    placed = model.decoder.atoms(rot, trans, "padded")[:, slot]
    assert torch.allclose(placed, model.decoder.atoms(rot, trans, "all"), atol=1e-5)
    # Derived buffers stay out of the state dict: checkpoints written before the term existed load.
    assert not any("padded" in key for key in model.state_dict())
    with torch.no_grad():  # move residues through each other
        model.decoder.to_frames.bias.normal_(generator=torch.Generator().manual_seed(1))
        model.decoder.to_frames.bias.mul_(3.0)
    images = torch.randn(4, 16, 16)
    rotation = torch.eye(3).expand(4, 3, 3)
    shift = torch.zeros(4, 2)
    common = dict(stage=2, n_conf=2, n_pose=1, pose_mode="given", given_rotation=rotation, given_shift=shift)
    off = model.loss(
        images, None, weights=LossWeights(), generator=torch.Generator().manual_seed(0), **common
    )
    weights = LossWeights(heavy_clash=10.0, heavy_clash_images=2)
    on = model.loss(images, None, weights=weights, generator=torch.Generator().manual_seed(0), **common)
    assert off.terms["heavy_clash"] == 0.0 and on.terms["heavy_clash"] > 0
    assert on.terms["total"] == pytest.approx(off.terms["total"] + 10.0 * on.terms["heavy_clash"], rel=1e-5)
    on.total.backward()
    assert model.decoder.to_frames.weight.grad.abs().sum() > 0
