"""Particle metadata from RELION .star, cryoSPARC .cs and cryoDRGN .pkl files, read into one description.

Conventions found in each format (our R maps model coordinates into the image frame, shift t in A is
where the particle centre sits in the image; see geometry/euler.py):

- RELION (3.0 without, 3.1+ with a ``data_optics`` table): R = ``euler.relion_to_matrix(rot, tilt,
  psi)``, t = -rlnOrigin{X,Y}Angst (3.1) or -rlnOrigin{X,Y} * pixel size (3.0, pixels).
  rlnImageName ``k@path`` is 1-based; paths are relative to the STAR file's folder, or to ``datadir``
  when given (tried first), or to the current directory (a RELION project root).
- cryoSPARC .cs: ``alignments3D/pose`` is an axis-angle vector whose rotation matrix is our R
  transposed, and ``alignments3D/shift`` (pixels) equals RELION's origin, so
  ``R = expmap(-pose)`` and ``t = -shift * psize``. Source: cryoDRGN's ``commands/parse_pose_csparc.py``
  (it takes ``expmap(pose)`` and transposes it to get its own matrix, and copies the shift unchanged)
  together with its ``parse_pose_star.py`` (its matrix is RELION's ``R_from_relion``, which equals our
  R, and its translation is ``+rlnOrigin``). ``blob/idx`` is 0-based; defocus angle and phase shift
  are in radians; shifts are in pixels of ``alignments3D/psize_A`` when present (else blob/psize_A).
- cryoDRGN: ``ctf.pkl`` is an ``(N, 9)`` array ``[D, Apix, dfU, dfV, dfang (deg), kV, Cs (mm), w,
  phase shift (deg)]``; ``poses.pkl`` is ``(rot (N,3,3), trans (N,2))`` with ``rot`` = RELION's matrix
  = our R (``utils.R_from_relion`` builds ``Rz(-psi) Ry(-tilt) Rz(-rot)``, our ``(Rz Ry Rz)^T``) and
  ``trans`` = rlnOrigin in fractions of the box, so ``t = -trans * D * Apix``. Image i is the i-th
  image of the .mrcs. Pinned by round trip in tests/test_metadata.py.

All readers return float64 tensors (exact round trips); the dataset casts batches to float32.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile
import torch
from scipy.spatial.transform import Rotation

from atomvae.data import validate
from atomvae.data.stack import ParticleStack, StackFile
from atomvae.errors import InputError
from atomvae.geometry import euler
from atomvae.physics.ctf import CTFParams

CTF_FIELDS = tuple(f.name for f in dataclasses.fields(CTFParams))
OPTIONAL_CTF_FIELDS = ("phase_shift", "bfactor")  # absent from a file: 0

# Where each format keeps each CTFParams field.
STAR_CTF = {
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "astigmatism_angle": "rlnDefocusAngle",
    "voltage": "rlnVoltage",  # data_optics in RELION 3.1+
    "spherical_aberration": "rlnSphericalAberration",  # data_optics
    "amplitude_contrast": "rlnAmplitudeContrast",  # data_optics
    "phase_shift": "rlnPhaseShift",
    "bfactor": "rlnCtfBfactor",
}
CS_CTF = {
    "defocus_u": "ctf/df1_A",
    "defocus_v": "ctf/df2_A",
    "astigmatism_angle": "ctf/df_angle_rad",
    "voltage": "ctf/accel_kv",
    "spherical_aberration": "ctf/cs_mm",
    "amplitude_contrast": "ctf/amp_contrast",
    "phase_shift": "ctf/phase_shift_rad",
    "bfactor": "ctf/bfactor",
}
CS_RADIAN_FIELDS = ("astigmatism_angle", "phase_shift")  # cryoSPARC angles are in radians
CRYODRGN_CTF = {  # columns of ctf.pkl; it has no B-factor
    "defocus_u": 2,
    "defocus_v": 3,
    "astigmatism_angle": 4,
    "voltage": 5,
    "spherical_aberration": 6,
    "amplitude_contrast": 7,
    "phase_shift": 8,
}
CTF_COLUMNS = tuple(STAR_CTF[f] for f in ("defocus_u", "defocus_v", "astigmatism_angle"))
OPTICS_CTF_COLUMNS = tuple(STAR_CTF[f] for f in ("voltage", "spherical_aberration", "amplitude_contrast"))
CS_CTF_FIELDS = tuple(CS_CTF[f] for f in CTF_FIELDS if f not in OPTIONAL_CTF_FIELDS)


def ctf_from_columns(n: int, columns: Mapping[str, Any]) -> CTFParams:
    """The CTFs of ``n`` particles as float64 tensors ``(n,)``.

    columns: keyed by CTFParams field, in CTFParams' units (defocus A, angles degrees, kV, mm, fraction,
    B-factor A^2); each a per-particle array ``(n,)`` or one value for every particle. The optional fields
    (phase shift, B-factor) are 0 when absent; the others must be given.
    """
    missing = [f for f in CTF_FIELDS if f not in columns and f not in OPTIONAL_CTF_FIELDS]
    unknown = sorted(set(columns) - set(CTF_FIELDS))
    if missing or unknown:
        raise ValueError(f"CTF columns: missing {missing}, unknown {unknown}")

    def column(f: str) -> torch.Tensor:
        values = _float64(columns.get(f, 0.0))
        return torch.as_tensor(np.broadcast_to(values, (n,)).copy())

    return CTFParams(**{f: column(f) for f in CTF_FIELDS})


@dataclasses.dataclass(frozen=True)
class ParticleMetadata:
    """Everything known about N particles except their pixels.

    image_paths: the stack files. file_index, image_index ``(N,)`` int: particle i is the 0-based
    image ``image_index[i]`` of ``image_paths[file_index[i]]``. ctf: CTFParams ``(N,)`` (defocus A,
    angle deg, kV, mm, fraction, deg, A^2). rotation ``(N, 3, 3)`` and shift ``(N, 2)`` A (x, y) or
    None when the file has no poses. pixel_size A, box pixels, source: the file read.
    """

    image_paths: tuple[Path, ...]
    file_index: np.ndarray
    image_index: np.ndarray
    ctf: CTFParams
    pixel_size: float
    box: int
    rotation: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if (self.rotation is None) != (self.shift is None):
            raise ValueError("ParticleMetadata needs rotation and shift together (or neither)")

    def __len__(self) -> int:
        return len(self.file_index)

    @property
    def has_poses(self) -> bool:
        return self.rotation is not None

    def poses(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rotation (N, 3, 3), shift (N, 2) A), or None when the particles have no poses."""
        if self.rotation is None or self.shift is None:
            return None
        return self.rotation, self.shift

    def subset(self, indices) -> ParticleMetadata:
        """The particles ``indices`` (any 1D integer index), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        t = torch.as_tensor(indices)
        return dataclasses.replace(
            self,
            file_index=self.file_index[indices],
            image_index=self.image_index[indices],
            ctf=self.ctf.index(t),
            rotation=None if self.rotation is None else self.rotation[t],
            shift=None if self.shift is None else self.shift[t],
        )

    def open_stack(self) -> ParticleStack:
        """The memory-mapped images of these particles (same order)."""
        return ParticleStack(self.image_paths, self.file_index, self.image_index)

    @classmethod
    def from_columns(
        cls,
        image_paths: Sequence[Path],
        file_index: np.ndarray,
        image_index: np.ndarray,
        ctf: Mapping[str, Any],
        pixel_size: float,
        box: int,
        poses: tuple[Any, Any] | None = None,
        source: Path | None = None,
    ) -> ParticleMetadata:
        """The one constructor of every reader (and the simulator): ``ctf`` as for :func:`ctf_from_columns`,
        ``poses`` (rotation (N, 3, 3), shift (N, 2) A) in our convention (see the module docstring) as
        arrays or tensors, or None; everything is stored as float64 tensors."""
        n = len(file_index)
        rotation = shift = None
        if poses is not None:
            rotation, shift = (_float_tensor(p) for p in poses)
        return cls(
            image_paths=tuple(image_paths),
            file_index=np.asarray(file_index, dtype=np.int64),
            image_index=np.asarray(image_index, dtype=np.int64),
            ctf=ctf_from_columns(n, ctf),
            pixel_size=float(pixel_size),
            box=int(box),
            rotation=rotation,
            shift=shift,
            source=source,
        )


def _float64(values) -> np.ndarray:
    """Values (a tensor, array, sequence or number) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _float_tensor(values) -> torch.Tensor:
    return torch.as_tensor(_float64(values).copy())


def _check_stacks(
    meta_path: Path, paths: list[Path], file_index: np.ndarray, image_index: np.ndarray, pixel_size: float
) -> int:
    """Open every stack's header; check index range, one box size, pixel size; return the box."""
    boxes = set()
    rows = np.arange(len(file_index))
    for f, path in enumerate(paths):
        stack = StackFile(path)
        boxes.add(stack.box)
        mine = file_index == f
        validate.check_index_range(meta_path, rows[mine], image_index[mine], stack.path, stack.n_images)
        validate.check_pixel_size(stack.path, stack.pixel_size, meta_path, pixel_size)
    if len(boxes) > 1:
        raise InputError(meta_path, f"stacks have different image sizes: {sorted(boxes)} pixels")
    validate.check_unique_images(meta_path, paths, file_index, image_index)
    return boxes.pop()


def _resolve(name: str, meta_path: Path, datadir: Path | None) -> Path:
    """Find a stack named in metadata: datadir (full relative path, then file name), metadata folder, cwd."""
    relative = Path(name)
    if relative.is_absolute():
        candidates = [relative] + ([datadir / relative.name] if datadir else [])
    else:
        candidates = [datadir / relative, datadir / relative.name] if datadir else []
        candidates += [meta_path.parent / relative, Path.cwd() / relative]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(dict.fromkeys(str(c.parent) for c in candidates))
    raise InputError(
        meta_path,
        f"image stack {name} not found (looked in {looked}: paths are relative to "
        f"the {meta_path.suffix} file's folder or the current folder)",
    )


def _index_stacks(names: list[str], meta_path: Path, datadir: Path | None) -> tuple[list[Path], np.ndarray]:
    """Unique resolved stack paths and, per particle, the index of its stack."""
    unique, inverse = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
    paths = [_resolve(n, meta_path, datadir) for n in unique]
    return paths, inverse.astype(np.int64)


# ------------------------------------------------------------------------------------------- RELION


def read_star(
    path: str | os.PathLike, datadir: str | os.PathLike | None = None, pixel_size: float | None = None
) -> ParticleMetadata:
    """RELION particle STAR file (3.0: one table; 3.1+: ``data_optics`` + ``data_particles``).

    ``pixel_size`` (A) is needed only for 3.0 files that carry neither rlnImagePixelSize nor
    rlnDetectorPixelSize + rlnMagnification.
    """
    path = validate.check_exists(path, "STAR file")
    datadir = Path(datadir) if datadir is not None else None
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises a variety of parser errors
        raise InputError(path, f"not a readable STAR file ({err})") from None
    blocks = {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}
    if not blocks:
        raise InputError(path, "not a STAR file (no data_ block with a loop_ table of particles)")
    if "optics" in blocks:
        particles = blocks.get("particles")
        if particles is None:
            raise InputError(path, "has a data_optics table but no data_particles table")
        optics = blocks["optics"]
        validate.check_columns(path, optics.columns, ("rlnOpticsGroup", *OPTICS_CTF_COLUMNS), "optics")
        if "rlnOpticsGroup" not in particles.columns:
            if len(optics) != 1:
                raise InputError(path, "several optics groups but particles lack rlnOpticsGroup")
            particles = particles.assign(rlnOpticsGroup=optics["rlnOpticsGroup"].iloc[0])
        unknown = set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
        if unknown:
            raise InputError(path, f"particles refer to undefined optics group(s) {sorted(unknown)}")
        table = particles.merge(optics, on="rlnOpticsGroup", how="left", suffixes=("", "_optics"))
        validate.check_columns(path, optics.columns, ("rlnImagePixelSize",), "optics")
        sizes = np.unique(optics["rlnImagePixelSize"].to_numpy(np.float64))
        if len(sizes) > 1:
            raise InputError(path, f"optics groups have different pixel sizes {sizes.tolist()} A")
        star_pixel = float(sizes[0])
        origin_columns, origin_scale = ("rlnOriginXAngst", "rlnOriginYAngst"), 1.0
    else:
        if len(blocks) != 1:
            raise InputError(
                path,
                f"expected one particle table (or data_optics + data_particles), found "
                f"tables {', '.join('data_' + b for b in sorted(blocks))}",
            )
        table = next(iter(blocks.values()))
        validate.check_columns(path, table.columns, OPTICS_CTF_COLUMNS, "CTF")
        if "rlnImagePixelSize" in table.columns:
            star_pixel = float(table["rlnImagePixelSize"].iloc[0])
        elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
            star_pixel = float(
                table["rlnDetectorPixelSize"].iloc[0] * 1e4 / table["rlnMagnification"].iloc[0]
            )
        elif pixel_size is not None:
            star_pixel = float(pixel_size)
        else:
            raise InputError(
                path,
                "no pixel size (rlnImagePixelSize or rlnDetectorPixelSize + rlnMagnification); "
                "pass --pixel-size",
            )
        origin_columns, origin_scale = ("rlnOriginX", "rlnOriginY"), star_pixel
    if pixel_size is not None and abs(pixel_size - star_pixel) > validate.PIXEL_SIZE_TOLERANCE * star_pixel:
        raise InputError(path, f"pixel size {star_pixel:g} A disagrees with the {pixel_size:g} A given")
    validate.check_positive(path, "pixel size", star_pixel)
    validate.check_columns(path, table.columns, ("rlnImageName",), "image")
    validate.check_columns(path, table.columns, CTF_COLUMNS, "CTF")
    if len(table) == 0:
        raise InputError(path, "has no particles")

    names = table["rlnImageName"].astype(str).to_numpy()
    has_index = np.char.find(names.astype(str), "@") >= 0
    if has_index.all():
        split = np.char.partition(names.astype(str), "@")
        try:
            image_index = split[:, 0].astype(np.int64) - 1
        except ValueError:
            raise InputError(path, "rlnImageName must look like 12@stack.mrcs") from None
        stack_names = list(split[:, 2])
    elif not has_index.any():
        # one stack listed image by image without indices: rows are its images in order
        stack_names = list(names)
        image_index = pd.Series(names).groupby(names).cumcount().to_numpy(np.int64)
    else:
        raise InputError(path, "rlnImageName mixes k@stack and plain stack names")
    paths, file_index = _index_stacks(stack_names, path, datadir)
    if not has_index.any():
        for f, stack_path in enumerate(paths):
            validate.check_count(
                path, int((file_index == f).sum()), stack_path, StackFile(stack_path).n_images
            )
    box = _check_stacks(path, paths, file_index, image_index, star_pixel)
    if "rlnImageSize" in table.columns:
        sizes = np.unique(table["rlnImageSize"].to_numpy(np.float64))
        if sizes.size != 1 or sizes[0] != box:
            raise InputError(
                path,
                f"rlnImageSize {', '.join(f'{v:g}' for v in sizes)} disagrees with the "
                f"{box}-pixel images of {paths[0].name}",
            )
    validate.check_defocus_sign(
        path,
        table["rlnDefocusU"].to_numpy(np.float64),
        table["rlnDefocusV"].to_numpy(np.float64),
        "rlnDefocusU/V",
    )

    ctf = {f: table[c].to_numpy(np.float64) for f, c in STAR_CTF.items() if c in table.columns}
    poses = None
    angle_columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    if set(angle_columns) <= set(table.columns):
        angles = [_float_tensor(table[c].to_numpy(np.float64)) for c in angle_columns]
        origin = np.zeros((len(table), 2))
        if set(origin_columns) <= set(table.columns):
            origin = table[list(origin_columns)].to_numpy(np.float64) * origin_scale
        poses = (euler.relion_to_matrix(*angles), euler.relion_origin_to_shift(origin))
    return ParticleMetadata.from_columns(paths, file_index, image_index, ctf, star_pixel, box, poses, path)


# ---------------------------------------------------------------------------------------- cryoSPARC


def read_cryosparc_cs(path: str | os.PathLike, datadir: str | os.PathLike | None = None) -> ParticleMetadata:
    """cryoSPARC particle .cs file (a numpy structured array saved with ``np.save``)."""
    path = validate.check_exists(path, "cryoSPARC .cs file")
    datadir = Path(datadir) if datadir is not None else None
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise InputError(path, f"not a readable cryoSPARC .cs file ({err})") from None
    if data.dtype.names is None:
        raise InputError(path, "not a cryoSPARC .cs file (no named fields)")
    fields = set(data.dtype.names)
    validate.check_columns(path, fields, ("blob/path", "blob/idx", "blob/psize_A"), "image")
    validate.check_columns(path, fields, CS_CTF_FIELDS, "CTF")
    if len(data) == 0:
        raise InputError(path, "has no particles")
    pixel = np.unique(data["blob/psize_A"].astype(np.float64))
    if len(pixel) > 1:
        raise InputError(path, f"particles have different pixel sizes {pixel.tolist()} A")
    pixel_size = float(pixel[0])
    validate.check_positive(path, "blob/psize_A", pixel_size)
    # cryoSPARC writes imported paths with a leading '>' (relative to the project folder)
    names = [(p.decode() if isinstance(p, bytes) else str(p)).lstrip(">") for p in data["blob/path"]]
    paths, file_index = _index_stacks(names, path, datadir)
    image_index = data["blob/idx"].astype(np.int64)
    box = _check_stacks(path, paths, file_index, image_index, pixel_size)
    validate.check_defocus_sign(
        path,
        data["ctf/df1_A"].astype(np.float64),
        data["ctf/df2_A"].astype(np.float64),
        "ctf/df1_A / ctf/df2_A",
    )

    def field(name: str, default: float = 0.0) -> np.ndarray:
        return data[name].astype(np.float64) if name in fields else np.full(len(data), default)

    ctf = {f: field(c) for f, c in CS_CTF.items() if c in fields}
    for f in CS_RADIAN_FIELDS:
        if f in ctf:
            ctf[f] = np.rad2deg(ctf[f])
    poses = None
    pose_fields = ("alignments3D/pose", "alignments3D/shift")
    if any(f in fields for f in pose_fields):
        validate.check_columns(path, fields, pose_fields, "pose")
    if set(pose_fields) <= fields:
        pose = data["alignments3D/pose"].astype(np.float64).reshape(-1, 3)
        # shifts are in pixels of the refinement, whose pixel size cryoSPARC records separately
        shift_pixel = field("alignments3D/psize_A", pixel_size)[:, None]
        shift = -data["alignments3D/shift"].astype(np.float64).reshape(-1, 2) * shift_pixel
        poses = (Rotation.from_rotvec(-pose).as_matrix(), shift)
    return ParticleMetadata.from_columns(paths, file_index, image_index, ctf, pixel_size, box, poses, path)


# ----------------------------------------------------------------------------------------- cryoDRGN


def _load_pickle(path: Path, what: str):
    path = validate.check_exists(path, what)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as err:
        raise InputError(path, f"not a readable {what} ({err})") from None


def read_cryodrgn_pkl(
    particles: str | os.PathLike, ctf_pkl: str | os.PathLike, poses_pkl: str | os.PathLike | None = None
) -> ParticleMetadata:
    """cryoDRGN inputs: an .mrcs stack, its ``ctf.pkl`` and optionally ``poses.pkl``."""
    particles = validate.check_exists(particles, "image stack")
    ctf_pkl = Path(ctf_pkl)
    table = np.asarray(_load_pickle(ctf_pkl, "cryoDRGN ctf.pkl"))
    if table.ndim != 2 or table.shape[1] != 9:
        raise InputError(
            ctf_pkl,
            f"expected an (N, 9) CTF array [D, Apix, dfU, dfV, dfang, kV, Cs, w, phase], got "
            f"shape {table.shape}",
        )
    table = table.astype(np.float64)
    stack = StackFile(particles)
    validate.check_count(ctf_pkl, len(table), particles, stack.n_images, what="CTF rows")
    box_values, pixel_values = np.unique(table[:, 0]), np.unique(table[:, 1])
    if len(box_values) > 1 or len(pixel_values) > 1:
        raise InputError(ctf_pkl, "rows have different box sizes or pixel sizes")
    box, pixel_size = int(box_values[0]), float(pixel_values[0])
    validate.check_positive(ctf_pkl, "pixel size (column 1)", pixel_size)
    if box != stack.box:
        raise InputError(ctf_pkl, f"box size {box} disagrees with {stack.box} pixels in {particles.name}")
    validate.check_pixel_size(particles, stack.pixel_size, ctf_pkl, pixel_size)
    validate.check_defocus_sign(ctf_pkl, table[:, 2], table[:, 3], "defocus (columns 2, 3)")
    ctf = {f: table[:, column] for f, column in CRYODRGN_CTF.items()}
    poses = None
    if poses_pkl is not None:
        poses_pkl = Path(poses_pkl)
        poses = _load_pickle(poses_pkl, "cryoDRGN poses.pkl")
        if not (isinstance(poses, (tuple, list)) and len(poses) == 2):
            raise InputError(poses_pkl, "expected a pair (rotations (N,3,3), translations (N,2))")
        rot, trans = np.asarray(poses[0], dtype=np.float64), np.asarray(poses[1], dtype=np.float64)
        if rot.shape != (len(table), 3, 3) or trans.shape != (len(table), 2):
            raise InputError(
                poses_pkl,
                f"rotations {rot.shape} / translations {trans.shape} do not match {len(table)} "
                "particles of shape (N,3,3) / (N,2)",
            )
        poses = (rot, -trans * box * pixel_size)
    n = len(table)
    return ParticleMetadata.from_columns(
        (particles,), np.zeros(n, dtype=np.int64), np.arange(n), ctf, pixel_size, box, poses, ctf_pkl
    )


# ----------------------------------------------------------------------------------------- dispatch


def read_particles(
    path: str | os.PathLike,
    datadir: str | os.PathLike | None = None,
    ctf: str | os.PathLike | None = None,
    poses: str | os.PathLike | None = None,
    pixel_size: float | None = None,
) -> ParticleMetadata:
    """Read any supported particle set, choosing the reader by suffix.

    ``.star`` (RELION), ``.cs`` (cryoSPARC), or ``.mrcs``/``.mrc`` with ``ctf`` (cryoDRGN ctf.pkl) and
    optionally ``poses`` (cryoDRGN poses.pkl); without ``ctf`` they are looked up beside the stack
    (``CRYODRGN_CTF_NAMES`` / ``CRYODRGN_POSE_NAMES``), so every command can take a cryoDRGN stack.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        return read_star(path, datadir=datadir, pixel_size=pixel_size)
    if suffix == ".cs":
        return read_cryosparc_cs(path, datadir=datadir)
    if suffix in (".mrcs", ".mrc"):
        if ctf is None:
            ctf = _sidecar(path, CRYODRGN_CTF_NAMES)
            if ctf is None:
                names = ", ".join(n.format(stem=path.stem) for n in CRYODRGN_CTF_NAMES)
                raise InputError(
                    path,
                    f"a bare image stack needs its cryoDRGN CTF file beside it (one of "
                    f"{names}); or give a .star / .cs file",
                )
            if poses is None:
                poses = _sidecar(path, CRYODRGN_POSE_NAMES)
        return read_cryodrgn_pkl(path, ctf, poses)
    if suffix == ".pkl":
        raise InputError(
            path, "give the .mrcs stack as the particles; its ctf.pkl (and poses.pkl) are found beside it"
        )
    raise InputError(
        path, "unknown particle file type (expected .star, .cs, or a cryoDRGN .mrcs with ctf.pkl beside it)"
    )


# cryoDRGN keeps a stack's CTF and poses in separate pickles; with a bare .mrcs they are looked up beside it
# under these names (first match), the more specific ones first.
CRYODRGN_CTF_NAMES = ("{stem}.ctf.pkl", "{stem}_ctf.pkl", "ctf.pkl")
CRYODRGN_POSE_NAMES = ("{stem}.poses.pkl", "{stem}_poses.pkl", "poses.pkl", "pose.pkl")


def _sidecar(stack: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        candidate = stack.with_name(pattern.format(stem=stack.stem))
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------- writers


def star_tables(meta: ParticleMetadata, image_names: list[str]) -> dict[str, pd.DataFrame]:
    """RELION 3.1 ``{"optics", "particles"}`` tables for ``meta``, one optics group per (kV, Cs, Q).

    image_names: rlnImageName per particle (``k@stack``). Poses are written when present. Used by the
    simulator; starfile writes the tables as ``data_optics`` / ``data_particles``.
    """
    ctf = meta.ctf
    optics_keys = np.stack(
        [ctf.voltage.numpy(), ctf.spherical_aberration.numpy(), ctf.amplitude_contrast.numpy()], axis=1
    )
    unique, group = np.unique(optics_keys, axis=0, return_inverse=True)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(unique) + 1),
            "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(unique))],
            "rlnVoltage": unique[:, 0],
            "rlnSphericalAberration": unique[:, 1],
            "rlnAmplitudeContrast": unique[:, 2],
            "rlnImagePixelSize": meta.pixel_size,
            "rlnImageSize": meta.box,
            "rlnImageDimensionality": 2,
        }
    )
    particles = {
        "rlnImageName": image_names,
        "rlnOpticsGroup": group.reshape(-1) + 1,
        **{
            STAR_CTF[f]: getattr(ctf, f).numpy()
            for f in ("defocus_u", "defocus_v", "astigmatism_angle", "phase_shift", "bfactor")
        },
    }
    poses = meta.poses()
    if poses is not None:
        angles = euler.matrix_to_relion(poses[0].double())
        origin = euler.shift_to_relion_origin(poses[1].double())
        particles.update(
            {
                "rlnAngleRot": angles[:, 0].numpy(),
                "rlnAngleTilt": angles[:, 1].numpy(),
                "rlnAnglePsi": angles[:, 2].numpy(),
                "rlnOriginXAngst": origin[:, 0].numpy(),
                "rlnOriginYAngst": origin[:, 1].numpy(),
            }
        )
    return {"optics": optics, "particles": pd.DataFrame(particles)}
