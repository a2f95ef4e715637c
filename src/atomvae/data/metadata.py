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
from pathlib import Path

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

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
OPTICS_CTF_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
CS_CTF_FIELDS = (
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
)


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


def _float_tensor(values) -> torch.Tensor:
    return torch.as_tensor(np.array(values, dtype=np.float64))


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

    def column(name: str, default: float) -> np.ndarray:
        return table[name].to_numpy(np.float64) if name in table.columns else np.full(len(table), default)

    ctf = CTFParams(
        defocus_u=_float_tensor(column("rlnDefocusU", 0.0)),
        defocus_v=_float_tensor(column("rlnDefocusV", 0.0)),
        astigmatism_angle=_float_tensor(column("rlnDefocusAngle", 0.0)),
        voltage=_float_tensor(column("rlnVoltage", 0.0)),
        spherical_aberration=_float_tensor(column("rlnSphericalAberration", 0.0)),
        amplitude_contrast=_float_tensor(column("rlnAmplitudeContrast", 0.0)),
        phase_shift=_float_tensor(column("rlnPhaseShift", 0.0)),
        bfactor=_float_tensor(column("rlnCtfBfactor", 0.0)),
    )
    rotation = shift = None
    angle_columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    if set(angle_columns) <= set(table.columns):
        angles = [_float_tensor(table[c].to_numpy(np.float64)) for c in angle_columns]
        rotation = euler.relion_to_matrix(*angles)
        origin = np.zeros((len(table), 2))
        if set(origin_columns) <= set(table.columns):
            origin = table[list(origin_columns)].to_numpy(np.float64) * origin_scale
        shift = euler.relion_origin_to_shift(_float_tensor(origin))
    return ParticleMetadata(
        image_paths=tuple(paths),
        file_index=file_index,
        image_index=image_index,
        ctf=ctf,
        pixel_size=star_pixel,
        box=box,
        rotation=rotation,
        shift=shift,
        source=path,
    )


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

    ctf = CTFParams(
        defocus_u=_float_tensor(field("ctf/df1_A")),
        defocus_v=_float_tensor(field("ctf/df2_A")),
        astigmatism_angle=_float_tensor(np.rad2deg(field("ctf/df_angle_rad"))),
        voltage=_float_tensor(field("ctf/accel_kv")),
        spherical_aberration=_float_tensor(field("ctf/cs_mm")),
        amplitude_contrast=_float_tensor(field("ctf/amp_contrast")),
        phase_shift=_float_tensor(np.rad2deg(field("ctf/phase_shift_rad"))),
        bfactor=_float_tensor(field("ctf/bfactor")),
    )
    rotation = shift = None
    pose_fields = ("alignments3D/pose", "alignments3D/shift")
    if any(f in fields for f in pose_fields):
        validate.check_columns(path, fields, pose_fields, "pose")
    if set(pose_fields) <= fields:
        pose = data["alignments3D/pose"].astype(np.float64).reshape(-1, 3)
        rotation = _float_tensor(Rotation.from_rotvec(-pose).as_matrix())
        # shifts are in pixels of the refinement, whose pixel size cryoSPARC records separately
        shift_pixel = field("alignments3D/psize_A", pixel_size)[:, None]
        shift = _float_tensor(-data["alignments3D/shift"].astype(np.float64).reshape(-1, 2) * shift_pixel)
    return ParticleMetadata(
        image_paths=tuple(paths),
        file_index=file_index,
        image_index=image_index,
        ctf=ctf,
        pixel_size=pixel_size,
        box=box,
        rotation=rotation,
        shift=shift,
        source=path,
    )


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
    ctf = CTFParams(
        defocus_u=_float_tensor(table[:, 2]),
        defocus_v=_float_tensor(table[:, 3]),
        astigmatism_angle=_float_tensor(table[:, 4]),
        voltage=_float_tensor(table[:, 5]),
        spherical_aberration=_float_tensor(table[:, 6]),
        amplitude_contrast=_float_tensor(table[:, 7]),
        phase_shift=_float_tensor(table[:, 8]),
        bfactor=_float_tensor(np.zeros(len(table))),
    )
    rotation = shift = None
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
        rotation = _float_tensor(rot)
        shift = _float_tensor(-trans * box * pixel_size)
    n = len(table)
    return ParticleMetadata(
        image_paths=(particles,),
        file_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n),
        ctf=ctf,
        pixel_size=pixel_size,
        box=box,
        rotation=rotation,
        shift=shift,
        source=ctf_pkl,
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
        "rlnDefocusU": ctf.defocus_u.numpy(),
        "rlnDefocusV": ctf.defocus_v.numpy(),
        "rlnDefocusAngle": ctf.astigmatism_angle.numpy(),
        "rlnPhaseShift": ctf.phase_shift.numpy(),
        "rlnCtfBfactor": ctf.bfactor.numpy(),
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
