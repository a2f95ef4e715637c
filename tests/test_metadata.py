"""Readers: one particle set written as RELION 3.0/3.1, cryoSPARC .cs and cryoDRGN pkls reads identically."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from atomvae.data import metadata as md
from atomvae.geometry import euler
from particle_fixtures import (
    BOX,
    PIXEL,
    make_particle_set,
    write_cryodrgn,
    write_cryosparc,
    write_star30,
    write_star31,
)


@pytest.fixture()
def particle_set():
    return make_particle_set(seed=3)


def _read_all(tmp_path, ps):
    stack, ctf, poses = write_cryodrgn(tmp_path, ps)
    return {
        "star31": md.read_particles(write_star31(tmp_path, ps)),
        "star30": md.read_particles(write_star30(tmp_path, ps)),
        "cryosparc": md.read_particles(write_cryosparc(tmp_path, ps)),
        "cryodrgn": md.read_particles(stack, ctf=ctf, poses=poses),
    }


def test_all_formats_read_to_the_same_description(tmp_path, particle_set):
    ps = particle_set
    metas = _read_all(tmp_path, ps)
    for name, meta in metas.items():
        # cryoDRGN's ctf.pkl and cryoSPARC's kV/Cs/Q/pixel fields are float32 (as those programs write
        # them); STAR files keep 12 significant digits
        tol = (
            {"rtol": 1e-6, "atol": 1e-4}
            if name in ("cryodrgn", "cryosparc")
            else {"rtol": 1e-10, "atol": 1e-9}
        )
        assert len(meta) == ps.n, name
        assert meta.box == BOX and meta.pixel_size == pytest.approx(PIXEL, rel=1e-7), name
        expected_ctf = {
            "defocus_u": ps.defocus_u,
            "defocus_v": ps.defocus_v,
            "astigmatism_angle": ps.defocus_angle,
            "phase_shift": ps.phase_shift,
            "voltage": np.full(ps.n, 300.0),
            "spherical_aberration": np.full(ps.n, 2.7),
            "amplitude_contrast": np.full(ps.n, 0.07),
            "bfactor": np.zeros(ps.n),
        }
        for field, expected in expected_ctf.items():
            np.testing.assert_allclose(
                getattr(meta.ctf, field).numpy(), expected, **tol, err_msg=f"{name} {field}"
            )
        np.testing.assert_allclose(
            meta.rotation.numpy(),
            ps.rotation,
            rtol=0,
            atol=2e-6 if name == "cryodrgn" else 1e-9,
            err_msg=name,
        )
        np.testing.assert_allclose(
            meta.shift.numpy(), ps.shift, rtol=0, atol=1e-5 if name == "cryodrgn" else 1e-9, err_msg=name
        )
        images = meta.open_stack()[:].numpy()
        np.testing.assert_array_equal(images, ps.images, err_msg=name)


def test_star31_uses_two_stacks_with_relative_paths(tmp_path, particle_set):
    meta = md.read_star(write_star31(tmp_path, particle_set))
    assert [p.name for p in meta.image_paths] == ["a.mrcs", "b.mrcs"]
    assert meta.file_index.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert meta.image_index.tolist() == [0, 1, 2, 3, 2, 1, 0]


def test_datadir_overrides_star_folder(tmp_path, particle_set):
    star = write_star31(tmp_path / "job", particle_set)
    elsewhere = tmp_path / "moved"
    os.rename(tmp_path / "job" / "stacks", elsewhere)
    meta = md.read_star(star, datadir=elsewhere)
    assert meta.image_paths[0].parent == elsewhere
    np.testing.assert_array_equal(meta.open_stack()[:].numpy(), particle_set.images)


def test_cryodrgn_matrix_is_relion_matrix_by_hand():
    """cryoDRGN's R_from_relion is Rz(-psi) Ry(-tilt) Rz(-rot) (standard right-handed matrices): our R."""
    rot, tilt, psi = 30.0, 50.0, 70.0

    def rz(deg):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    def ry(deg):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    by_hand = rz(-psi) @ ry(-tilt) @ rz(-rot)
    np.testing.assert_allclose(euler.relion_to_matrix(rot, tilt, psi), by_hand, atol=1e-12)


def test_cryosparc_pose_round_trip_and_direction(tmp_path, particle_set):
    """Our rotation about z by +40 deg is stored by cryoSPARC as the rotvec (0, 0, -40 deg)."""
    meta = md.read_cryosparc_cs(write_cryosparc(tmp_path, particle_set))
    data = np.load(tmp_path / "particles.cs")
    data["alignments3D/pose"][0] = [0.0, 0.0, -math.radians(40.0)]
    data["alignments3D/shift"][0] = [2.0, -1.0]
    with open(tmp_path / "one.cs", "wb") as f:
        np.save(f, data)
    meta = md.read_cryosparc_cs(tmp_path / "one.cs")
    c, s = math.cos(math.radians(40)), math.sin(math.radians(40))
    np.testing.assert_allclose(meta.rotation[0].numpy(), [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(meta.shift[0].numpy(), [-2.0 * PIXEL, 1.0 * PIXEL], atol=1e-6)


def test_star_without_poses_and_subset(tmp_path, particle_set):
    import starfile

    star = write_star31(tmp_path, particle_set)
    tables = starfile.read(star, always_dict=True)
    tables["particles"] = tables["particles"].drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    starfile.write(tables, tmp_path / "noposes.star")
    meta = md.read_star(tmp_path / "noposes.star")
    assert not meta.has_poses and meta.shift is None
    sub = meta.subset([5, 1])
    assert sub.image_index.tolist() == [1, 1] and sub.file_index.tolist() == [1, 0]
    torch.testing.assert_close(sub.ctf.defocus_u, meta.ctf.defocus_u[[5, 1]])


def test_star_tables_round_trip(tmp_path, particle_set):
    """The simulator's STAR writer and read_star are inverses (poses via matrices, CTF values)."""
    import starfile

    meta = md.read_star(write_star31(tmp_path, particle_set))
    names = [
        f"{i + 1}@stacks/a.mrcs" if f == 0 else f"{i + 1}@stacks/b.mrcs"
        for f, i in zip(meta.file_index, meta.image_index, strict=True)
    ]
    starfile.write(md.star_tables(meta, names), tmp_path / "again.star", float_format="%.12g")
    again = md.read_star(tmp_path / "again.star")
    torch.testing.assert_close(again.rotation, meta.rotation, rtol=0, atol=1e-9)
    torch.testing.assert_close(again.shift, meta.shift, rtol=0, atol=1e-9)
    for field, value in meta.ctf.as_dict().items():
        torch.testing.assert_close(getattr(again.ctf, field), value, rtol=1e-10, atol=1e-9)


def test_cryosparc_shift_uses_refinement_pixel_size(tmp_path, particle_set):
    from numpy.lib import recfunctions

    data = np.load(write_cryosparc(tmp_path, particle_set))
    data = recfunctions.append_fields(
        data, "alignments3D/psize_A", np.full(len(data), 3.0, dtype=np.float32), usemask=False
    )
    with open(tmp_path / "binned.cs", "wb") as f:
        np.save(f, data)
    meta = md.read_cryosparc_cs(tmp_path / "binned.cs")
    # shifts were written in 1.5 A pixels; read as 3 A pixels they double
    np.testing.assert_allclose(meta.shift.numpy(), 2 * particle_set.shift, atol=1e-9)


def test_ctf_from_columns_broadcasts_defaults_and_refuses_gaps():
    """The one CTF constructor of the readers and the simulator: arrays or constants, optional fields 0."""
    ctf = md.ctf_from_columns(
        3,
        {
            "defocus_u": [1e4, 2e4, 3e4],
            "defocus_v": np.array([9e3, 1.9e4, 2.9e4]),
            "astigmatism_angle": 30.0,
            "voltage": 300,
            "spherical_aberration": 2.7,
            "amplitude_contrast": 0.1,
        },
    )
    assert ctf.dtype == torch.float64 and ctf.shape == (3,)
    assert ctf.defocus_u.tolist() == [1e4, 2e4, 3e4] and ctf.voltage.tolist() == [300.0] * 3
    assert ctf.phase_shift.tolist() == [0.0] * 3 and ctf.bfactor.tolist() == [0.0] * 3
    with pytest.raises(ValueError, match="missing.*voltage"):
        md.ctf_from_columns(1, {"defocus_u": 1e4, "defocus_v": 1e4})
    with pytest.raises(ValueError, match="unknown.*defocus"):
        md.ctf_from_columns(
            1,
            {f: 1.0 for f in md.CTF_FIELDS} | {"defocus": 1.0},
        )


def test_poses_come_together():
    ctf = {f: 1.0 for f in md.CTF_FIELDS}
    meta = md.ParticleMetadata.from_columns(["a.mrcs"], [0, 0], [0, 1], ctf, 1.5, 16)
    assert meta.poses() is None and meta.rotation is None
    with pytest.raises(ValueError, match="rotation and shift together"):
        md.ParticleMetadata(
            meta.image_paths,
            meta.file_index,
            meta.image_index,
            meta.ctf,
            1.5,
            16,
            rotation=torch.eye(3)[None],
        )
    posed = md.ParticleMetadata.from_columns(
        ["a.mrcs"], [0, 0], [0, 1], ctf, 1.5, 16, poses=(np.eye(3)[None].repeat(2, 0), np.zeros((2, 2)))
    )
    rotation, shift = posed.poses()
    assert rotation.dtype == torch.float64 and rotation.shape == (2, 3, 3) and shift.shape == (2, 2)
