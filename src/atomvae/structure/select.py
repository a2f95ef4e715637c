"""Atom selections written as CHAIN:RESNUM:ATOM, e.g. ``A:284:CA`` or ``B:52A:CB`` (insertion code 52A)."""

from __future__ import annotations

import re

import numpy as np

from atomvae.errors import InputError
from atomvae.structure.topology import Topology

_SELECTION = re.compile(r"^\s*([A-Za-z0-9]+):(-?\d+)([A-Za-z]?):([A-Za-z0-9'\"*]+)\s*$")


def parse_atom_selection(selection: str, topology: Topology, source=None) -> int:
    """``"A:284:CA"`` -> the atom's index in ``topology``.

    Raises InputError(source, ...) for a malformed selection or one that names no atom; the message
    says what exists (the chains, the residue range of the chain, or the atoms of the residue).
    """
    match = _SELECTION.match(selection)
    if match is None:
        raise InputError(
            source,
            f"atom selection {selection!r} is malformed; write CHAIN:RESNUM:ATOM, "
            "e.g. A:284:CA (residue number may carry an insertion code: A:52A:CB)",
        )
    chain, number, icode, atom = match.group(1), int(match.group(2)), match.group(3), match.group(4)
    chains = list(dict.fromkeys(topology.chain_id.tolist()))
    if chain not in chains:
        raise InputError(
            source, f"atom selection {selection!r}: no chain {chain}; chains are {', '.join(chains)}"
        )
    in_chain = np.nonzero(topology.chain_id == chain)[0]
    hit = in_chain[(topology.res_seq[in_chain] == number) & (topology.ins_code[in_chain] == icode)]
    if len(hit) == 0:
        seq = topology.res_seq[in_chain]
        raise InputError(
            source,
            f"atom selection {selection!r}: no residue {number}{icode} in chain {chain} "
            f"(its residues are numbered {seq.min()}..{seq.max()})",
        )
    r = int(hit[0])
    names = topology.atom_name[topology.residue_start[r] : topology.residue_start[r + 1]].tolist()
    if atom not in names:
        raise InputError(
            source,
            f"atom selection {selection!r}: residue found but no atom {atom} in "
            f"{topology.res_name[r]}; its atoms are {' '.join(names)}",
        )
    return int(topology.residue_start[r]) + names.index(atom)
