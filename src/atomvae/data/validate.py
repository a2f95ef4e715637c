"""The bad-input catalogue for particle data: one check per function, one message per problem.

Every check raises ``atomvae.errors.InputError(path, problem)`` naming the file at fault, so the CLI
prints one line such as ``atomvae: error: run/particles.star: missing CTF column(s) rlnDefocusV``.
Readers only read: nothing here (or in the readers) writes or moves user files. Tests assert on each
message (tests/test_validate.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from atomvae.errors import InputError

# Relative disagreement tolerated between a stack header's voxel size and the metadata's pixel size.
PIXEL_SIZE_TOLERANCE = 0.01


def check_exists(path: str | os.PathLike, what: str = "file") -> Path:
    """The file must exist and be a regular file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} not found")
    if not path.is_file():
        raise InputError(path, f"{what} is not a regular file")
    return path


def check_stack_size(path: Path, n_images: int, height: int, width: int, itemsize: int, header_bytes: int):
    """The file must hold all the images its header announces (a truncated copy does not)."""
    expected = header_bytes + n_images * height * width * itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            path,
            f"truncated stack: header announces {n_images} images of {height}x{width} "
            f"({expected} bytes with the header) but the file has {actual} bytes",
        )


def check_square(path: Path, height: int, width: int) -> None:
    if height != width:
        raise InputError(
            path, f"images are {height}x{width} pixels (height x width); square images are needed"
        )


def check_count(
    meta_path: Path, n_meta: int, stack_path: Path, n_images: int, what: str = "particles"
) -> None:
    """Metadata that lists one row per image of a stack must have as many rows as the stack has images."""
    if n_meta != n_images:
        raise InputError(
            meta_path, f"lists {n_meta} {what} but stack {stack_path.name} holds {n_images} images"
        )


def check_index_range(
    meta_path: Path, rows: np.ndarray, image_index: np.ndarray, stack_path: Path, n_images: int
) -> None:
    """Every (0-based) image index into ``stack_path`` must be inside the stack; names the first bad row."""
    bad = np.flatnonzero((image_index < 0) | (image_index >= n_images))
    if bad.size:
        first = int(bad[0])
        raise InputError(
            meta_path,
            f"particle {int(rows[first]) + 1} refers to image {int(image_index[first]) + 1} of "
            f"{stack_path.name}, which holds {n_images} images ({bad.size} such particles)",
        )


def check_columns(path: Path, present: Iterable[str], required: Iterable[str], what: str) -> None:
    """All ``required`` columns must be ``present``; the message lists every missing one."""
    present = set(present)
    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(path, f"missing {what} column(s) {', '.join(missing)}")


def check_pixel_size(stack_path: Path, header_pixel_size: float, meta_path: Path, meta_pixel_size: float):
    """A stack header that states a voxel size (non-zero) must agree with the metadata's pixel size."""
    if (
        header_pixel_size > 0
        and abs(header_pixel_size - meta_pixel_size) > PIXEL_SIZE_TOLERANCE * meta_pixel_size
    ):
        raise InputError(
            stack_path,
            f"pixel size {header_pixel_size:g} A in the header disagrees with {meta_pixel_size:g} A "
            f"in {meta_path.name}",
        )


def check_positive(path: Path, name: str, value: float) -> None:
    if not np.isfinite(value) or value <= 0:
        raise InputError(path, f"{name} must be a positive number, got {value}")


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """An output folder must not exist unless ``overwrite``; it must never be an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "output path exists and is not a folder")
    if path.exists() and not overwrite:
        raise InputError(path, "output folder already exists; pass --overwrite to replace it")
    return path


def nonfinite_metadata_rows(
    ctf_fields: dict[str, np.ndarray], rotation: np.ndarray | None, shift: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Rows whose CTF parameters or pose hold NaN/Inf, and the names of the offending quantities.

    ctf_fields: name -> (N,) values; rotation (N, 3, 3) or None; shift (N, 2) or None. One such row
    makes every batch it lands in non-finite (the loss of the whole batch is NaN), so a single bad row
    would silently stop training; these rows are skipped like NaN images (or refused with --strict).
    """
    columns = dict(ctf_fields)
    if rotation is not None:
        columns["angles"] = np.asarray(rotation).reshape(len(rotation), -1)
    if shift is not None:
        columns["origin"] = np.asarray(shift).reshape(len(shift), -1)
    n = len(next(iter(columns.values())))
    bad = np.zeros(n, dtype=bool)
    names = []
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float64).reshape(n, -1)
        row_bad = ~np.isfinite(values).all(axis=1)
        if row_bad.any():
            names.append(name)
            bad |= row_bad
    return np.flatnonzero(bad), names


def check_finite_particles(
    path: Path,
    bad_images: np.ndarray,
    bad_metadata: np.ndarray,
    metadata_names: list[str],
    n_total: int,
    strict: bool,
) -> np.ndarray:
    """Particles with NaN/Inf pixels or metadata: an error with ``strict``, else skipped with a warning.

    Returns the sorted union of bad rows (0-based). The warning names the count, the first particle
    (1-based) and what was wrong, so a user knows what was dropped.
    """
    import warnings

    bad = np.union1d(bad_images, bad_metadata).astype(np.int64)
    if bad.size == 0:
        return bad
    what = []
    if bad_images.size:
        what.append(f"{bad_images.size} with NaN/Inf pixels")
    if bad_metadata.size:
        what.append(f"{bad_metadata.size} with NaN/Inf {'/'.join(metadata_names)}")
    detail = (
        f"{bad.size} of {n_total} particle(s) are not finite ({'; '.join(what)}; first: particle "
        f"{int(bad[0]) + 1})"
    )
    if strict:
        raise InputError(path, f"{detail}; drop --strict to skip them")
    if bad.size < n_total:
        warnings.warn(f"{path}: {detail}; skipping them (--strict stops instead)", UserWarning, stacklevel=3)
    return bad


def check_unique_images(
    meta_path: Path, paths: list[Path], file_index: np.ndarray, image_index: np.ndarray
) -> None:
    """Every particle must be a different image: a listed-twice image lands on both sides of the held-out
    split (the held-out log-likelihood then measures memorisation) and counts double in training.

    An error rather than silent de-duplication: per-particle outputs (encode's ``index``, a split) refer to
    rows of the user's file, and a file listing images twice (concatenated selections, symmetry expansion)
    is usually a mistake the user should see and fix at its source.
    """
    if len(file_index) < 2:
        return
    key = file_index.astype(np.int64) * (int(image_index.max()) + 1) + image_index.astype(np.int64)
    order = np.argsort(key, kind="stable")
    repeated = np.flatnonzero(key[order][1:] == key[order][:-1])
    if repeated.size:
        first, second = sorted((int(order[repeated[0]]), int(order[repeated[0] + 1])))
        image = f"{int(image_index[first]) + 1}@{paths[int(file_index[first])].name}"
        n_dup = np.unique(key[order][1:][repeated]).size
        raise InputError(
            meta_path,
            f"image {image} is listed twice (particles {first + 1} and "
            f"{second + 1}; {n_dup} image(s) listed more than once): each image "
            "must appear once (remove the duplicates, e.g. of a symmetry expansion)",
        )


def check_defocus_sign(path: Path, defocus_u: np.ndarray, defocus_v: np.ndarray, what: str) -> None:
    """Defocus follows RELION's convention (positive = underfocus, A): all values <= 0 mean a sign flip."""
    values = np.concatenate([defocus_u, defocus_v])
    values = values[np.isfinite(values)]
    if values.size and (values <= 0).all():
        raise InputError(
            path,
            f"every {what} value is zero or negative (range {values.min():g} to "
            f"{values.max():g}); defocus must be positive underfocus in A (RELION's "
            "convention): flip the sign",
        )
