"""Atomic output: the target appears whole or not at all, with ordinary permissions."""

import os
import stat

import pytest

from atomvae.errors import InputError, atomic_path, atomic_write_text


def test_atomic_write_replaces_and_keeps_default_permissions(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_input_error_message_names_file_and_problem():
    err = InputError("particles.star", "12 particles but the stack holds 10 images")
    assert str(err) == "particles.star: 12 particles but the stack holds 10 images"
    assert err.path == "particles.star" and err.problem.startswith("12 particles")
