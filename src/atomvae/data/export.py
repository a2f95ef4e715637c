"""Subsets of particle files, written with every bit of their original metadata.

``write_particle_subset(source, rows, out)`` keeps the particles ``rows`` (0-based rows of the particle
table, the numbering ``atomvae encode`` writes as ``index``) of a RELION .star or cryoSPARC .cs file:

- STAR: the file is copied line by line and only the unselected rows of the particle loop are left out,
  so the optics table (RELION 3.1), every column, comments, number formatting and any other data block
  stay exactly as they were; RELION and cryoSPARC import the result as they imported the original.
- .cs: a numpy structured array; the selected records with all their fields are saved with ``np.save``
  (the format cryoSPARC writes and reads).

``read_index_list`` reads a list of particle rows (text, .npy, or a cryoDRGN ``ind.pkl``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from atomvae.errors import InputError, atomic_path

EXPORT_SUFFIXES = (".star", ".cs")


def read_index_list(path: str | os.PathLike) -> np.ndarray:
    """0-based particle rows from a text file (integers separated by spaces, commas or newlines; ``#``
    comments), a .npy array or a cryoDRGN index .pkl. Returns (n,) int64, duplicates kept as given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "index file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif suffix == ".pkl":
            with open(path, "rb") as f:
                values = pickle.load(f)
        else:
            text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
            values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError as err:
        raise InputError(path, f"expected whole numbers (0-based particle rows): {err}") from None
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise InputError(path, f"cannot read an index list: {err}") from None
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise InputError(
            path, f"expected a flat list of whole numbers, got {values.dtype} of shape {values.shape}"
        )
    return values.astype(np.int64)


def _star_particle_table(path: Path) -> tuple[str, int]:
    """(block name, number of rows) of the particle table as starfile reads it."""
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises a variety of parser errors
        raise InputError(path, f"not a readable STAR file ({err})") from None
    tables = {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}
    if "particles" in tables:
        return "particles", len(tables["particles"])
    with_images = [name for name, df in tables.items() if "rlnImageName" in df.columns]
    if len(with_images) != 1:
        raise InputError(path, f"expected one particle table with rlnImageName, found {sorted(tables)}")
    return with_images[0], len(tables[with_images[0]])


def _star_loop_rows(lines: list[str], block: str, path: Path) -> list[int]:
    """Line numbers of the data rows of ``data_<block>``'s loop, in order."""
    start = next((i for i, line in enumerate(lines) if line.strip() == f"data_{block}"), None)
    if start is None:
        raise InputError(path, f"no data_{block} block")
    rows: list[int] = []
    in_loop = header_done = False
    for i in range(start + 1, len(lines)):
        text = lines[i].strip()
        if text.startswith("data_"):
            break
        if text == "loop_":
            if rows:  # a second loop in the same block is not a particle table
                break
            in_loop, header_done = True, False
            continue
        if not in_loop or not text or text.startswith("#"):
            if header_done and not text:
                break  # a blank line ends the loop
            continue
        if text.startswith("_"):
            if header_done:
                break
            continue
        header_done = True
        rows.append(i)
    return rows


def _write_star_subset(source: Path, rows: np.ndarray, out_path: Path) -> int:
    block, n_rows = _star_particle_table(source)
    lines = source.read_text().splitlines(keepends=True)
    data_lines = _star_loop_rows(lines, block, source)
    if len(data_lines) != n_rows:
        raise InputError(
            source,
            f"found {len(data_lines)} rows in data_{block} but starfile reads {n_rows}; "
            "cannot copy its rows one to one",
        )
    _check_rows(source, rows, n_rows)
    dropped = set(data_lines) - {data_lines[r] for r in rows}
    with atomic_path(out_path) as tmp:
        with open(tmp, "w") as f:
            f.writelines(line for i, line in enumerate(lines) if i not in dropped)
    return n_rows


def _write_cs_subset(source: Path, rows: np.ndarray, out_path: Path) -> int:
    try:
        data = np.load(source, allow_pickle=False)
    except Exception as err:
        raise InputError(source, f"not a readable cryoSPARC .cs file ({err})") from None
    if data.dtype.names is None or data.ndim != 1:
        raise InputError(source, "not a cryoSPARC .cs file (no named fields)")
    _check_rows(source, rows, len(data))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, data[rows], allow_pickle=False)
    return len(data)


def _check_rows(source: Path, rows: np.ndarray, n_rows: int) -> None:
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        bad = rows[(rows < 0) | (rows >= n_rows)][0]
        raise InputError(
            source,
            f"particle row {bad} is out of range: the file has {n_rows} particles (rows are numbered from 0)",
        )


def write_particle_subset(
    source: str | os.PathLike, rows, out_path: str | os.PathLike, overwrite: bool = False
) -> tuple[int, int]:
    """Write the particles ``rows`` (0-based; sorted, duplicates dropped: the file's own order) of
    ``source`` (.star or .cs) to ``out_path`` (same suffix); atomic. Returns (rows written, rows in source).
    """
    source, out_path = Path(source), Path(out_path)
    suffix = source.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise InputError(source, "can export particles of a RELION .star or a cryoSPARC .cs file only")
    if not source.is_file():
        raise InputError(source, "particle file not found")
    if out_path.suffix.lower() != suffix:
        raise InputError(out_path, f"the subset keeps the input's format: its name must end in {suffix}")
    if out_path.exists() and not overwrite:
        raise InputError(out_path, "exists (use --overwrite to replace it)")
    if out_path.resolve() == source.resolve():
        raise InputError(out_path, "is the input file; choose another name")
    rows = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
    if len(rows) == 0:
        raise InputError(source, "no particle selected: nothing to write")
    writer = _write_star_subset if suffix == ".star" else _write_cs_subset
    n_rows = writer(source, rows, out_path)
    return len(rows), n_rows
