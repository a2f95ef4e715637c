"""Read and write protein structures and ensembles.

PDB and mmCIF go through gemmi; topology + trajectory files (.psf + .dcd, .gro/.tpr + .xtc, ...) and
.dcd output go through MDAnalysis (optional dependency: ``pip install atomvae[md]``).

What is read, the same way for every source (so a trajectory and a PDB of the same protein give the
same atoms in the same order):
- protein residues of all chains: residue names gemmi tabulates as amino acids, force-field variants
  such as HSD/HIE/CYX/CYSH (``topology.MD_AMINO_ACID_NAMES``), and any other residue that has atoms
  named N, CA and C (an unlisted variant); waters, ions and ligands are skipped;
- heavy atoms only; within each residue N, CA, C, O first, then the other atoms in file order, then
  the C-terminal oxygens (OXT, OT1, OT2), so files that order atoms differently (CHARMM puts C, O after
  the side chain) agree; elements come from the atom name (a PDB without an element column would
  otherwise give calcium for "CA");
- alternative locations: per residue the altloc with the highest mean occupancy is kept (atoms without
  altloc always); of point mutations (two residues with one number) the one with the higher occupancy;
- insertion codes are kept; a residue missing N, CA or C is dropped with a warning naming it
  (InputError with ``strict=True``);
- chain ids: a blank chain id (PDB files written by CHARMM/NAMD often have one), or an MDAnalysis
  topology without chain ids (e.g. PSF segments like "4AKE"), gets the next free letter A, B, C, ...
  in order of appearance; so adk.psf's single segment 4AKE and adk_open.pdb's blank chain are both "A".
"""

from __future__ import annotations

import functools
import os
import string
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from atomvae.errors import InputError, atomic_path
from atomvae.structure.topology import (
    MD_AMINO_ACID_NAMES,
    Structure,
    Topology,
    compute_bonded_to_next,
)

__all__ = ["Structure", "read_ensemble", "read_structure", "write_ensemble"]

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
ENSEMBLE_WRITE_SUFFIXES = (".pdb", ".cif", ".mmcif", ".dcd")


@functools.lru_cache(maxsize=4096)
def is_amino_acid(res_name: str) -> bool:
    """True for residue names of protein amino acids (gemmi's table plus MD force-field variants)."""
    if res_name in MD_AMINO_ACID_NAMES:
        return True
    info = gemmi.find_tabulated_residue(res_name)
    return info is not None and info.is_amino_acid()


def is_protein_residue(res_name: str, atom_names) -> bool:
    """A known amino-acid name, or any residue with atoms named N, CA and C."""
    return is_amino_acid(res_name) or {"N", "CA", "C"}.issubset(atom_names)


@functools.lru_cache(maxsize=65536)  # called per atom and per model; names repeat
def element_from_name(atom_name: str, res_name: str, fallback: str = "") -> str:
    """Element of a protein atom from its name: first letter of C/N/O/S/H (D = deuterium -> "H"),
    "Se" for selenomethionine's SE; ``fallback`` otherwise."""
    name = atom_name.strip().lstrip("0123456789").upper()
    if name.startswith("SE") and res_name in ("MSE", "SEC"):
        return "Se"
    first = name[:1]
    if first in ("C", "N", "O", "S", "H"):
        return first
    if first == "D":
        return "H"
    return fallback


@dataclass
class _Residue:
    chain: str
    res_name: str
    res_seq: int
    ins_code: str
    atom_names: list[str]
    elements: list[str]
    source_index: list[int]  # index of each atom in the source's coordinate list


def _structure_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _letters_for_blank_chains(names: Iterable[str]) -> dict[str, str]:
    """Map each blank or placeholder chain name to a free letter, in order of appearance."""
    names = list(dict.fromkeys(names))
    used = {n for n in names if n.strip()}
    free = iter(c for c in string.ascii_uppercase + string.ascii_lowercase + string.digits if c not in used)
    return {n: (n if n.strip() else next(free)) for n in names}


def _pick_atoms(atoms: list[gemmi.Atom], res_name: str) -> list[tuple[int, gemmi.Atom, str]]:
    """Heavy atoms of one residue with altlocs resolved: (index in residue, atom, element), file order."""
    heavy = []
    for i, atom in enumerate(atoms):
        element = element_from_name(atom.name, res_name, fallback=atom.element.name)
        if element != "H" and not atom.is_hydrogen():
            heavy.append((i, atom, element))
    alts = sorted({a.altloc for _, a, _ in heavy if a.altloc != "\0"})
    if not alts:
        return heavy
    mean_occ = {alt: np.mean([a.occ for _, a, _ in heavy if a.altloc == alt]) for alt in alts}
    best = max(alts, key=lambda alt: mean_occ[alt])  # ties: the first letter (max keeps the first)
    chosen: dict[str, tuple[int, gemmi.Atom, str]] = {}
    for i, atom, element in heavy:
        score = (atom.altloc in ("\0", best), atom.occ)
        current = chosen.get(atom.name)
        if current is None or score > (current[1].altloc in ("\0", best), current[1].occ):
            chosen[atom.name] = (i, atom, element)
    return sorted(chosen.values(), key=lambda picked: picked[0])


def _residue_occupancy(residue: gemmi.Residue) -> float:
    return float(np.mean([a.occ for a in residue])) if len(residue) else 0.0


def _flatten_model(model: gemmi.Model) -> tuple[tuple, np.ndarray]:
    """Every atom of a model in iteration order: a signature of its residues and atoms (to tell
    whether two models list the same atoms) and positions (N, 3) A. One tight loop, for ensembles."""
    residues, atoms, xyz = [], [], []
    for chain in model:
        for res in chain:
            residues.append((chain.name, res.name, res.seqid.num, res.seqid.icode))
            for atom in res:
                atoms.append((atom.name, atom.altloc))
                pos = atom.pos
                xyz.append((pos.x, pos.y, pos.z))
    return (tuple(residues), tuple(atoms)), np.asarray(xyz, dtype=np.float64).reshape(-1, 3)


def _gemmi_residues(model: gemmi.Model, source: Path) -> tuple[list[_Residue], np.ndarray]:
    """Protein residues of one gemmi model (all chains) and the coordinates (N, 3) of all the model's
    atoms, which ``_Residue.source_index`` indexes (the order of :func:`_flatten_model`). source: the
    file read, for error messages."""
    chain_names = _letters_for_blank_chains(chain.name for chain in model)
    residues: list[_Residue] = []
    coords: list[tuple[float, float, float]] = []
    for chain in model:
        kept: list[tuple[int, gemmi.Residue]] = []  # (offset of its first atom, residue)
        for res in chain:
            offset = len(coords)
            coords.extend((a.pos.x, a.pos.y, a.pos.z) for a in res)
            if not is_protein_residue(res.name, [a.name for a in res]):
                continue
            # Point mutations: residues sharing one number; keep the one with the higher occupancy.
            if kept and kept[-1][1].seqid == res.seqid:
                if _residue_occupancy(res) > _residue_occupancy(kept[-1][1]):
                    kept[-1] = (offset, res)
                continue
            kept.append((offset, res))
        for offset, res in kept:
            if res.seqid.num is None:
                raise InputError(source, f"residue {res.name} of chain {chain.name} has no residue number")
            picked = _pick_atoms(list(res), res.name)
            residues.append(
                _Residue(
                    chain=chain_names[chain.name],
                    res_name=res.name,
                    res_seq=res.seqid.num,
                    ins_code=res.seqid.icode.strip(),
                    atom_names=[a.name for _, a, _ in picked],
                    elements=[e for _, _, e in picked],
                    source_index=[offset + i for i, _, _ in picked],
                )
            )
    return residues, np.asarray(coords, dtype=np.float64).reshape(-1, 3)


# Canonical position of atoms within a residue; everything else keeps its file order in between.
_ATOM_ORDER = {"N": 0, "CA": 1, "C": 2, "O": 3, "OXT": 5, "OT1": 5, "OT2": 5}


def _canonical_order(res: _Residue) -> _Residue:
    order = sorted(range(len(res.atom_names)), key=lambda i: (_ATOM_ORDER.get(res.atom_names[i], 4), i))
    return _Residue(
        res.chain,
        res.res_name,
        res.res_seq,
        res.ins_code,
        atom_names=[res.atom_names[i] for i in order],
        elements=[res.elements[i] for i in order],
        source_index=[res.source_index[i] for i in order],
    )


def _build_topology(
    residues: list[_Residue], coords: np.ndarray, path, strict: bool, warn: bool = True
) -> tuple[Topology, np.ndarray]:
    """Drop residues without N/CA/C, then build the Topology; returns it and the source atom indices."""
    good, dropped = [], []
    for res in residues:
        missing = [name for name in ("N", "CA", "C") if name not in res.atom_names]
        if missing:
            label = f"{res.chain}:{res.res_name}:{res.res_seq}{res.ins_code}"
            problem = f"residue {label} lacks backbone atom(s) {', '.join(missing)}"
            if strict:
                raise InputError(path, problem)
            dropped.append(problem)
            continue
        good.append(_canonical_order(res))
    if not good:
        if residues and all(res.atom_names == ["CA"] for res in residues):
            raise InputError(
                path,
                f"all {len(residues)} residues have only a C-alpha atom; atomvae needs "
                "the backbone N, CA and C of each residue (a full-atom or backbone model)",
            )
        raise InputError(
            path,
            "no protein residues with N, CA and C atoms found"
            + (f" ({len(dropped)} residues lack backbone atoms)" if dropped else ""),
        )
    if warn:  # one warning per residue up to a few; a count beyond (a line each would bury the rest)
        for problem in dropped[:5]:
            warnings.warn(f"{path}: {problem}; dropping it", stacklevel=3)
        if len(dropped) > 5:
            warnings.warn(
                f"{path}: {len(dropped) - 5} more residues lack backbone atoms; dropping them", stacklevel=3
            )
    source = np.asarray([i for res in good for i in res.source_index], dtype=np.int64)
    residue_index = np.repeat(np.arange(len(good)), [len(res.atom_names) for res in good])
    chain = np.asarray([r.chain for r in good])
    res_seq = np.asarray([r.res_seq for r in good])
    ins_code = np.asarray([r.ins_code for r in good])
    pos = {name: coords[[r.source_index[r.atom_names.index(name)] for r in good]] for name in ("N", "C")}
    topology = Topology(
        atom_name=np.asarray([n for r in good for n in r.atom_names]),
        element=np.asarray([e for r in good for e in r.elements]),
        residue_index=residue_index,
        res_name=np.asarray([r.res_name for r in good]),
        res_seq=res_seq,
        ins_code=ins_code,
        chain_id=chain,
        bonded_to_next=compute_bonded_to_next(chain, res_seq, ins_code, pos["C"], pos["N"]),
    )
    return topology, source


def _read_gemmi(path: Path) -> gemmi.Structure:
    if not path.is_file():
        raise InputError(path, "file not found")
    if _structure_suffix(path) not in STRUCTURE_SUFFIXES:
        raise InputError(path, f"unknown structure format; use one of {', '.join(STRUCTURE_SUFFIXES)}")
    try:
        st = gemmi.read_structure(str(path), merge_chain_parts=True)
    except (RuntimeError, ValueError) as err:
        raise InputError(path, f"cannot read as PDB/mmCIF: {err}") from None
    if len(st) == 0:
        raise InputError(path, "no models (no atoms) in file")
    return st


def read_structure(path: str | os.PathLike, strict: bool = False) -> Structure:
    """First model of a PDB/mmCIF file -> Structure(topology, coords (A, 3) float64 A).

    See the module docstring for what is kept. InputError for a missing/unreadable file, no protein,
    or (``strict``) a residue without N, CA or C.
    """
    path = Path(path)
    st = _read_gemmi(path)
    residues, coords = _gemmi_residues(st[0], path)
    topology, source = _build_topology(residues, coords, path, strict)
    _check_finite(path, topology, coords[source][None])
    return Structure(topology, coords[source])


def _check_finite(path, topology: Topology, coords: np.ndarray) -> None:
    """coords (M, A, 3): NaN/Inf coordinates are an error naming the first atom (and model)."""
    bad = np.argwhere(~np.isfinite(coords).all(axis=-1))
    if len(bad):
        model, atom = (int(v) for v in bad[0])
        where = f"{topology.residue_label(topology.residue_index[atom])}:{topology.atom_name[atom]}"
        in_model = f" of model {model + 1}" if coords.shape[0] > 1 else ""
        raise InputError(
            path, f"atom {where}{in_model} has non-finite coordinates ({len(bad)} such atom positions)"
        )


def count_models(path: str | os.PathLike) -> int:
    """Number of models in a PDB/mmCIF file (InputError when unreadable)."""
    return len(_read_gemmi(Path(path)))


def _describe_difference(a: Topology, b: Topology) -> str:
    if a.n_atoms != b.n_atoms:
        return f"{b.n_atoms} atoms instead of {a.n_atoms}"
    for field in ("atom_name", "element", "residue_index"):
        diff = np.nonzero(getattr(a, field) != getattr(b, field))[0]
        if len(diff):
            i = int(diff[0])
            return (
                f"atom {i + 1} is {b.residue_label(b.residue_index[i])}:{b.atom_name[i]} instead of "
                f"{a.residue_label(a.residue_index[i])}:{a.atom_name[i]}"
            )
    for field in ("res_name", "res_seq", "ins_code", "chain_id"):
        diff = np.nonzero(getattr(a, field) != getattr(b, field))[0]
        if len(diff):
            i = int(diff[0])
            return f"residue {i + 1} is {b.residue_label(i)} instead of {a.residue_label(i)}"
    return "different atoms"


def _apply_atom_selection(topology: Topology, coords: np.ndarray, atoms: str | None, path):
    if atoms is None:
        return topology, coords
    try:
        idx = topology.select(atoms)
    except ValueError as err:
        raise InputError(path, str(err)) from None
    return topology.subset(idx), coords[..., idx, :]


def read_ensemble(
    path: str | os.PathLike,
    topology_path: str | os.PathLike | None = None,
    atoms: str | None = None,
    strict: bool = False,
) -> tuple[Topology, np.ndarray]:
    """An ensemble of structures -> (Topology, coords (M, A, 3) float64 A).

    path: a multi-model PDB/mmCIF (every model must have the same atoms; InputError naming the first
    model that differs), or a trajectory (.dcd, .xtc, .trr, .nc, ...) with ``topology_path`` (.psf,
    .tpr, .gro, .pdb, ...) read through MDAnalysis. atoms: None (all heavy atoms) or a selection
    kind "CA" | "backbone" | "heavy" (see ``Topology.select``); the topology is then the subset.
    """
    path = Path(path)
    if topology_path is not None:
        topology, coords = _read_md_ensemble(Path(topology_path), path, strict)
        return _apply_atom_selection(topology, coords, atoms, path)
    if _structure_suffix(path) not in STRUCTURE_SUFFIXES:
        if path.is_file():
            raise InputError(path, "a trajectory needs its topology file (.psf, .tpr, .gro, .pdb, ...) too")
        raise InputError(path, "file not found")
    st = _read_gemmi(path)
    residues, coords = _gemmi_residues(st[0], path)
    topology, source = _build_topology(residues, coords, path, strict)
    signature = _flatten_model(st[0])[0]
    frames = np.empty((len(st), len(source), 3), dtype=np.float64)
    frames[0] = coords[source]
    for k in range(1, len(st)):
        model_signature, model_coords = _flatten_model(st[k])
        if model_signature != signature:  # not the same listing: select atoms again, then compare
            residues, model_coords = _gemmi_residues(st[k], path)
            model_topology, model_source = _build_topology(residues, model_coords, path, strict, warn=False)
            if not model_topology.same_atoms(topology):
                raise InputError(
                    path,
                    f"model {k + 1} has different atoms from model 1: "
                    f"{_describe_difference(topology, model_topology)}",
                )
            frames[k] = model_coords[model_source]
        else:
            frames[k] = model_coords[source]
    _check_finite(path, topology, frames)
    return _apply_atom_selection(topology, frames, atoms, path)


def _import_mdanalysis(path):
    try:
        import MDAnalysis
    except ImportError:
        raise InputError(path, "this format needs MDAnalysis: pip install 'atomvae[md]'") from None
    return MDAnalysis


def _read_md_ensemble(
    topology_path: Path, trajectory_path: Path, strict: bool
) -> tuple[Topology, np.ndarray]:
    """Topology + trajectory through MDAnalysis -> (Topology, coords (M, A, 3) float64 A).

    Chain ids: an atom's chainID when the topology has non-blank ones, otherwise its segment's next
    free letter (A, B, ...), matching how read_structure names blank PDB chains.
    """
    mda = _import_mdanalysis(trajectory_path)
    for p in (topology_path, trajectory_path):
        if not p.is_file():
            raise InputError(p, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="MDAnalysis")
            # Guessed elements/masses: we take elements from atom names and use no masses.
            warnings.filterwarnings("ignore", category=UserWarning, module="MDAnalysis.(topology|guesser)")
            universe = mda.Universe(str(topology_path), str(trajectory_path))
    except Exception as err:  # MDAnalysis raises many types (ValueError, OSError, IOError, EOFError...)
        raise InputError(trajectory_path, f"cannot read with topology {topology_path}: {err}") from None
    atoms = universe.atoms
    names = atoms.names
    protein = [res for res in universe.residues if is_protein_residue(str(res.resname), res.atoms.names)]
    first_atoms = [int(res.atoms.indices[0]) for res in protein]
    if hasattr(atoms, "chainIDs") and any(str(atoms.chainIDs[i]).strip() for i in first_atoms):
        chain_keys = [str(atoms.chainIDs[i]).strip() for i in first_atoms]
    else:
        chain_keys = [f"segment {res.segindex}" for res in protein]
    if all(len(key) <= 1 for key in chain_keys):  # PDB-style chain ids: keep them, name blank ones
        chain_names = _letters_for_blank_chains(chain_keys)
    else:
        # Segments (PSF "4AKE") or molecule names (TPR "AKeco") are not chain ids: one letter
        # per distinct one that holds protein, in order.
        chain_names = dict(
            zip(dict.fromkeys(chain_keys), string.ascii_uppercase + string.ascii_lowercase, strict=False)
        )
    residues: list[_Residue] = []
    for residue, chain_key in zip(protein, chain_keys, strict=True):
        res_name = str(residue.resname)
        named = [(int(i), str(names[i])) for i in residue.atoms.indices]
        picked = [(i, n, element_from_name(n, res_name)) for i, n in named]
        picked = [(i, n, e) for i, n, e in picked if e not in ("H", "")]
        # Trajectories have no alternative locations; if a PDB topology brings some, keep the first.
        picked = list({n: (i, n, e) for i, n, e in reversed(picked)}.values())[::-1]
        if not picked:
            continue
        icode = str(getattr(residue, "icode", "") or "").strip()
        residues.append(
            _Residue(
                chain=chain_names[chain_key],
                res_name=res_name,
                res_seq=int(residue.resid),
                ins_code=icode,
                atom_names=[n for _, n, _ in picked],
                elements=[e for _, _, e in picked],
                source_index=[i for i, _, _ in picked],
            )
        )
    first = atoms.positions.astype(np.float64)
    topology, source = _build_topology(residues, first, trajectory_path, strict)
    _warn_if_split_by_periodic_box(topology, first[source], universe.dimensions, trajectory_path)
    frames = np.empty((len(universe.trajectory), len(source), 3), dtype=np.float64)
    with warnings.catch_warnings():
        # MDAnalysis 2.x announces a future DCDReader change on every read: nothing for users to do.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="MDAnalysis")
        for k, _ in enumerate(universe.trajectory):
            frames[k] = atoms.positions[source]
    return topology, frames


def _warn_if_split_by_periodic_box(topology: Topology, coords: np.ndarray, box, path) -> None:
    """MD frames often store molecules wrapped into the periodic box, so a chain jumps by a box length;
    such a jump is a break for the backbone loss and a wrong structure for training. Say so."""
    if box is None or not np.all(np.asarray(box[:3]) > 0):
        return
    c, n = coords[topology.atom_index("C")], coords[topology.atom_index("N")]
    jump = np.linalg.norm(n[1:] - c[:-1], axis=-1) > 0.5 * float(np.min(box[:3]))
    if np.any(jump):
        r = int(np.nonzero(jump)[0][0])
        warnings.warn(
            f"{path}: the protein is split across the periodic box in the first frame (bond "
            f"{topology.residue_label(r)} - {topology.residue_label(r + 1)} spans half a box); "
            "make molecules whole first, e.g. gmx trjconv -pbc mol",
            stacklevel=4,
        )


def _as_coords(topology: Topology, coords, path) -> np.ndarray:
    if hasattr(coords, "detach"):
        coords = coords.detach().cpu().numpy()
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[1:] != (topology.n_atoms, 3):
        raise InputError(
            path,
            f"coordinates of shape {coords.shape} do not fit {topology.n_atoms} atoms "
            f"(expected (M, {topology.n_atoms}, 3))",
        )
    if not np.all(np.isfinite(coords)):
        raise InputError(path, "coordinates contain NaN or inf; refusing to write them")
    return coords


def _gemmi_structure(
    topology: Topology, coords: np.ndarray, b_factors: np.ndarray | None = None
) -> gemmi.Structure:
    """A gemmi Structure with one model per coordinate set, residues and atoms as in the topology;
    ``b_factors (A,)`` (A^2 or any per-atom value) fill the B-factor column of every model (default 0)."""
    template = gemmi.Model(1)
    starts = topology.residue_start
    for r in range(topology.n_residues):
        chain_name = str(topology.chain_id[r])
        if len(template) == 0 or template[len(template) - 1].name != chain_name:
            template.add_chain(gemmi.Chain(chain_name))
        res = gemmi.Residue()
        res.name = str(topology.res_name[r])
        res.seqid = gemmi.SeqId(int(topology.res_seq[r]), str(topology.ins_code[r]) or " ")
        res.het_flag = "A"
        res.subchain = chain_name  # label_asym_id = the chain id (gemmi would invent "Axp")
        for a in range(starts[r], starts[r + 1]):
            atom = gemmi.Atom()
            atom.name = str(topology.atom_name[a])
            atom.element = gemmi.Element(str(topology.element[a]))
            atom.occ = 1.0
            atom.b_iso = 0.0 if b_factors is None else float(b_factors[a])
            res.add_atom(atom)
        template[len(template) - 1].add_residue(res)
    st = gemmi.Structure()
    st.name = "atomvae_ensemble"
    for m, xyz in enumerate(coords):
        model = template.clone()
        model.num = m + 1
        positions = iter(xyz.tolist())
        for chain in model:
            for res in chain:
                for atom in res:
                    atom.pos = gemmi.Position(*next(positions))
        st.add_model(model)
    # Entities with their sequences and label_seq_id, so mmCIF readers (ChimeraX) see proper polymers.
    st.add_entity_types()
    st.ensure_entities()
    for entity in st.entities:
        if entity.entity_type == gemmi.EntityType.Polymer and not entity.full_sequence:
            entity.full_sequence = [res.name for res in st[0].get_subchain(entity.subchains[0])]
    st.deduplicate_entities()
    st.assign_label_seq_id(force=True)
    st.assign_serial_numbers()
    return st


def write_ensemble(path: str | os.PathLike, topology: Topology, coords, b_factors=None) -> list[Path]:
    """Write structures coords (M, A, 3) (or one (A, 3)) in A with their topology; atomic.

    ``b_factors (A,)``: a per-atom value for the B-factor column (e.g. a per-residue RMSF), the same in
    every model; PDB/mmCIF only (default 0).

    ``.pdb``: multi-model PDB (MODEL/ENDMDL); ``.cif``/``.mmcif``: mmCIF with one pdbx_PDB_model_num per
    structure; both keep residue names, numbers, insertion codes, chains and elements (ChimeraX, PyMOL
    and VMD open them). ``.dcd``: DCD trajectory through MDAnalysis plus, since a DCD holds no
    atom names, the first structure as ``<stem>_topology.pdb`` beside it (read back with
    ``read_ensemble(dcd, topology_path=that_pdb)``). Returns the paths written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ENSEMBLE_WRITE_SUFFIXES:
        raise InputError(path, f"unknown ensemble format; use one of {', '.join(ENSEMBLE_WRITE_SUFFIXES)}")
    coords = _as_coords(topology, coords, path)
    if b_factors is not None:
        b_factors = np.asarray(b_factors, dtype=np.float64).reshape(-1)
        if b_factors.shape != (topology.n_atoms,) or not np.all(np.isfinite(b_factors)):
            raise ValueError(f"b_factors must be {topology.n_atoms} finite values, got {b_factors.shape}")
    if suffix == ".dcd":
        topology_pdb = path.with_name(f"{path.stem}_topology.pdb")
        _write_dcd(path, coords)
        write_ensemble(topology_pdb, topology, coords[:1])
        return [path, topology_pdb]
    st = _gemmi_structure(topology, coords, b_factors)
    with atomic_path(path) as tmp:
        if suffix == ".pdb":
            try:
                st.write_pdb(str(tmp), gemmi.PdbWriteOptions(cryst1_record=False))
            except RuntimeError as err:  # e.g. chain names longer than PDB allows
                raise InputError(path, f"cannot write as PDB ({err}); write .cif instead") from None
        else:
            st.make_mmcif_document().write_file(str(tmp))
    return [path]


def _write_dcd(path: Path, coords: np.ndarray) -> None:
    mda = _import_mdanalysis(path)
    n_models, n_atoms, _ = coords.shape
    universe = mda.Universe.empty(n_atoms, trajectory=True)
    with atomic_path(path) as tmp, warnings.catch_warnings(), mda.Writer(str(tmp), n_atoms=n_atoms) as writer:
        warnings.filterwarnings("ignore", message="No dimensions set", category=UserWarning)  # no unit cell
        for xyz in coords:
            universe.atoms.positions = xyz.astype(np.float32)
            writer.write(universe.atoms)
