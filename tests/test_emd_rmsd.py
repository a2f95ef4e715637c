"""EMD-RMSD against brute force, its invariances, its references, and atom matching between inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from atomvae.errors import InputError
from atomvae.evaluate.atom_matching import match_atoms
from atomvae.evaluate.emd_rmsd import compare_ensembles, emd_rmsd
from atomvae.structure.topology import Topology


def _scipy_rmsd(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    rot, _ = Rotation.align_vectors(b, a)
    return np.sqrt(((rot.apply(a) - b) ** 2).sum(1).mean())


def _ensemble(seed, n, n_atoms=12, spread=2.0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_atoms, 3)) * 6.0
    return base + rng.normal(size=(n, n_atoms, 3)) * spread


def _rigidly_moved(x, seed):
    rots = Rotation.random(len(x), random_state=seed).as_matrix()
    shifts = np.random.default_rng(seed).normal(size=(len(x), 1, 3)) * 20.0
    return np.einsum("nij,naj->nai", rots, x) + shifts


@pytest.mark.parametrize("n,seed", [(1, 0), (2, 1), (3, 2), (5, 3), (6, 4)])
def test_emd_rmsd_equals_brute_force_over_all_permutations(n, seed):
    pred, gt = _ensemble(seed, n), _ensemble(seed + 100, n)
    cost = np.array([[_scipy_rmsd(p, g) for g in gt] for p in pred])
    brute = min(cost[np.arange(n), list(perm)].mean() for perm in itertools.permutations(range(n)))
    got = emd_rmsd(pred, gt)
    assert got.emd_rmsd == pytest.approx(brute, rel=1e-9)
    assert got.n == n and sorted(got.gt_index.tolist()) == list(range(n))
    np.testing.assert_allclose(got.assigned_rmsd, cost[np.arange(n), got.gt_index], rtol=1e-9)


def test_emd_rmsd_is_zero_for_identical_ensembles():
    x = _ensemble(7, 20)
    assert emd_rmsd(x, x.copy()).emd_rmsd == pytest.approx(0.0, abs=1e-5)


def test_emd_rmsd_invariant_to_rigid_motion_of_either_ensemble_and_to_order():
    pred, gt = _ensemble(8, 15), _ensemble(9, 15)
    ref = emd_rmsd(pred, gt).emd_rmsd
    assert ref > 0.5
    assert emd_rmsd(_rigidly_moved(pred, 1), gt).emd_rmsd == pytest.approx(ref, rel=1e-9)
    assert emd_rmsd(pred, _rigidly_moved(gt, 2)).emd_rmsd == pytest.approx(ref, rel=1e-9)
    rng = np.random.default_rng(3)
    shuffled = emd_rmsd(pred[rng.permutation(15)], gt[rng.permutation(15)])
    assert shuffled.emd_rmsd == pytest.approx(ref, rel=1e-9)


def test_emd_rmsd_hand_computed_translation_case():
    """Each gt structure is a pred structure with one atom moved: the matching is the identity and
    each assigned RMSD is known in closed form for 2-atom 'structures' (rotation can't help a stretch)."""
    pred = np.array([[[0, 0, 0], [1, 0, 0]], [[0, 0, 0], [5, 0, 0]]], dtype=float)
    gt = np.array([[[0, 0, 0], [5.5, 0, 0]], [[0, 0, 0], [1.2, 0, 0]]], dtype=float)
    # Centred 2-atom rods of lengths L and M: aligned, each atom is off by |L - M| / 2.
    got = emd_rmsd(pred, gt)
    assert got.gt_index.tolist() == [1, 0]
    # Collinear atoms make the largest quaternion eigenvalue a double root: ~sqrt(eps) accuracy there.
    assert got.emd_rmsd == pytest.approx((0.1 + 0.25) / 2, abs=1e-6)


def test_compare_ensembles_references():
    rng = np.random.default_rng(10)
    centre = rng.normal(size=(10, 3)) * 6.0
    # Two modes, the base sits in one of them: it cannot explain the other.
    gt = centre + rng.normal(size=(40, 10, 3)) * 0.5
    gt[::2, :5] += 4.0
    base = gt[1] + rng.normal(size=(10, 3)) * 0.5
    pred = _rigidly_moved(gt[rng.permutation(40)[:12]], 4) + rng.normal(size=(12, 10, 3)) * 0.3
    out = compare_ensembles(pred, gt, n=8, seed=0, base=base)
    assert out.n == 8 and out.n_atoms == 10
    assert len(set(out.pred_index.tolist())) == 8 and len(set(out.gt_index.tolist())) == 8
    # Base-only reference = mean RMSD from the base to the N gt structures of the shared draw.
    expected_base = np.mean([_scipy_rmsd(base, g) for g in gt[out.gt_index]])
    assert out.base_only == pytest.approx(expected_base, rel=1e-9)
    assert out.floor is not None
    expected_frac = (out.base_only - out.model.emd_rmsd) / (out.base_only - out.floor.emd_rmsd)
    assert out.recovered_fraction == pytest.approx(expected_frac)
    d = out.to_dict()
    assert {"emd_rmsd", "n", "base_only", "floor", "recovered_fraction"} <= set(d)
    # Same seed, same draws and numbers.
    again = compare_ensembles(pred, gt, n=8, seed=0, base=base)
    assert again.model.emd_rmsd == out.model.emd_rmsd


def test_compare_ensembles_floor_needs_2n_and_errors_name_the_file():
    gt = _ensemble(11, 10)
    out = compare_ensembles(gt[:6], gt, n=6, seed=1, base=gt[0])
    assert out.floor is None and out.recovered_fraction is None and "floor" not in out.to_dict()
    assert any("2N" in note for note in out.notes)
    with pytest.raises(InputError, match="pred.pdb: .*holds 6 structures, fewer than the 7"):
        compare_ensembles(gt[:6], gt, n=7, seed=1, pred_path="pred.pdb", gt_path="gt.pdb")
    with pytest.raises(InputError, match="gt.pdb: .*holds 5 structures, fewer than the 6"):
        compare_ensembles(gt, gt[:5], n=6, seed=1, pred_path="pred.pdb", gt_path="gt.pdb")


def _topology(chain, residues, atoms_per_res=("N", "CA", "C", "O", "CB"), first_seq=1):
    names, res_index = [], []
    for r, _ in enumerate(residues):
        names += list(atoms_per_res)
        res_index += [r] * len(atoms_per_res)
    n_res = len(residues)
    return Topology(
        atom_name=names,
        element=[n[0] for n in names],
        residue_index=res_index,
        res_name=list(residues),
        res_seq=np.arange(first_seq, first_seq + n_res),
        ins_code=[""] * n_res,
        chain_id=[chain] * n_res,
        bonded_to_next=[True] * (n_res - 1) + [False],
    )


def test_match_atoms_intersects_on_residue_keys():
    full = _topology("A", ["ALA", "GLY", "SER", "HIS"])  # residues 1..4, 5 atoms each
    ca_only = _topology("A", ["GLY", "SER", "HSD", "LYS"], atoms_per_res=("CA",), first_seq=2)  # 2..5
    m = match_atoms({"gt": (full, "gt.pdb"), "pred": (ca_only, "pred.pdb")}, atoms="CA")
    assert m.n_atoms == 3 and m.keys == ("A:2:CA", "A:3:CA", "A:4:CA")
    assert m.indices["gt"].tolist() == [6, 11, 16] and m.indices["pred"].tolist() == [0, 1, 2]
    bb = match_atoms({"gt": (full, "gt.pdb"), "pred": (full, "p.pdb")}, atoms="backbone")
    assert bb.n_atoms == 16
    heavy = match_atoms({"gt": (full, "gt.pdb"), "pred": (full, "p.pdb")}, atoms="heavy")
    assert heavy.n_atoms == 20


def test_match_atoms_terminal_oxygen_names():
    pdb_style = _topology("A", ["ALA", "GLY"], atoms_per_res=("N", "CA", "C", "O", "OXT"))
    charmm = _topology("A", ["ALA", "GLY"], atoms_per_res=("N", "CA", "C", "OT1", "OT2"))
    m = match_atoms({"gt": (pdb_style, "gt.pdb"), "pred": (charmm, "pred.pdb")}, atoms="heavy")
    assert m.n_atoms == 10 and m.indices["pred"].tolist() == list(range(10))
    ile_pdb = _topology("A", ["ILE"], atoms_per_res=("N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1"))
    ile_charmm = _topology("A", ["ILE"], atoms_per_res=("N", "CA", "C", "O", "CB", "CG1", "CG2", "CD"))
    assert match_atoms({"gt": (ile_pdb, "a"), "pred": (ile_charmm, "b")}, atoms="heavy").n_atoms == 8


def test_match_atoms_single_chains_with_different_ids_and_errors():
    a = _topology("A", ["ALA", "GLY"])
    x = _topology("X", ["ALA", "GLY"])
    m = match_atoms({"gt": (a, "gt.pdb"), "pred": (x, "pred.pdb")})
    assert m.ignored_chain_ids and m.n_atoms == 2
    wrong = _topology("A", ["ALA", "TRP"])
    with pytest.raises(InputError, match=r"pred.pdb: residue A:2 is TRP here but GLY in gt.pdb"):
        match_atoms({"gt": (a, "gt.pdb"), "pred": (wrong, "pred.pdb")})
    far = _topology("A", ["ALA", "GLY"], first_seq=50)
    with pytest.raises(InputError, match="pred.pdb: no CA atoms in common with gt.pdb"):
        match_atoms({"gt": (a, "gt.pdb"), "pred": (far, "pred.pdb")})
    with pytest.raises(InputError, match="--atoms"):
        match_atoms({"gt": (a, "gt.pdb")}, atoms="sidechain")


def test_compare_ensembles_rejects_non_finite_structures():
    gt = _ensemble(12, 6)
    pred = gt.copy()
    pred[4, 2, 1] = np.nan
    message = r"samples.pdb: 1 structures of the predicted ensemble have non-finite coordinates"
    with pytest.raises(InputError, match=message + r" \(the first is structure 4\)"):
        compare_ensembles(pred, gt, n=3, seed=0, pred_path="samples.pdb")


def test_match_atoms_pdb_against_charmm_psf_topology():
    """A PDB and a CHARMM PSF of the same protein (HSD, CHARMM atom names) match atom for atom."""
    from MDAnalysisTests.datafiles import DCD, PSF, PDB_closed

    from atomvae.structure.io import read_ensemble, read_structure

    pdb = read_structure(PDB_closed)
    psf_top, frames = read_ensemble(DCD, PSF)
    # Both files name the C-terminal oxygens OT1/OT2, so "backbone" (N CA C O) has no O in the last residue.
    for atoms, expected in (("CA", 214), ("backbone", 4 * 214 - 1), ("heavy", pdb.topology.n_atoms)):
        m = match_atoms({"gt": (psf_top, "adk.psf"), "base": (pdb.topology, "adk_closed.pdb")}, atoms)
        assert m.n_atoms == expected and not m.ignored_chain_ids
    # Matched coordinates are the same atoms: the closed PDB is close to the trajectory's first frame.
    m = match_atoms({"gt": (psf_top, "adk.psf"), "base": (pdb.topology, "adk_closed.pdb")}, "heavy")
    rmsd = emd_rmsd(frames[:1, m.indices["gt"]], pdb.coords[None, m.indices["base"]]).emd_rmsd
    assert rmsd < 2.0
