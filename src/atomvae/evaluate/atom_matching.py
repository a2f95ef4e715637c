"""The same atoms, in the same order, from ensembles whose topologies differ.

Ensembles to compare may come from different sources (an all-atom prediction, a CA-only trajectory,
a base PDB with more residues), so atoms are matched by (chain, residue number, insertion code, atom
name) after the ``--atoms`` selection, and only the intersection is compared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from atomvae.errors import InputError
from atomvae.structure.topology import Topology

__all__ = ["AtomMatch", "match_atoms"]


@dataclass(frozen=True)
class AtomMatch:
    """indices[label] (K,): atom indices into that ensemble's topology, in one common order.
    keys (K,): "chain:resSEQicode:atom" per compared atom. ignored_chain_ids: matching fell back to
    ignoring chain IDs (each side had exactly one chain, named differently)."""

    indices: dict[str, np.ndarray]
    keys: tuple[str, ...]
    ignored_chain_ids: bool = False

    @property
    def n_atoms(self) -> int:
        return len(self.keys)


# C-terminal oxygens as force fields name them (CHARMM OT1/OT2, GROMACS OC1/OC2 or O1/O2) -> PDB names.
_TERMINAL_OXYGEN = {"OT1": "O", "OC1": "O", "O1": "O", "OT2": "OXT", "OC2": "OXT", "O2": "OXT"}


def _atom_keys(topology: Topology, atom_idx: np.ndarray, with_chain: bool) -> list[tuple]:
    res = topology.residue_index[atom_idx]
    chain = topology.chain_id[res] if with_chain else np.full(len(res), "")
    names = [_TERMINAL_OXYGEN.get(n, n) for n in topology.atom_name[atom_idx].tolist()]
    # CHARMM calls isoleucine's delta carbon CD; PDB calls it CD1.
    res_names = topology.res_name[res].tolist()
    names = ["CD1" if n == "CD" and r == "ILE" else n for n, r in zip(names, res_names, strict=True)]
    return list(
        zip(
            chain.tolist(),
            topology.res_seq[res].tolist(),
            topology.ins_code[res].tolist(),
            names,
            strict=True,
        )
    )


def _index_by_key(topology: Topology, atom_idx: np.ndarray, with_chain: bool, source) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for key, i in zip(_atom_keys(topology, atom_idx, with_chain), atom_idx.tolist(), strict=True):
        if key in out:
            raise InputError(source, f"atom {_label(key)} appears twice; atoms must be unique per residue")
        out[key] = i
    return out


def _label(key: tuple) -> str:
    chain, seq, icode, name = key
    return f"{chain + ':' if chain else ''}{seq}{icode}:{name}"


def match_atoms(topologies: Mapping[str, tuple[Topology, str | os.PathLike]], atoms: str = "CA") -> AtomMatch:
    """Intersect the ``atoms`` selection ("CA" | "backbone" | "heavy") of several topologies.

    topologies: label -> (topology, source path for error messages); the first entry fixes the order.
    Raises InputError when the intersection is empty or when a matched residue has different residue
    names in two inputs (they are then not the same protein). Force-field variants of residue names
    (HSD, HIE, CYX, ...), of C-terminal oxygens (OT1/OT2, OC1/OC2, O1/O2 for O/OXT) and CHARMM's
    isoleucine CD (CD1) match their standard names.
    """
    if atoms not in ("CA", "backbone", "heavy"):
        raise InputError(None, f"--atoms must be CA, backbone or heavy, got {atoms!r}")
    labels = list(topologies)
    selected = {lab: np.asarray(top.select(atoms), dtype=np.int64) for lab, (top, _) in topologies.items()}
    for lab, (_, src) in topologies.items():
        if len(selected[lab]) == 0:
            raise InputError(src, f"has no atoms in the {atoms!r} selection")

    def intersect(with_chain: bool):
        maps = {
            lab: _index_by_key(top, selected[lab], with_chain, src) for lab, (top, src) in topologies.items()
        }
        first = maps[labels[0]]
        common = [k for k in first if all(k in maps[lab] for lab in labels[1:])]
        return maps, common

    maps, common = intersect(with_chain=True)
    ignored = False
    single_chains = [set(top.chain_id.tolist()) for top, _ in topologies.values()]
    if not common and all(len(c) == 1 for c in single_chains):
        maps, common = intersect(with_chain=False)
        ignored = bool(common)
    if not common:
        examples = "; ".join(f"{lab}: {', '.join(_label(k) for k in list(maps[lab])[:3])}" for lab in labels)
        raise InputError(
            topologies[labels[1] if len(labels) > 1 else labels[0]][1],
            f"no {atoms} atoms in common with {topologies[labels[0]][1]} when matched by chain, residue "
            f"number, insertion code and atom name (first atoms: {examples})",
        )

    indices = {lab: np.array([maps[lab][k] for k in common], dtype=np.int64) for lab in labels}
    ref_top = topologies[labels[0]][0]
    ref_names = _canonical(ref_top.res_name[ref_top.residue_index[indices[labels[0]]]])
    for lab in labels[1:]:
        top, src = topologies[lab]
        names = _canonical(top.res_name[top.residue_index[indices[lab]]])
        bad = np.nonzero(names != ref_names)[0]
        if len(bad):
            residue = _label(common[bad[0]]).rsplit(":", 1)[0]
            raise InputError(
                src,
                f"residue {residue} is {names[bad[0]]} here but {ref_names[bad[0]]} in "
                f"{topologies[labels[0]][1]} ({len(bad)} mismatched atoms); are these the same protein?",
            )
    return AtomMatch(indices=indices, keys=tuple(_label(k) for k in common), ignored_chain_ids=ignored)


# Force-field protonation variants -> the standard residue name, so an MD trajectory matches its PDB.
_STANDARD_NAME = {
    **dict.fromkeys(
        ("HSD", "HSE", "HSP", "HID", "HIE", "HIP", "HISD", "HISE", "HISH", "HIS1", "HIS2"), "HIS"
    ),
    **dict.fromkeys(("CYX", "CYM", "CYS2"), "CYS"),
    **dict.fromkeys(("ASH", "ASPH"), "ASP"),
    **dict.fromkeys(("GLH", "GLUH"), "GLU"),
    **dict.fromkeys(("LYN", "LSN", "LYSH"), "LYS"),
    "ARN": "ARG",
    "TYM": "TYR",
}


def _canonical(res_names: np.ndarray) -> np.ndarray:
    return np.array([_STANDARD_NAME.get(n, n) for n in res_names.tolist()], dtype=str)
