"""Reading and writing structures: gemmi PDB/mmCIF, MDAnalysis trajectories, what is kept and dropped."""

import warnings

import numpy as np
import pytest
from MDAnalysisTests.datafiles import DCD as ADK_DCD
from MDAnalysisTests.datafiles import GRO as ADK_OPLS_GRO
from MDAnalysisTests.datafiles import PDB as ADK_OPLS_PDB
from MDAnalysisTests.datafiles import PSF as ADK_PSF
from MDAnalysisTests.datafiles import TPR as ADK_OPLS_TPR
from MDAnalysisTests.datafiles import XTC as ADK_OPLS_XTC
from MDAnalysisTests.datafiles import PDB_small as ADK_OPEN_PDB

from atomvae.errors import InputError
from atomvae.structure.io import element_from_name, read_ensemble, read_structure, write_ensemble
from atomvae.structure.topology import Topology


def _atom(
    serial, name, res_name, chain, res_seq, xyz, icode=" ", altloc=" ", occ=1.0, element="", record="ATOM"
):
    padded = f" {name:<3}" if len(name) < 4 else name
    x, y, z = xyz
    return (
        f"{record:<6}{serial:>5} {padded}{altloc}{res_name:>3} {chain}{res_seq:>4}{icode}   "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{0.0:6.2f}          {element:>2}"
    )


def _residue_atoms(k, names, z=0.0):
    """Backbone-like positions for the k-th residue along x: C(k) to N(k+1) is 1.49 A."""
    x = 3.8 * k
    table = {
        "N": (x, 0, z),
        "CA": (x + 1, 1.1, z),
        "C": (x + 2.4, 0.5, z),
        "O": (x + 2.6, -0.7, z),
        "CB": (x + 1, 2.0, z + 1),
        "OG": (x + 1, 2.5, z + 2.2),
        "H": (x - 0.5, -0.8, z),
        "HA": (x + 1, 1.4, z - 1),
    }
    return [(n, table[n]) for n in names]


SER_CB_A, SER_CB_B = (5.0, 5.0, 5.0), (4.8, 3.1, 1.2)


def fixture_pdb_text() -> str:
    """Chain A: ALA1 (with H), SER2 (altlocs A 0.3 / B 0.7), GLY3, GLY3A, GLY4 without CA, ALA5, ALA8 (gap),
    water and sulfate; chain B without element column: ALA1, ALA2, ALA3 moved 10 A away (a break)."""
    lines, serial = [], 1

    def add(*args, **kwargs):
        nonlocal serial
        lines.append(_atom(serial, *args, **kwargs))
        serial += 1

    chain_a = [
        ("ALA", 1, " ", ["N", "H", "CA", "HA", "C", "O", "CB"]),
        ("SER", 2, " ", None),
        ("GLY", 3, " ", ["N", "CA", "C", "O"]),
        ("GLY", 3, "A", ["N", "CA", "C", "O"]),
        ("GLY", 4, " ", ["N", "C", "O"]),
        ("ALA", 5, " ", ["N", "CA", "C", "O", "CB"]),
        ("ALA", 8, " ", ["N", "CA", "C", "O", "CB"]),
    ]
    for k, (res_name, seq, icode, names) in enumerate(chain_a):
        if res_name == "SER":
            for name, xyz in _residue_atoms(k, ["N", "CA", "C", "O"]):
                add(name, res_name, "A", seq, xyz, element=name[0])
            add("CB", res_name, "A", seq, SER_CB_A, altloc="A", occ=0.3, element="C")
            add("CB", res_name, "A", seq, SER_CB_B, altloc="B", occ=0.7, element="C")
            add("OG", res_name, "A", seq, (5.5, 5.5, 5.5), altloc="A", occ=0.3, element="O")
            add("OG", res_name, "A", seq, (4.8, 3.6, 2.4), altloc="B", occ=0.7, element="O")
            continue
        for name, xyz in _residue_atoms(k, names):
            add(name, res_name, "A", seq, xyz, icode=icode, element=name[0])
    add("O", "HOH", "A", 101, (20.0, 20.0, 20.0), element="O", record="HETATM")
    add("S", "SO4", "A", 102, (25.0, 20.0, 20.0), element="S", record="HETATM")
    add("O1", "SO4", "A", 102, (26.0, 20.0, 20.0), element="O", record="HETATM")
    lines.append("TER")
    for k in range(3):
        for name, xyz in _residue_atoms(k, ["N", "CA", "C", "O", "CB"], z=10.0 if k == 2 else 0.0):
            add(name, "ALA", "B", k + 1, (xyz[0], xyz[1] + 30, xyz[2]))
    lines.append("END")
    return "\n".join(lines) + "\n"


@pytest.fixture
def fixture_pdb(tmp_path):
    path = tmp_path / "mini.pdb"
    path.write_text(fixture_pdb_text())
    return path


def test_reads_protein_heavy_atoms_resolving_altlocs_and_dropping_broken_residues(fixture_pdb):
    with pytest.warns(UserWarning, match=r"residue A:GLY:4 lacks backbone atom\(s\) CA") as record:
        structure = read_structure(fixture_pdb)
    assert str(fixture_pdb) in str(record[0].message)
    top, coords = structure.topology, structure.coords
    assert top.res_name.tolist() == ["ALA", "SER", "GLY", "GLY", "ALA", "ALA", "ALA", "ALA", "ALA"]
    assert top.res_seq.tolist() == [1, 2, 3, 3, 5, 8, 1, 2, 3]
    assert top.ins_code.tolist() == ["", "", "", "A", "", "", "", "", ""]
    assert top.chain_id.tolist() == ["A"] * 6 + ["B"] * 3
    # Peptide bonds: insertion codes are consecutive; the gap 3A -> 5 (GLY4 dropped), 5 -> 8, chain ends
    # and the 10 A break between B2 and B3 are not.
    assert top.bonded_to_next.tolist() == [True, True, True, False, False, False, True, False, False]
    # No hydrogens, waters or ligands; elements from names even without an element column (chain B).
    assert top.n_atoms == 5 + 6 + 4 + 4 + 5 + 5 + 3 * 5
    assert set(top.element.tolist()) == {"C", "N", "O"}
    assert not any(name.startswith("H") for name in top.atom_name)
    assert top.atom_name[top.residue_start[0] : top.residue_start[1]].tolist() == ["N", "CA", "C", "O", "CB"]
    # Altloc B (occupancy 0.7) wins for every atom of SER2.
    ser = slice(top.residue_start[1], top.residue_start[2])
    assert top.atom_name[ser].tolist() == ["N", "CA", "C", "O", "CB", "OG"]
    np.testing.assert_allclose(coords[ser][4], SER_CB_B)
    np.testing.assert_allclose(coords[ser][5], (4.8, 3.6, 2.4))
    assert coords.dtype == np.float64 and coords.shape == (top.n_atoms, 3)


def test_strict_refuses_residues_without_backbone(fixture_pdb):
    with pytest.raises(InputError, match=r"mini\.pdb: residue A:GLY:4 lacks backbone atom\(s\) CA"):
        read_structure(fixture_pdb, strict=True)


@pytest.mark.parametrize("suffix", [".cif", ".pdb"])
def test_ensemble_write_read_round_trip(fixture_pdb, tmp_path, suffix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = read_structure(fixture_pdb)
    top = structure.topology
    rng = np.random.default_rng(0)
    coords = structure.coords[None] + rng.normal(0, 0.01, (3, top.n_atoms, 3))
    out = tmp_path / f"ensemble{suffix}"
    assert write_ensemble(out, top, coords) == [out]
    back_top, back = read_ensemble(out)
    for field in (
        "atom_name",
        "element",
        "residue_index",
        "res_name",
        "res_seq",
        "ins_code",
        "chain_id",
        "bonded_to_next",
    ):
        np.testing.assert_array_equal(getattr(back_top, field), getattr(top, field), err_msg=field)
    np.testing.assert_allclose(back, coords, atol=6e-4)  # 3 decimals in PDB
    # The first model read as a single structure.
    np.testing.assert_allclose(read_structure(out).coords, coords[0], atol=6e-4)
    text = out.read_text()
    if suffix == ".pdb":
        assert text.count("MODEL ") == 3 and text.count("ENDMDL") == 3
        assert "   3A" in text or "  3A " in text  # insertion code column
    else:
        assert "_atom_site.pdbx_PDB_ins_code" in text and "_atom_site.pdbx_PDB_model_num" in text
    # Only the requested atoms.
    ca_top, ca = read_ensemble(out, atoms="CA")
    assert ca_top.n_atoms == top.n_residues and ca.shape == (3, top.n_residues, 3)
    np.testing.assert_allclose(ca, coords[:, top.atom_index("CA")], atol=6e-4)


def test_single_structure_write_and_torch_input(tmp_path):
    import torch

    structure = read_structure(ADK_OPEN_PDB)
    out = tmp_path / "one.cif"
    write_ensemble(out, structure.topology, torch.as_tensor(structure.coords, dtype=torch.float32))
    back = read_structure(out)
    assert back.topology.same_atoms(structure.topology)
    np.testing.assert_allclose(back.coords, structure.coords, atol=1e-3)


def test_models_with_different_atoms_are_refused(fixture_pdb, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = read_structure(fixture_pdb)
    one = tmp_path / "one.pdb"
    write_ensemble(one, structure.topology, structure.coords)
    model = [line for line in one.read_text().splitlines() if line.startswith(("ATOM", "TER"))]
    # Model 2 lacks chain B's CB atoms.
    fewer = [line for line in model if not (line[12:16] == " CB " and line[21] == "B")]
    assert len(fewer) == len(model) - 3
    two_models = ["MODEL        1", *model, "ENDMDL", "MODEL        2", *fewer, "ENDMDL", "END"]
    bad = tmp_path / "bad.pdb"
    bad.write_text("\n".join(two_models) + "\n")
    with pytest.raises(InputError, match=r"bad\.pdb: model 2 has different atoms from model 1: 41 atoms"):
        read_ensemble(bad)
    # A model that lists more (a water, a hydrogen) but has the same protein heavy atoms is fine.
    extra = [
        _atom(900, "H", "ALA", "A", 1, (0.1, 0.2, 0.3), element="H"),
        *model,
        _atom(901, "O", "HOH", "A", 101, (20.0, 20.0, 20.0), element="O", record="HETATM"),
    ]
    ok = tmp_path / "ok.pdb"
    lines = ["MODEL        1", *model, "ENDMDL", "MODEL        2", *extra, "ENDMDL", "END"]
    ok.write_text("\n".join(lines) + "\n")
    top, coords = read_ensemble(ok)
    assert top.same_atoms(structure.topology) and coords.shape == (2, top.n_atoms, 3)
    np.testing.assert_allclose(coords[1], coords[0])
    np.testing.assert_allclose(coords[0], structure.coords, atol=6e-4)


def test_adk_pdb_and_psf_dcd_give_the_same_topology():
    pdb = read_structure(ADK_OPEN_PDB)
    top, coords = read_ensemble(ADK_DCD, topology_path=ADK_PSF)
    assert pdb.topology.n_residues == 214 and pdb.topology.n_atoms == 1656
    assert top.same_atoms(pdb.topology)
    assert top.chain_id[0] == "A"  # PSF segment 4AKE and the PDB's blank chain both become A
    np.testing.assert_array_equal(top.bonded_to_next, pdb.topology.bonded_to_next)
    assert top.bonded_to_next.sum() == 213
    assert coords.shape == (98, 1656, 3) and coords.dtype == np.float64
    # Residue-local geometry agrees (same atoms in the same order): CA-CB distances match to 0.2 A.
    ca, cb = pdb.topology.atom_index("CA"), pdb.topology.atom_index("CB")
    has_cb = cb >= 0
    d_pdb = np.linalg.norm(pdb.coords[ca[has_cb]] - pdb.coords[cb[has_cb]], axis=-1)
    d_md = np.linalg.norm(coords[-1, ca[has_cb]] - coords[-1, cb[has_cb]], axis=-1)
    np.testing.assert_allclose(d_md, d_pdb, atol=0.2)


def test_gromacs_topologies_and_periodic_box_warning():
    """GROMACS names (CYSH, HISB, LYSH) are protein; the TPR's molecule name "AKeco" is not a chain id.
    This trajectory is stored wrapped into its box, which breaks the chain: the reader says so."""
    pdb = read_structure(ADK_OPLS_PDB)
    with pytest.warns(UserWarning, match=r"split across the periodic box .* A:ARG:124 - A:VAL:125"):
        gro_top, gro = read_ensemble(ADK_OPLS_XTC, topology_path=ADK_OPLS_GRO)
    with pytest.warns(UserWarning, match="split across the periodic box"):
        tpr_top, _ = read_ensemble(ADK_OPLS_XTC, topology_path=ADK_OPLS_TPR)
    assert gro_top.same_atoms(pdb.topology) and gro.shape == (10, 1656, 3)
    assert set(tpr_top.chain_id) == {"A"} and tpr_top.n_atoms == 1656
    np.testing.assert_array_equal(tpr_top.atom_name, gro_top.atom_name)
    assert {"CYSH", "HISB"} <= set(tpr_top.res_name)
    assert not gro_top.bonded_to_next[123]  # the wrapped bond 124-125


def test_dcd_write_read_round_trip(tmp_path):
    structure = read_structure(ADK_OPEN_PDB)
    coords = structure.coords[None] + np.arange(4)[:, None, None] * 0.5
    out = tmp_path / "ens.dcd"
    written = write_ensemble(out, structure.topology, coords)
    assert written == [out, tmp_path / "ens_topology.pdb"]
    top, back = read_ensemble(out, topology_path=written[1])
    assert top.same_atoms(structure.topology)
    np.testing.assert_allclose(back, coords, atol=1e-4)


def test_element_from_name():
    assert element_from_name("CA", "ALA") == "C"
    assert element_from_name("SE", "MSE") == "Se"
    assert element_from_name("SD", "MET") == "S"
    assert element_from_name("1HB", "ALA") == "H"
    assert element_from_name("OXT", "GLY") == "O"
    assert element_from_name("ZN", "XYZ", fallback="Zn") == "Zn"


def test_bad_input_messages(tmp_path):
    structure = read_structure(ADK_OPEN_PDB)
    with pytest.raises(InputError, match="missing.pdb: file not found"):
        read_structure(tmp_path / "missing.pdb")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown structure format"):
        read_structure(tmp_path / "notes.txt")
    (tmp_path / "empty.pdb").write_text("REMARK nothing here\nEND\n")
    with pytest.raises(InputError, match="empty.pdb: no"):
        read_structure(tmp_path / "empty.pdb")
    (tmp_path / "water.pdb").write_text(
        _atom(1, "O", "HOH", "A", 1, (0, 0, 0), element="O", record="HETATM") + "\nEND\n"
    )
    with pytest.raises(InputError, match="water.pdb: no protein residues"):
        read_structure(tmp_path / "water.pdb")
    (tmp_path / "traj.dcd").write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match="needs its topology file"):
        read_ensemble(tmp_path / "traj.dcd")
    (tmp_path / "mini.pdb").write_text(fixture_pdb_text())
    with pytest.raises(InputError, match="cannot read with topology"):  # 3341 atoms in the DCD, 40 in the PDB
        read_ensemble(ADK_DCD, topology_path=tmp_path / "mini.pdb")
    with pytest.raises(InputError, match=r"out.pdb: coordinates of shape \(2, 5, 3\) do not fit 1656 atoms"):
        write_ensemble(tmp_path / "out.pdb", structure.topology, np.zeros((2, 5, 3)))
    bad = np.repeat(structure.coords[None], 2, axis=0)
    bad[1, 3, 0] = np.nan
    (tmp_path / "keep.pdb").write_text("old")
    with pytest.raises(InputError, match="NaN"):
        write_ensemble(tmp_path / "keep.pdb", structure.topology, bad)
    assert (tmp_path / "keep.pdb").read_text() == "old"
    top = structure.topology
    long_chains = Topology(
        top.atom_name,
        top.element,
        top.residue_index,
        top.res_name,
        top.res_seq,
        top.ins_code,
        np.full(top.n_residues, "LONG"),
        top.bonded_to_next,
    )
    with pytest.raises(InputError, match=r"long.pdb: cannot write as PDB \(chain name too long.*write .cif"):
        write_ensemble(tmp_path / "long.pdb", long_chains, structure.coords)
    assert not (tmp_path / "long.pdb").exists()
    write_ensemble(tmp_path / "long.cif", long_chains, structure.coords)
    assert read_structure(tmp_path / "long.cif").topology.chain_id[0] == "LONG"
    with pytest.raises(InputError, match="unknown ensemble format"):
        write_ensemble(tmp_path / "out.xyz", structure.topology, structure.coords)


def test_topology_validates_its_arrays():
    with pytest.raises(ValueError, match="element"):
        Topology(["N"], [], [0], ["ALA"], [1], [""], ["A"], [False])
    with pytest.raises(ValueError, match="grouped by residue"):
        Topology(["N", "CA"], ["N", "C"], [1, 0], ["ALA", "ALA"], [1, 2], ["", ""], ["A", "A"], [0, 0])


def test_atoms_are_ordered_backbone_first_whatever_the_file_order(tmp_path):
    """CHARMM writes side chains before C and O; RCSB files after. Both read in the same order."""
    lines = []
    for k, names in enumerate([["N", "CA", "CB", "C", "O"], ["N", "CA", "CB", "C", "OT1", "OT2"]]):
        table = dict(_residue_atoms(k, ["N", "CA", "C", "O", "CB"]))
        table.update({"OT1": table["O"], "OT2": (table["O"][0] + 1, table["O"][1], 0)})
        lines += [_atom(len(lines) + 1, n, "ALA", "A", k + 1, table[n]) for n in names]
    path = tmp_path / "charmm_order.pdb"
    path.write_text("\n".join(lines) + "\nEND\n")
    structure = read_structure(path)
    names = structure.topology.atom_name.tolist()
    assert names == ["N", "CA", "C", "O", "CB", "N", "CA", "C", "CB", "OT1", "OT2"]
    np.testing.assert_allclose(structure.coords[4], dict(_residue_atoms(0, ["CB"]))["CB"])
