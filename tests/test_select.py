"""Atom selections CHAIN:RESNUM:ATOM and topology selections/subsets."""

import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_small as ADK_OPEN_PDB

from atomvae.errors import InputError
from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates
from atomvae.structure.io import read_structure
from atomvae.structure.select import parse_atom_selection
from atomvae.structure.topology import Topology


@pytest.fixture(scope="module")
def adk():
    return read_structure(ADK_OPEN_PDB)


def _small_topology():
    """Chain A: 51 GLY, 52 ALA, 52A SER (insertion), 53 GLY; chain B: 1 GLY."""
    bb = ["N", "CA", "C", "O"]
    residues = [
        ("A", "GLY", 51, "", bb),
        ("A", "ALA", 52, "", [*bb, "CB"]),
        ("A", "SER", 52, "A", [*bb, "CB", "OG"]),
        ("A", "GLY", 53, "", bb),
        ("B", "GLY", 1, "", bb),
    ]
    names = [n for r in residues for n in r[4]]
    return Topology(
        atom_name=names,
        element=[n[0] for n in names],
        residue_index=np.repeat(np.arange(len(residues)), [len(r[4]) for r in residues]),
        res_name=[r[1] for r in residues],
        res_seq=[r[2] for r in residues],
        ins_code=[r[3] for r in residues],
        chain_id=[r[0] for r in residues],
        bonded_to_next=[True, True, True, False, False],
    )


def test_parse_atom_selection_finds_the_atom(adk):
    top = adk.topology
    idx = parse_atom_selection("A:100:CA", top)
    r = top.residue_index[idx]
    assert top.atom_name[idx] == "CA" and top.res_seq[r] == 100 and top.chain_id[r] == "A"
    assert parse_atom_selection(" A:1:N ", top) == 0
    small = _small_topology()
    assert parse_atom_selection("A:52A:OG", small) == 4 + 5 + 5
    assert parse_atom_selection("A:52:CB", small) == 4 + 4
    assert parse_atom_selection("B:1:CA", small) == small.n_atoms - 3


def test_parse_atom_selection_errors_say_what_exists(adk):
    top = adk.topology
    gly = int(top.res_seq[np.nonzero(top.res_name == "GLY")[0][0]])
    expected = (
        rf"sel.txt: atom selection 'A:{gly}:CB': residue found but no atom CB in GLY; "
        r"its atoms are N CA C O"
    )
    with pytest.raises(InputError, match=expected):
        parse_atom_selection(f"A:{gly}:CB", top, source="sel.txt")
    with pytest.raises(InputError, match=r"no chain B; chains are A"):
        parse_atom_selection("B:10:CA", top)
    with pytest.raises(InputError, match=r"no residue 999 in chain A \(its residues are numbered 1..214\)"):
        parse_atom_selection("A:999:CA", top)
    for bad in ("A100CA", "A:1", "A:x:CA", ":1:CA", "A:1:CA:extra"):
        with pytest.raises(InputError, match="malformed; write CHAIN:RESNUM:ATOM"):
            parse_atom_selection(bad, top)
    with pytest.raises(InputError, match="no residue 52B"):
        parse_atom_selection("A:52B:CA", _small_topology())


def test_select_kinds_and_atom_index():
    top = _small_topology()
    np.testing.assert_array_equal(top.select("CA"), [1, 5, 10, 16, 20])
    assert top.atom_name[top.select("backbone")].tolist() == ["N", "CA", "C", "O"] * 5
    np.testing.assert_array_equal(top.select("heavy"), np.arange(top.n_atoms))
    np.testing.assert_array_equal(top.atom_index("CB"), [-1, 8, 13, -1, -1])
    np.testing.assert_array_equal(top.residue_start, [0, 4, 9, 15, 19, 23])
    assert top.residue_label(2) == "A:SER:52A"
    with pytest.raises(ValueError, match="unknown atom selection kind"):
        top.select("sidechain")


def test_subset_keeps_residues_and_bonds():
    top = _small_topology()
    ca = top.subset(top.select("CA"))
    assert ca.n_residues == top.n_residues and ca.n_atoms == 5
    np.testing.assert_array_equal(ca.bonded_to_next, top.bonded_to_next)
    np.testing.assert_array_equal(ca.residue_index, np.arange(5))
    # Dropping a residue (ALA 52) breaks the bonds on both sides of it.
    without_52 = top.subset(np.nonzero(top.residue_index != 1)[0])
    assert without_52.res_seq.tolist() == [51, 52, 53, 1]
    assert without_52.bonded_to_next.tolist() == [False, True, False, False]


def test_train_on_ca_write_all_atoms(adk):
    """Frames from the full base structure place any atom subset: CA-only and all-atom agree."""
    top = adk.topology
    rot, trans = backbone_frames(adk.coords, top)
    local = local_coordinates(adk.coords, top)
    ca_idx = top.select("CA")
    ca_top = top.subset(ca_idx)
    gen = torch.Generator().manual_seed(0)
    moved_trans = trans + torch.randn(trans.shape, generator=gen, dtype=torch.float64)
    all_atoms = frames_to_coordinates(rot, moved_trans, local, top.residue_index)
    ca_atoms = frames_to_coordinates(rot, moved_trans, local[ca_idx], ca_top.residue_index)
    torch.testing.assert_close(ca_atoms, all_atoms[ca_idx])
    torch.testing.assert_close(ca_atoms, moved_trans)  # CA is each frame's origin
