"""Backbone geometry of a run's samples against its base and ground truth (issue 10, "Peptide geometry").

Prints, for the base, the first N samples and the first N ground-truth structures: each backbone angle's
mean and RMS deviation from Engh & Huber (``evaluate.stereochemistry``) and the Ramachandran outlier
fraction; for the samples, how the outliers spread over residues; and the RMS change of phi and psi
from the base's, for samples and truth.

    .venv/bin/python benchmarks/backbone_geometry.py DATA SAMPLES [--n 128]

DATA holds ``base_open_docked.pdb``, ``gt_ensemble.dcd`` and ``gt_ensemble_topology.pdb`` (an
``atomvae demo`` folder or a ``benchmarks/adk.py --out`` folder); SAMPLES holds ``samples.dcd`` and
``samples_topology.pdb`` (the same demo folder, or the benchmark's ``run_given_seed0``).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from atomvae.evaluate import stereochemistry
from atomvae.structure.io import read_ensemble, read_structure
from atomvae.structure.topology import Topology


def _wrapped(degrees: np.ndarray) -> np.ndarray:
    return (degrees + 180.0) % 360.0 - 180.0


def summarise(name: str, coords: np.ndarray, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """Print the angle and Ramachandran figures of coords (M, A, 3); return (phi, psi) (M, P) degrees."""
    for angle, values in stereochemistry.backbone_angles(coords, topology).items():
        ideal = stereochemistry.BACKBONE_ANGLES[angle][0]
        rms = float(np.sqrt(((values - ideal) ** 2).mean()))
        print(f"{name} {angle}: mean {values.mean():.1f} deg, rms from Engh & Huber ({ideal}) {rms:.1f} deg")
    phi, psi, residues = stereochemistry.phi_psi(coords, topology)
    checked = np.asarray(topology.res_name)[residues] != "GLY"
    outliers = stereochemistry.ramachandran_outliers(phi[:, checked], psi[:, checked])
    if outliers is not None:
        print(f"{name} Ramachandran outliers: {outliers.mean():.3f}")
        if len(coords) > 1:
            per_residue = outliers.mean(axis=0)
            print(
                f"{name}: {int((per_residue == 1.0).sum())} of {len(per_residue)} non-glycine residues are "
                f"outliers in every structure, {int((per_residue > 0.5).sum())} in more than half"
            )
    return phi, psi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--n", type=int, default=128, help="structures of each ensemble")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # MDAnalysis chatter about DCD readers

    base = read_structure(args.data / "base_open_docked.pdb")
    base_phi, base_psi = summarise("base", base.coords[None].astype(np.float64), base.topology)
    for name, (topology, coords) in (
        ("samples", read_ensemble(args.samples / "samples.dcd", args.samples / "samples_topology.pdb")),
        ("truth", read_ensemble(args.data / "gt_ensemble.dcd", args.data / "gt_ensemble_topology.pdb")),
    ):
        phi, psi = summarise(name, coords[: args.n], topology)
        print(
            f"{name}: phi and psi {np.sqrt((_wrapped(phi - base_phi) ** 2).mean()):.0f} and "
            f"{np.sqrt((_wrapped(psi - base_psi) ** 2).mean()):.0f} deg rms from the base's"
        )


if __name__ == "__main__":
    main()
