"""Which peptide bonds fail the plausibility check in a sampled ensemble, and how often.

    .venv/bin/python benchmarks/strained_bonds.py SAMPLES.dcd SAMPLES_topology.pdb

Per bonded C(i)-N(i+1) pair: the worst deviation from 1.33 A, the fraction of samples beyond the check's
0.2 A tolerance, and the mean length, for the eight worst bonds.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from atomvae.structure.io import read_ensemble


def main(samples: str, topology_path: str) -> None:
    warnings.simplefilter("ignore")  # MDAnalysis chatter about DCD readers
    topology, coords = read_ensemble(samples, topology_path)
    c, n = topology.atom_index("C"), topology.atom_index("N")
    bonded = topology.bonded_to_next[:-1]
    length = np.linalg.norm(coords[:, c[:-1]] - coords[:, n[1:]], axis=-1)[:, bonded]
    deviation = np.abs(length - 1.33)
    residues = np.flatnonzero(bonded)
    print(f"samples with every bond within 0.2 A: {(deviation.max(axis=1) <= 0.2).mean():.3f}")
    for k in np.argsort(-deviation.max(axis=0))[:8]:
        print(
            f"{topology.residue_label(residues[k])}: worst {deviation[:, k].max():.2f} A, beyond 0.2 A in "
            f"{(deviation[:, k] > 0.2).mean():.3f} of samples, mean length {length[:, k].mean():.2f} A"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
