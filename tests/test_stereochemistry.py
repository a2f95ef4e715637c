"""Peptide-bond and clash checks on hand-made structures with known answers."""

import numpy as np
import pytest

from atomvae.evaluate.stereochemistry import clash_counts, peptide_bond_lengths, stereochemistry_summary
from atomvae.structure.topology import Topology


def three_residue_chain(gap_after_second: bool = False) -> tuple[Topology, np.ndarray]:
    """Three residues of N, CA, C laid along x, 1.33 A peptide bonds, residues 3.8 A apart."""
    names = ["N", "CA", "C"] * 3
    topo = Topology(
        atom_name=names,
        element=[n[0] for n in names],
        residue_index=np.repeat(np.arange(3), 3),
        res_name=["GLY"] * 3,
        res_seq=[1, 2, 4] if gap_after_second else [1, 2, 3],
        ins_code=[""] * 3,
        chain_id=["A"] * 3,
        bonded_to_next=[True, not gap_after_second, False],
    )
    x = []
    for r in range(3):
        base = 3.8 * r
        x += [[base, 0, 0], [base + 1.2, 0.8, 0], [base + 2.47, 0, 0]]  # C(r) to N(r+1) = 1.33 A
    return topo, np.asarray(x)[None]


def test_peptide_bond_lengths_known():
    topo, xyz = three_residue_chain()
    np.testing.assert_allclose(peptide_bond_lengths(xyz, topo), [[1.33, 1.33]], atol=1e-12)


def test_bonds_across_gaps_are_not_counted():
    topo, xyz = three_residue_chain(gap_after_second=True)
    xyz = xyz.copy()
    xyz[0, 6:] += [10.0, 0, 0]  # move the third residue far away: a gap, not a broken bond
    assert peptide_bond_lengths(xyz, topo).shape == (1, 1)
    assert stereochemistry_summary(xyz, topo).fraction_bonds_ok == 1.0


def test_stretched_bond_fails_tolerance():
    topo, xyz = three_residue_chain()
    stretched = xyz.copy()
    stretched[0, 6:] += [0.25, 0, 0]  # second bond 1.58 A: outside 1.33 +/- 0.2
    summary = stereochemistry_summary(np.concatenate([xyz, stretched]), topo)
    assert summary.fraction_bonds_ok == pytest.approx(0.5)
    assert summary.worst_bond_deviation == pytest.approx(0.25)


def test_clash_between_non_neighbours_only():
    topo, xyz = three_residue_chain()
    assert clash_counts(xyz, topo).tolist() == [0]  # the 1.33 A bonds and intra-residue pairs do not count
    folded = xyz.copy()
    folded[0, 6] = folded[0, 0] + [0.0, -1.5, 0.0]  # residue 3's N 1.5 A from residue 1's N
    assert clash_counts(folded, topo).tolist() == [1]
    summary = stereochemistry_summary(np.concatenate([xyz, folded]), topo)
    assert summary.fraction_no_clash == pytest.approx(0.5)
    assert summary.fraction_ok == pytest.approx(0.5)
