"""atomvae.structure: protein topology, residue frames, PDB/mmCIF/trajectory I/O, atom selections.

Knows no images."""

from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates
from atomvae.structure.io import read_ensemble, read_structure, write_ensemble
from atomvae.structure.select import parse_atom_selection
from atomvae.structure.topology import Structure, Topology

__all__ = [
    "Structure",
    "Topology",
    "backbone_frames",
    "frames_to_coordinates",
    "local_coordinates",
    "parse_atom_selection",
    "read_ensemble",
    "read_structure",
    "write_ensemble",
]
