"""The bad-input catalogue: each case gives its one message naming the file, and nothing is overwritten."""

from __future__ import annotations

import hashlib
import pickle

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from atomvae.data import dataset as ds
from atomvae.data.metadata import read_particles, read_star
from atomvae.errors import InputError
from particle_fixtures import make_particle_set, write_cryodrgn, write_mrcs, write_star30, write_star31


def _fingerprint(folder):
    """Names, sizes and contents of every file under ``folder``: proves nothing was touched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def star_set(tmp_path):
    ps = make_particle_set(seed=11)
    return ps, write_star31(tmp_path, ps)


def _expect(tmp_path, call, path_name: str, message: str):
    """``call`` raises InputError naming ``path_name`` with ``message``; the folder is unchanged."""
    before = _fingerprint(tmp_path)
    with pytest.raises(InputError) as err:
        call()
    assert err.value.path.endswith(path_name), err.value
    assert message in err.value.problem, err.value
    assert str(err.value) == f"{err.value.path}: {err.value.problem}"
    assert _fingerprint(tmp_path) == before


def test_missing_file(tmp_path):
    _expect(tmp_path, lambda: read_particles(tmp_path / "nope.star"), "nope.star", "STAR file not found")


def test_missing_stack(tmp_path, star_set):
    _, star = star_set
    (tmp_path / "stacks" / "b.mrcs").unlink()
    _expect(tmp_path, lambda: read_star(star), "particles31.star", "image stack stacks/b.mrcs not found")


def test_truncated_stack(tmp_path, star_set):
    _, star = star_set
    path = tmp_path / "stacks" / "a.mrcs"
    path.write_bytes(path.read_bytes()[:-100])
    # header: 4 images of 16x16 float32 = 1024 + 4096 bytes
    _expect(
        tmp_path,
        lambda: read_star(star),
        "a.mrcs",
        "truncated stack: header announces 4 images of 16x16 (5120 bytes with the header) but the file has "
        "5020 bytes",
    )


def test_star_stack_count_mismatch(tmp_path):
    ps = make_particle_set(seed=2)
    write_mrcs(tmp_path / "all.mrcs", ps.images)
    table = pd.DataFrame(
        {
            "rlnImageName": ["all.mrcs"] * 5,
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1,
            "rlnImagePixelSize": 1.5,
            "rlnDefocusU": 1e4,
            "rlnDefocusV": 1e4,
            "rlnDefocusAngle": 0.0,
        }
    )
    starfile.write({"": table}, tmp_path / "p.star")
    _expect(
        tmp_path,
        lambda: read_star(tmp_path / "p.star"),
        "p.star",
        "lists 5 particles but stack all.mrcs holds 7 images",
    )


def test_cryodrgn_count_mismatch(tmp_path):
    ps = make_particle_set(seed=2)
    stack, ctf, poses = write_cryodrgn(tmp_path, ps)
    table = pickle.loads(ctf.read_bytes())
    ctf.write_bytes(pickle.dumps(table[:5]))
    _expect(
        tmp_path,
        lambda: read_particles(stack, ctf=ctf),
        "ctf.pkl",
        "lists 5 CTF rows but stack particles.mrcs holds 7 images",
    )


def test_image_index_out_of_range(tmp_path, star_set):
    _, star = star_set
    tables = starfile.read(star, always_dict=True)
    tables["particles"].loc[2, "rlnImageName"] = "9@stacks/a.mrcs"
    starfile.write(tables, star)
    _expect(
        tmp_path,
        lambda: read_star(star),
        "particles31.star",
        "particle 3 refers to image 9 of a.mrcs, which holds 4 images",
    )


@pytest.mark.parametrize("version", ["3.1", "3.0"])
def test_missing_ctf_columns(tmp_path, version):
    ps = make_particle_set(seed=3)
    star = write_star31(tmp_path, ps) if version == "3.1" else write_star30(tmp_path, ps)
    tables = starfile.read(star, always_dict=True)
    key = "particles" if version == "3.1" else next(iter(tables))
    tables[key] = tables[key].drop(columns=["rlnDefocusV", "rlnDefocusAngle"])
    starfile.write(tables, star)
    _expect(
        tmp_path, lambda: read_star(star), star.name, "missing CTF column(s) rlnDefocusV, rlnDefocusAngle"
    )


def test_missing_optics_ctf_columns(tmp_path, star_set):
    _, star = star_set
    tables = starfile.read(star, always_dict=True)
    tables["optics"] = tables["optics"].drop(columns=["rlnSphericalAberration"])
    starfile.write(tables, star)
    _expect(
        tmp_path,
        lambda: read_star(star),
        "particles31.star",
        "missing optics column(s) rlnSphericalAberration",
    )


def test_non_square_images(tmp_path, star_set):
    _, star = star_set
    with mrcfile.new(tmp_path / "stacks" / "a.mrcs", overwrite=True) as mrc:
        mrc.set_data(np.zeros((4, 16, 12), dtype=np.float32))
    _expect(
        tmp_path,
        lambda: read_star(star),
        "a.mrcs",
        "images are 16x12 pixels (height x width); square images are needed",
    )


def test_pixel_size_header_disagrees_with_star(tmp_path, star_set):
    ps, star = star_set
    write_mrcs(tmp_path / "stacks" / "b.mrcs", ps.images[4:], pixel_size=2.0)
    _expect(
        tmp_path,
        lambda: read_star(star),
        "b.mrcs",
        "pixel size 2 A in the header disagrees with 1.5 A in particles31.star",
    )


def test_nan_images_skipped_and_counted_or_strict_error(tmp_path, star_set):
    ps, star = star_set
    images = ps.images[:4].copy()
    images[1, 3, 3] = np.nan
    images[2, 0, 0] = np.inf
    write_mrcs(tmp_path / "stacks" / "a.mrcs", images)
    meta = read_star(star)
    with pytest.warns(UserWarning, match=r"2 of 7 particle\(s\) are not finite .*skipping them"):
        data = ds.ParticleDataset(meta, normalize="none")
    assert data.n_skipped == 2 and len(data) == ps.n - 2
    assert sorted(int(data[i]["index"]) for i in range(len(data))) == [0, 3, 4, 5, 6]
    assert all(torch.isfinite(data[i]["image"]).all() for i in range(len(data)))
    _expect(
        tmp_path,
        lambda: ds.ParticleDataset(meta, strict=True),
        "particles31.star",
        "2 of 7 particle(s) are not finite (2 with NaN/Inf pixels; first: particle 2); drop --strict to skip "
        "them",
    )


def test_unknown_suffix_and_bare_stack(tmp_path):
    ps = make_particle_set(seed=4)
    stack = write_mrcs(tmp_path / "x.mrcs", ps.images)
    _expect(tmp_path, lambda: read_particles(stack), "x.mrcs", "needs its cryoDRGN CTF file beside it")
    (tmp_path / "p.txt").write_text("hello")
    _expect(tmp_path, lambda: read_particles(tmp_path / "p.txt"), "p.txt", "unknown particle file type")
