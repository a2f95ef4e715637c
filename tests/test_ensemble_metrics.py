"""COV / MAT, RMSF against the truth, backbone angles and Ramachandran outliers (evaluate's additions)."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from atomvae.evaluate.ensemble_metrics import compare_rmsf, coverage_matching, ensemble_rmsf
from atomvae.evaluate.evaluation import EvaluateConfig, evaluate
from atomvae.evaluate.stereochemistry import (
    backbone_angles,
    phi_psi,
    ramachandran_outliers,
    stereochemistry_summary,
)
from atomvae.structure.io import read_structure, write_ensemble
from helpers_train import BASE_PDB


def test_coverage_and_matching_from_an_rmsd_matrix():
    rmsd = np.array([[0.5, 3.0, 4.0], [2.5, 1.0, 5.0]])  # 2 predictions (rows) x 3 true structures (columns)
    result = coverage_matching(rmsd, threshold=2.0)
    assert result.cov_recall == pytest.approx(2 / 3)  # GT 0 and 1 have a prediction within 2 A, GT 2 not
    assert result.mat_recall == pytest.approx((0.5 + 1.0 + 4.0) / 3)
    assert result.cov_precision == 1.0 and result.mat_precision == pytest.approx(0.75)
    assert coverage_matching(rmsd, threshold=0.5).cov_recall == 0.0  # strictly below the threshold


def _rigidly_moved(coords: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rotations = Rotation.random(len(coords), random_state=seed).as_matrix()
    return np.einsum("mij,maj->mai", rotations, coords) + rng.normal(0, 20, (len(coords), 1, 3))


def test_rmsf_is_the_fluctuation_of_a_moving_atom_whatever_the_frames():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 10, (200, 3))
    ensemble = np.repeat(base[None], 40, axis=0)
    ensemble[:, 7, 0] += np.where(np.arange(40) % 2 == 0, 1.5, -1.5)  # atom 7 jumps +-1.5 A along x
    rmsf = ensemble_rmsf(_rigidly_moved(ensemble, 3))
    assert rmsf[7] == pytest.approx(1.5, rel=0.02)
    assert np.delete(rmsf, 7).max() < 0.05  # the others only feel the superposition's compromise
    same = compare_rmsf(_rigidly_moved(ensemble, 4), ensemble)
    assert same["pearson_r"] == pytest.approx(1.0) and same["mean_abs_difference"] < 1e-6


def test_phi_psi_and_angles_agree_with_gemmi():
    structure = read_structure(BASE_PDB)
    phi, psi, residues = phi_psi(structure.coords[None], structure.topology)
    st = gemmi.read_structure(str(BASE_PDB))
    chain = st[0][0]
    for value_phi, value_psi, r in zip(phi[0], psi[0], residues, strict=True):
        before, here, after = chain[int(r) - 1], chain[int(r)], chain[int(r) + 1]
        phi_gemmi = gemmi.calculate_dihedral(
            before["C"][0].pos, here["N"][0].pos, here["CA"][0].pos, here["C"][0].pos
        )
        psi_gemmi = gemmi.calculate_dihedral(
            here["N"][0].pos, here["CA"][0].pos, here["C"][0].pos, after["N"][0].pos
        )
        assert value_phi == pytest.approx(np.degrees(phi_gemmi), abs=1e-3)
        assert value_psi == pytest.approx(np.degrees(psi_gemmi), abs=1e-3)
    angles = backbone_angles(structure.coords[None], structure.topology)
    n_ca_c = [
        np.degrees(gemmi.calculate_angle(res["N"][0].pos, res["CA"][0].pos, res["C"][0].pos)) for res in chain
    ]
    assert np.allclose(angles["N-CA-C"][0], n_ca_c, atol=1e-3)


def test_ramachandran_outliers_and_distorted_angles_are_counted():
    # beta, alpha-helix and left-handed alpha are allowed; phi near 0 and phi > 0 with psi near -90 are not
    outliers = ramachandran_outliers(
        np.array([-120.0, -63.0, 60.0, 0.0, 100.0]), np.array([130.0, -41.0, 45.0, 0.0, -90.0])
    )
    assert outliers.tolist() == [False, False, False, True, True]
    rng = np.random.default_rng(0)  # random backbones: a good part is outside the allowed region
    phi, psi = rng.uniform(-180, 180, 20000), rng.uniform(-180, 180, 20000)
    random_fraction = ramachandran_outliers(phi, psi).mean()
    assert 0.3 < random_fraction < 0.5
    structure = read_structure(BASE_PDB)
    topology, coords = structure.topology, structure.coords
    good = stereochemistry_summary(coords[None], topology)
    assert good.angle_outlier_fraction == 0.0 and good.ramachandran_outlier_fraction == 0.0
    bent = coords.copy()
    ca, c = topology.atom_index("CA")[4], topology.atom_index("C")[4]
    # swing residue 5's C about its CA by 40 degrees: N-CA-C leaves Engh & Huber's 111 +- 2.8
    axis = np.cross(coords[topology.atom_index("N")[4]] - coords[ca], coords[c] - coords[ca])
    rotation = Rotation.from_rotvec(np.radians(40.0) * axis / np.linalg.norm(axis)).as_matrix()
    bent[c] = coords[ca] + rotation @ (coords[c] - coords[ca])
    summary = stereochemistry_summary(np.stack([coords, bent]), topology)
    assert summary.fraction_no_angle_outlier == 0.5
    assert summary.fraction_ok == good.fraction_ok or summary.fraction_bonds_ok < 1.0  # unchanged meaning


def test_evaluate_reports_coverage_and_rmsf(tmp_path):
    structure = read_structure(BASE_PDB)
    rng = np.random.default_rng(2)
    gt = structure.coords[None] + rng.normal(0, 0.3, (12, *structure.coords.shape))
    gt_path, pred_path = tmp_path / "gt.pdb", tmp_path / "pred.pdb"
    write_ensemble(gt_path, structure.topology, gt)
    write_ensemble(pred_path, structure.topology, _rigidly_moved(gt, 5))  # the truth in other frames
    summary = evaluate(
        EvaluateConfig(pred=pred_path, gt=gt_path, n=12, cov_threshold=0.1, out_dir=tmp_path / "eval")
    )
    assert summary["coverage"]["cov_recall"] == 1.0 and summary["coverage"]["cov_precision"] == 1.0
    assert summary["coverage"]["mat_recall"] < 0.01 and summary["coverage"]["threshold"] == 0.1
    assert summary["rmsf"]["pearson_r"] == pytest.approx(1.0, abs=1e-4)
    assert len(summary["rmsf"]["residues"]) == structure.topology.n_residues
    assert "Coverage and matching" in (tmp_path / "eval" / "report.html").read_text()
