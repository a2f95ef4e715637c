"""Residue frames (AlphaFold convention), residue-local atoms, frames -> coordinates, Rigid."""

import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_small as ADK_OPEN_PDB

from atomvae.geometry.rigid import Rigid
from atomvae.geometry.rotations import random_rotations
from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates
from atomvae.structure.io import read_structure


@pytest.fixture(scope="module")
def adk():
    return read_structure(ADK_OPEN_PDB)


def test_pdb_frames_coordinates_round_trip_on_adk(adk):
    top = adk.topology
    assert top.n_residues == 214 and top.n_atoms == 1656
    rot, trans = backbone_frames(adk.coords, top)
    local = local_coordinates(adk.coords, top)
    assert rot.shape == (214, 3, 3) and trans.shape == (214, 3) and local.shape == (1656, 3)
    back = frames_to_coordinates(rot, trans, local, top.residue_index)
    assert np.abs(back.numpy() - adk.coords).max() < 1e-10
    # Training precision: float32 frames and local coordinates still reproduce the PDB to < 1e-3 A.
    back32 = frames_to_coordinates(rot.float(), trans.float(), local.float(), top.residue_index)
    assert back32.dtype == torch.float32
    assert np.abs(back32.numpy() - adk.coords).max() < 1e-3


def test_alphafold_frame_convention(adk):
    top = adk.topology
    rot, trans = backbone_frames(adk.coords, top)
    n, ca, c = (adk.coords[top.atom_index(name)] for name in ("N", "CA", "C"))
    np.testing.assert_allclose(trans.numpy(), ca)
    R = rot.numpy()
    eye = np.broadcast_to(np.eye(3), R.shape)
    np.testing.assert_allclose(np.einsum("rji,rjk->rik", R, R), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    local = local_coordinates(adk.coords, top).numpy()
    local_n, local_ca, local_c = (local[top.atom_index(name)] for name in ("N", "CA", "C"))
    np.testing.assert_allclose(local_ca, 0.0, atol=1e-12)
    # x along CA->C: C on the +x axis at the bond length.
    np.testing.assert_allclose(local_c[:, 1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(local_c[:, 0], np.linalg.norm(c - ca, axis=-1), atol=1e-12)
    # N in the xy-plane at +y.
    np.testing.assert_allclose(local_n[:, 2], 0.0, atol=1e-12)
    assert (local_n[:, 1] > 0).all()
    # Local coordinates are rotation and translation invariant.
    R0 = random_rotations(1, torch.Generator().manual_seed(0), dtype=torch.float64)[0].numpy()
    moved = adk.coords @ R0.T + np.array([10.0, -3.0, 7.0])
    np.testing.assert_allclose(local_coordinates(moved, top).numpy(), local, atol=1e-10)


def test_frames_to_coordinates_batched_matches_brute_force(adk):
    top = adk.topology
    gen = torch.Generator().manual_seed(1)
    local = local_coordinates(adk.coords, top)
    R = top.n_residues
    rot = random_rotations(2 * 3 * R, gen, dtype=torch.float64).view(2, 3, R, 3, 3)
    trans = torch.randn(2, 3, R, 3, generator=gen, dtype=torch.float64)
    out = frames_to_coordinates(rot, trans, local, top.residue_index)
    assert out.shape == (2, 3, top.n_atoms, 3)
    expected = np.empty(out.shape)
    for b in range(2):
        for k in range(3):
            for a in range(top.n_atoms):
                r = top.residue_index[a]
                expected[b, k, a] = rot[b, k, r].numpy() @ local[a].numpy() + trans[b, k, r].numpy()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
    # Any atom order works (e.g. one atom per residue, or a shuffled subset).
    perm = torch.randperm(top.n_atoms, generator=gen)[:300]
    sub = frames_to_coordinates(rot, trans, local[perm], top.residue_index[perm.numpy()])
    torch.testing.assert_close(sub, out[..., perm, :])
    # Broadcasting: one set of frames for all, batch of translations.
    out_b = frames_to_coordinates(rot[0, 0], trans, local, torch.as_tensor(top.residue_index))
    assert out_b.shape == (2, 3, top.n_atoms, 3)


def test_frames_to_coordinates_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    residue_index = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    rot = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    trans = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    local = torch.randn(9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r, t, x: frames_to_coordinates(r, t, x, residue_index), (rot, trans, local)
    )


def test_backbone_frames_gradcheck_float64(adk):
    top = adk.topology.subset(np.nonzero(adk.topology.residue_index < 4)[0])
    coords = torch.as_tensor(adk.coords[adk.topology.residue_index < 4]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: backbone_frames(x, top), (coords,))


def test_rigid_compose_apply_inverse():
    gen = torch.Generator().manual_seed(3)

    def draw():
        return Rigid(
            random_rotations(5, gen, dtype=torch.float64),
            torch.randn(5, 3, generator=gen, dtype=torch.float64),
        )

    a, b = draw(), draw()
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((a @ b).apply(x), a.apply(b.apply(x)))
    torch.testing.assert_close(a.inverse().apply(a.apply(x)), x)
    torch.testing.assert_close(a.apply_inverse(a.apply(x)), x)
    ident = a @ a.inverse()
    torch.testing.assert_close(ident.rot, torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    torch.testing.assert_close(ident.trans, torch.zeros(5, 3, dtype=torch.float64))
    # Broadcasting: one transform applied to many points per batch entry.
    pts = torch.randn(7, 5, 3, generator=gen, dtype=torch.float64)
    manual = torch.einsum("bij,nbj->nbi", a.rot, pts) + a.trans
    torch.testing.assert_close(a.apply(pts), manual)
    assert a[1:3].shape == (2,)
    assert Rigid.identity((4,)).apply(x[:4].float()).allclose(x[:4].float())
    with pytest.raises(ValueError):
        Rigid(torch.eye(3), torch.zeros(2))


def test_residue_padded_layout_slots_follow_input_order_within_each_residue():
    """One layout for placing atoms and for the heavy-atom clash penalty: atom k of residue r at r * K + k."""
    from atomvae.structure.frames import residue_padded_layout, residue_slots

    residue_index = np.array([1, 0, 1, 2, 1, 0])  # residue 1 holds the most atoms (K = 3)
    slot, mask = residue_padded_layout(residue_index)
    assert slot.tolist() == [3, 0, 4, 6, 5, 1]
    assert mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    slot_t, width = residue_slots(torch.as_tensor(residue_index), 4)  # a trailing residue without atoms
    assert width == 3 and slot_t.tolist() == slot.tolist()
    empty_slot, empty_mask = residue_padded_layout(np.zeros(0, dtype=np.int64))
    assert empty_slot.shape == (0,) and empty_mask.shape == (0, 0)
