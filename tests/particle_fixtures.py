"""One small particle set written in every supported format (RELION 3.0/3.1, cryoSPARC .cs, cryoDRGN pkl).

The writers spell out each format's convention independently of the readers (see the reader's
docstring in atomvae/data/metadata.py for the sources): RELION Euler angles and origins, cryoSPARC's
axis-angle of R transposed with origin-signed pixel shifts, cryoDRGN's RELION matrix with origins in
fractions of the box.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

BOX = 16
PIXEL = 1.5
N_A, N_B = 4, 3  # images in the two stacks


@dataclass
class ParticleSet:
    images: np.ndarray  # (N, BOX, BOX) float32
    angles: np.ndarray  # (N, 3) RELION rot, tilt, psi (deg)
    shift: np.ndarray  # (N, 2) our shift in A (= -rlnOrigin)
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray  # deg
    phase_shift: np.ndarray  # deg
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def origin(self) -> np.ndarray:
        return -self.shift

    @property
    def rotation(self) -> np.ndarray:
        """Our R = RELION's A = (Rz(rot) Ry(tilt) Rz(psi))^T."""
        return Rotation.from_euler("ZYZ", self.angles, degrees=True).inv().as_matrix()


def make_particle_set(seed: int = 0) -> ParticleSet:
    rng = np.random.default_rng(seed)
    n = N_A + N_B
    return ParticleSet(
        images=rng.normal(size=(n, BOX, BOX)).astype(np.float32),
        angles=np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n), rng.uniform(-180, 180, n)], 1),
        shift=rng.normal(scale=3.0, size=(n, 2)),
        defocus_u=rng.uniform(15000, 20000, n),
        defocus_v=rng.uniform(14000, 15000, n),
        defocus_angle=rng.uniform(0, 180, n),
        phase_shift=rng.uniform(0, 10, n),
    )


def write_mrcs(path: Path, images: np.ndarray, pixel_size: float = PIXEL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(images, dtype=np.float32))
        mrc.voxel_size = pixel_size
    return path


def write_stacks(folder: Path, ps: ParticleSet) -> tuple[Path, Path]:
    """Two stacks under ``folder/stacks``: particles 0..3 in a.mrcs, 4..6 in b.mrcs (in reverse order)."""
    a = write_mrcs(folder / "stacks" / "a.mrcs", ps.images[:N_A])
    b = write_mrcs(folder / "stacks" / "b.mrcs", ps.images[N_A:][::-1])
    return a, b


def image_names(ps: ParticleSet) -> list[str]:
    names = [f"{i + 1}@stacks/a.mrcs" for i in range(N_A)]
    names += [f"{N_B - j}@stacks/b.mrcs" for j in range(N_B)]  # b holds them reversed
    return names


def write_star31(folder: Path, ps: ParticleSet, name: str = "particles31.star") -> Path:
    write_stacks(folder, ps)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["g1", "g2"],
            "rlnVoltage": [ps.voltage] * 2,
            "rlnSphericalAberration": [ps.cs] * 2,
            "rlnAmplitudeContrast": [ps.amplitude_contrast] * 2,
            "rlnImagePixelSize": [PIXEL] * 2,
            "rlnImageSize": [BOX] * 2,
            "rlnImageDimensionality": [2] * 2,
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": image_names(ps),
            "rlnOpticsGroup": [1] * N_A + [2] * N_B,
            "rlnDefocusU": ps.defocus_u,
            "rlnDefocusV": ps.defocus_v,
            "rlnDefocusAngle": ps.defocus_angle,
            "rlnPhaseShift": ps.phase_shift,
            "rlnAngleRot": ps.angles[:, 0],
            "rlnAngleTilt": ps.angles[:, 1],
            "rlnAnglePsi": ps.angles[:, 2],
            "rlnOriginXAngst": ps.origin[:, 0],
            "rlnOriginYAngst": ps.origin[:, 1],
        }
    )
    path = folder / name
    starfile.write({"optics": optics, "particles": particles}, path, float_format="%.12g")
    return path


def write_star30(folder: Path, ps: ParticleSet, name: str = "particles30.star") -> Path:
    """RELION 3.0: one table, origins in pixels, pixel size from detector pixel and magnification."""
    write_stacks(folder, ps)
    particles = pd.DataFrame(
        {
            "rlnImageName": image_names(ps),
            "rlnVoltage": ps.voltage,
            "rlnSphericalAberration": ps.cs,
            "rlnAmplitudeContrast": ps.amplitude_contrast,
            "rlnDetectorPixelSize": 15.0,
            "rlnMagnification": 15.0 * 1e4 / PIXEL,
            "rlnDefocusU": ps.defocus_u,
            "rlnDefocusV": ps.defocus_v,
            "rlnDefocusAngle": ps.defocus_angle,
            "rlnPhaseShift": ps.phase_shift,
            "rlnAngleRot": ps.angles[:, 0],
            "rlnAngleTilt": ps.angles[:, 1],
            "rlnAnglePsi": ps.angles[:, 2],
            "rlnOriginX": ps.origin[:, 0] / PIXEL,
            "rlnOriginY": ps.origin[:, 1] / PIXEL,
        }
    )
    path = folder / name
    starfile.write({"": particles}, path, float_format="%.12g")
    return path


def write_cryosparc(folder: Path, ps: ParticleSet, name: str = "particles.cs") -> Path:
    """cryoSPARC: pose = axis-angle of R^T, shift = rlnOrigin in pixels, angles in radians, 0-based idx."""
    write_stacks(folder, ps)
    n = ps.n
    dtype = [
        ("uid", "<u8"),
        ("blob/path", "S64"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f8"),
        ("ctf/df2_A", "<f8"),
        ("ctf/df_angle_rad", "<f8"),
        ("ctf/phase_shift_rad", "<f8"),
        ("alignments3D/pose", "<f8", (3,)),
        ("alignments3D/shift", "<f8", (2,)),
    ]
    data = np.zeros(n, dtype=dtype)
    data["uid"] = np.arange(n) + 1000
    names = image_names(ps)
    data["blob/path"] = [(">" + s.split("@")[1]).encode() for s in names]
    data["blob/idx"] = [int(s.split("@")[0]) - 1 for s in names]
    data["blob/shape"] = BOX
    data["blob/psize_A"] = PIXEL
    data["ctf/accel_kv"] = ps.voltage
    data["ctf/cs_mm"] = ps.cs
    data["ctf/amp_contrast"] = ps.amplitude_contrast
    data["ctf/df1_A"] = ps.defocus_u
    data["ctf/df2_A"] = ps.defocus_v
    data["ctf/df_angle_rad"] = np.deg2rad(ps.defocus_angle)
    data["ctf/phase_shift_rad"] = np.deg2rad(ps.phase_shift)
    data["alignments3D/pose"] = Rotation.from_matrix(np.transpose(ps.rotation, (0, 2, 1))).as_rotvec()
    data["alignments3D/shift"] = ps.origin / PIXEL
    path = folder / name
    with open(path, "wb") as f:  # cryoSPARC writes .cs with np.save; np.save on a path would append .npy
        np.save(f, data)
    return path


def write_cryodrgn(folder: Path, ps: ParticleSet) -> tuple[Path, Path, Path]:
    """cryoDRGN: one stack in particle order, ctf.pkl (N, 9), poses.pkl (RELION matrix, origin / box)."""
    stack = write_mrcs(folder / "drgn" / "particles.mrcs", ps.images)
    ctf = np.stack(
        [
            np.full(ps.n, BOX),
            np.full(ps.n, PIXEL),
            ps.defocus_u,
            ps.defocus_v,
            ps.defocus_angle,
            np.full(ps.n, ps.voltage),
            np.full(ps.n, ps.cs),
            np.full(ps.n, ps.amplitude_contrast),
            ps.phase_shift,
        ],
        axis=1,
    ).astype(np.float32)
    ctf_path = folder / "drgn" / "ctf.pkl"
    with open(ctf_path, "wb") as f:
        pickle.dump(ctf, f)
    poses_path = folder / "drgn" / "poses.pkl"
    with open(poses_path, "wb") as f:
        pickle.dump((ps.rotation.astype(np.float32), (ps.origin / PIXEL / BOX).astype(np.float32)), f)
    return stack, ctf_path, poses_path
