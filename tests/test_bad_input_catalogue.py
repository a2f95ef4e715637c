"""The bad-input and fault catalogue of the command line (issue 15), one test per case.

Each case asserts the one line the user sees (``atomvae: error: <file>: <problem>``, exit code 2, no
traceback) and that nothing was overwritten or left behind: no run folder for a train that was refused,
no replaced output, no temporary file. Data-level cases of the readers are in tests/test_validate.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import starfile
import yaml

from atomvae.cli.main import main
from atomvae.structure.io import read_structure, write_ensemble
from atomvae.train.config import save_config
from atomvae.train.metrics import MetricsLogger, read_metrics
from helpers_train import BASE_PDB, BOX, PIXEL_SIZE, tiny_config, write_particles

N_PARTICLES = 24


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error(capsys, argv: list, message: str, code: int = 2) -> str:
    """Run the CLI, expect ``code`` and one line ``atomvae: error: ...`` containing ``message``."""
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("atomvae: error: ")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Particles, a tiny config and a run trained for 2 steps, shared by the cases (read-only for them)."""
    folder = tmp_path_factory.mktemp("catalogue")
    star = write_particles(folder / "data", n=N_PARTICLES)
    config = folder / "tiny.yaml"
    save_config(tiny_config(), config)
    run_dir = folder / "run"
    assert (
        main(
            [
                "train",
                str(star),
                str(BASE_PDB),
                "-o",
                str(run_dir),
                "--config",
                str(config),
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    return {"folder": folder, "star": star, "config": config, "run": run_dir}


def _train(world, out: Path, star=None, base=BASE_PDB, *extra) -> list:
    return [
        "train",
        star or world["star"],
        base,
        "-o",
        out,
        "--config",
        world["config"],
        "--max-steps",
        "2",
        "--no-progress",
        *extra,
    ]


def _edited_star(world, tmp_path: Path, edit) -> Path:
    """A copy of the particles' STAR file (beside a copy of the stack) with ``edit(tables)`` applied."""
    data = tmp_path / "edited"
    data.mkdir()
    shutil.copy(world["star"].parent / "particles.mrcs", data / "particles.mrcs")
    tables = starfile.read(world["star"], always_dict=True)
    edit(tables)
    starfile.write(tables, data / "particles.star", overwrite=True)
    return data / "particles.star"


def _edited_pdb(tmp_path: Path, name: str, keep) -> Path:
    """BASE_PDB with only the lines ``keep(line)`` accepts."""
    lines = [line for line in BASE_PDB.read_text().splitlines() if keep(line)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------- 1. non-finite data


def test_nan_defocus_in_one_row_is_skipped_with_a_count(world, tmp_path, capsys):
    def nan_defocus(tables):
        tables["particles"].loc[5, "rlnDefocusU"] = np.nan

    star = _edited_star(world, tmp_path, nan_defocus)
    out = tmp_path / "run"
    with pytest.warns(
        UserWarning,
        match=r"1 of 24 particle\(s\) are not finite \(1 with NaN/Inf defocus; "
        r"first: particle 6\); skipping them",
    ):
        assert main([str(a) for a in _train(world, out, star)]) == 0
    info = yaml.safe_load((out / "run.yaml").read_text())
    assert info["n_particles"] == N_PARTICLES - 1
    losses = [r["loss"] for r in read_metrics(out / "seed_0" / "metrics.jsonl") if r["kind"] == "train"]
    assert losses and all(np.isfinite(losses))


def test_nan_angle_with_strict_is_an_error_before_the_run_folder(world, tmp_path, capsys):
    def nan_angle(tables):
        tables["particles"].loc[0, "rlnAngleRot"] = np.inf

    star = _edited_star(world, tmp_path, nan_angle)
    out = tmp_path / "run"
    _error(capsys, _train(world, out, star, BASE_PDB, "--strict"), "1 with NaN/Inf angles")
    assert not out.exists()


def test_nan_base_coordinate_is_an_error_naming_the_users_file(world, tmp_path, capsys):
    lines = BASE_PDB.read_text().splitlines()
    first_atom = next(i for i, line in enumerate(lines) if line.startswith("ATOM"))
    lines[first_atom] = lines[first_atom][:30] + "     nan" + lines[first_atom][38:]
    base = tmp_path / "nan_base.pdb"
    base.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    line = _error(capsys, _train(world, out, None, base), "has non-finite coordinates")
    assert str(base) in line and not out.exists()


def test_all_steps_non_finite_stops_with_an_error(world, tmp_path, capsys):
    # A noise level that underflows float32 makes every step's likelihood infinite.
    out = tmp_path / "run"
    _error(
        capsys,
        [
            "train",
            world["star"],
            BASE_PDB,
            "-o",
            out,
            "--config",
            world["config"],
            "--no-progress",
            "--noise-sigma",
            "1e-46",
        ],
        "had a non-finite loss, so nothing is being learnt",
    )
    assert not (out / "best.yaml").exists()


# ----------------------------------------------------------- 2. every input checked before the folder


@pytest.mark.parametrize(
    ("name", "keep", "message"),
    [
        ("no_atoms.pdb", lambda line: line.startswith(("CRYST1", "END")), "no "),
        (
            "calpha.pdb",
            lambda line: not line.startswith("ATOM") or line[12:16].strip() == "CA",
            "only a C-alpha atom",
        ),
        ("empty.pdb", lambda line: False, "no "),
    ],
)
def test_bad_base_structure_is_refused_before_the_run_folder(world, tmp_path, capsys, name, keep, message):
    base = _edited_pdb(tmp_path, name, keep)
    out = tmp_path / "run"
    line = _error(capsys, _train(world, out, None, base), message)
    assert line.startswith(f"atomvae: error: {base}:") and not out.exists()


def test_waters_only_base_is_refused(world, tmp_path, capsys):
    water = tmp_path / "water.pdb"
    water.write_text("HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\nEND\n")
    out = tmp_path / "run"
    _error(capsys, _train(world, out, None, water), "no protein residues")
    assert not out.exists()


def test_garbage_base_is_refused(world, tmp_path, capsys):
    garbage = tmp_path / "garbage.cif"
    garbage.write_bytes(os.urandom(300))
    out = tmp_path / "run"
    line = _error(capsys, _train(world, out, None, garbage), "")
    assert str(garbage) in line and not out.exists()


def test_multi_model_base_is_refused(world, tmp_path, capsys):
    structure = read_structure(BASE_PDB)
    multi = tmp_path / "two_models.pdb"
    write_ensemble(multi, structure.topology, np.stack([structure.coords, structure.coords + 1.0]))
    out = tmp_path / "run"
    _error(capsys, _train(world, out, None, multi), "holds 2 models; the base structure must be one model")
    assert not out.exists()


def test_constant_images_are_refused_before_the_run_folder(world, tmp_path, capsys):
    import mrcfile

    star = _edited_star(world, tmp_path, lambda tables: None)
    with mrcfile.open(star.parent / "particles.mrcs", mode="r+") as mrc:
        mrc.data[:] = 3.0
    out = tmp_path / "run"
    _error(capsys, _train(world, out, star), "does not vary")
    assert not out.exists()


def test_init_from_a_run_with_another_residue_count(world, tmp_path, capsys):
    last_residue = read_structure(BASE_PDB).topology.res_seq[-1]
    nine = _edited_pdb(
        tmp_path, "nine.pdb", lambda line: not (line.startswith("ATOM") and int(line[22:26]) == last_residue)
    )
    out = tmp_path / "run"
    _error(
        capsys,
        _train(world, out, None, nine, "--init", world["run"]),
        "--init: its base structure has 10 residues",
    )
    assert not out.exists()


def test_negative_workers(world, tmp_path, capsys):
    out = tmp_path / "run"
    _error(capsys, _train(world, out, None, BASE_PDB, "--workers", "-1"), "--workers: must be 0")
    assert not out.exists()


def test_run_folder_that_is_a_file(world, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("mine")
    _error(capsys, _train(world, out), "exists and is not a folder")
    assert out.read_text() == "mine"


# ------------------------------------------------------------------ 3. resume and duplicated particles


def test_resume_with_another_particle_file_of_the_same_shape(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    other = write_particles(tmp_path / "other", n=N_PARTICLES, seed=7)  # same count, box, pixel size
    before = _tree(run)
    _error(
        capsys,
        ["train", other, BASE_PDB, "-o", run, "--resume", "--max-steps", "3", "--no-progress"],
        "is not the particle file this run started with",
    )
    assert _tree(run) == before


def test_resume_with_the_same_particles_moved_elsewhere(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    moved = tmp_path / "moved"
    shutil.copytree(world["star"].parent, moved)
    with pytest.warns(UserWarning, match="started with .* \\(same contents\\); continuing"):
        assert (
            main(
                [
                    "train",
                    str(moved / "particles.star"),
                    str(BASE_PDB),
                    "-o",
                    str(run),
                    "--resume",
                    "--max-steps",
                    "3",
                    "--no-progress",
                ]
            )
            == 0
        )


def test_duplicated_particles_are_an_error(world, tmp_path, capsys):
    def twice(tables):
        tables["particles"] = tables["particles"].iloc[list(range(N_PARTICLES)) * 2].reset_index(drop=True)

    star = _edited_star(world, tmp_path, twice)
    out = tmp_path / "run"
    _error(capsys, _train(world, out, star), "image 1@particles.mrcs is listed twice (particles 1 and 25")
    assert not out.exists()


# ------------------------------------------------------------------------------ 4. no lost outputs


def test_sample_never_replaces_an_existing_file_without_overwrite(world, tmp_path, capsys):
    out = tmp_path / "mine.pdb"
    out.write_text("precious")
    _error(capsys, ["sample", world["run"], "-n", "2", "-o", out], "already exists; pass --overwrite")
    assert out.read_text() == "precious"
    assert main(["sample", str(world["run"]), "-n", "2", "-o", str(out), "--overwrite"]) == 0
    assert "ATOM" in out.read_text()


def test_sample_never_replaces_the_runs_base_structure(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = _tree(run)
    _error(
        capsys,
        ["sample", run, "-n", "2", "-o", run / "base.pdb", "--overwrite"],
        "is an input of this command",
    )
    assert _tree(run) == before


def test_sample_dcd_checks_its_topology_companion(world, tmp_path, capsys):
    (tmp_path / "s_topology.pdb").write_text("precious")
    _error(
        capsys,
        ["sample", world["run"], "-n", "2", "-o", tmp_path / "s.dcd"],
        "s_topology.pdb: already exists",
    )
    assert not (tmp_path / "s.dcd").exists()


def test_sample_output_that_is_a_folder(world, tmp_path, capsys):
    folder = tmp_path / "out.pdb"
    folder.mkdir()
    _error(capsys, ["sample", world["run"], "-n", "2", "-o", folder], "is a folder; give a file name")


def test_encode_never_replaces_its_input_or_an_existing_output(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = _tree(run)
    _error(capsys, ["encode", run, world["star"], "-o", run / "split.npz", "--overwrite"], "is an input")
    assert _tree(run) == before
    existing = tmp_path / "latents.npz"
    existing.write_bytes(b"precious")
    _error(capsys, ["encode", run, world["star"], "-o", existing], "already exists")
    assert existing.read_bytes() == b"precious"


def test_evaluate_never_replaces_a_report_or_its_inputs(world, tmp_path, capsys):
    structure = read_structure(BASE_PDB)
    gt = tmp_path / "gt.pdb"
    write_ensemble(gt, structure.topology, np.stack([structure.coords + 0.1 * k for k in range(4)]))
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.html").write_text("precious")
    _error(capsys, ["evaluate", gt, gt, "--n", "2", "-o", report], "report.html: already exists")
    assert (report / "report.html").read_text() == "precious"
    before = gt.read_bytes()
    _error(
        capsys,
        ["evaluate", gt, gt, "--n", "2", "-o", tmp_path / "new", "--json", gt, "--overwrite"],
        "is an input of this command",
    )
    assert gt.read_bytes() == before and not (tmp_path / "new").exists()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    _error(capsys, ["evaluate", gt, gt, "-o", not_a_folder], "exists and is not a folder")


def test_unwritable_output_folder_is_refused_before_work(world, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # as root, chmod would not stop a write
    _error(capsys, ["sample", world["run"], "-n", "2", "-o", tmp_path / "x.pdb"], "cannot write in")
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, ["sample", world["run"], "-n", "2", "-o", blocker / "x.pdb"], "is not a folder")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["interpolate", "{run}", "-o", "{tmp}/x.pdb", "--n-particles", "0"], "--n-particles: must be a"),
        (["interpolate", "{run}", "-o", "{tmp}/x.pdb", "--steps", "1"], "--steps: need at least 2 steps"),
        (["encode", "{run}", "{star}", "-o", "{tmp}/x.npz", "--batch-size", "0"], "--batch-size: must be a"),
        (["sample", "{run}", "-n", "0", "-o", "{tmp}/x.pdb"], "-n: must be a positive integer"),
    ],
)
def test_zero_counts_are_one_line_before_work(world, tmp_path, capsys, argv, message):
    argv = [a.format(run=world["run"], tmp=tmp_path, star=world["star"]) for a in argv]
    _error(capsys, argv, message)
    assert list(tmp_path.iterdir()) == []


def test_simulate_into_the_current_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("precious")
    _error(
        capsys,
        [
            "simulate",
            BASE_PDB,
            "-n",
            "2",
            "--box",
            "16",
            "--pixel-size",
            "2",
            "-o",
            ".",
            "--overwrite",
            "--no-progress",
        ],
        "is the current folder",
    )
    assert _tree(tmp_path) == {"keep.txt": hashlib.sha256(b"precious").hexdigest()}


# --------------------------------------------------------------------------- 5. formats and geometry


@pytest.mark.parametrize("content", ["", "garbage\nmore garbage\n"])
def test_garbage_or_empty_star_is_not_a_star_file(tmp_path, capsys, content):
    star = tmp_path / "p.star"
    star.write_text(content)
    _error(capsys, ["train", star, BASE_PDB, "-o", tmp_path / "run"], "not a STAR file")
    assert not (tmp_path / "run").exists()


def test_cs_without_its_shift_field_names_cryosparc_fields(tmp_path):
    from atomvae.data.metadata import read_cryosparc_cs
    from atomvae.errors import InputError
    from particle_fixtures import make_particle_set, write_cryosparc

    cs = write_cryosparc(tmp_path, make_particle_set(seed=3))
    data = np.load(cs)
    names = [n for n in data.dtype.names if n != "alignments3D/shift"]
    with open(cs, "wb") as f:
        np.save(f, data[names])
    with pytest.raises(InputError, match="missing pose column\\(s\\) alignments3D/shift"):
        read_cryosparc_cs(cs)


def test_cryodrgn_stack_is_usable_from_the_command_line(world, tmp_path, capsys):
    """A bare .mrcs with its ctf.pkl beside it (cryoDRGN's layout) encodes like the STAR file."""
    tables = starfile.read(world["star"], always_dict=True)
    particles, optics = tables["particles"], tables["optics"].iloc[0]
    ctf = np.stack(
        [
            np.full(N_PARTICLES, BOX),
            np.full(N_PARTICLES, PIXEL_SIZE),
            particles["rlnDefocusU"],
            particles["rlnDefocusV"],
            particles["rlnDefocusAngle"],
            np.full(N_PARTICLES, optics["rlnVoltage"]),
            np.full(N_PARTICLES, optics["rlnSphericalAberration"]),
            np.full(N_PARTICLES, optics["rlnAmplitudeContrast"]),
            particles["rlnPhaseShift"],
        ],
        axis=1,
    )
    stack = tmp_path / "particles.mrcs"
    shutil.copy(world["star"].parent / "particles.mrcs", stack)
    with open(tmp_path / "ctf.pkl", "wb") as f:
        pickle.dump(ctf.astype(np.float32), f)
    out = tmp_path / "latents.npz"
    assert main(["encode", str(world["run"]), str(stack), "-o", str(out)]) == 0
    assert main(["encode", str(world["run"]), str(world["star"]), "-o", str(tmp_path / "star.npz")]) == 0
    from_drgn, from_star = np.load(out), np.load(tmp_path / "star.npz")
    assert np.allclose(from_drgn["mu"], from_star["mu"], atol=1e-4)
    (tmp_path / "ctf.pkl").unlink()
    _error(capsys, ["encode", world["run"], stack, "-o", tmp_path / "x.npz"], "needs its cryoDRGN CTF file")


def test_missing_stack_does_not_suggest_an_option_that_does_not_exist(world, tmp_path, capsys):
    star = tmp_path / "p.star"
    shutil.copy(world["star"], star)  # without its stack
    line = _error(
        capsys, ["train", star, BASE_PDB, "-o", tmp_path / "run"], "image stack particles.mrcs not found"
    )
    assert "--datadir" not in line


def test_optics_image_size_disagreeing_with_the_stack(world, tmp_path, capsys):
    def image_size_64(tables):
        tables["optics"]["rlnImageSize"] = 64

    star = _edited_star(world, tmp_path, image_size_64)
    _error(
        capsys, _train(world, tmp_path / "run", star), "rlnImageSize 64 disagrees with the 32-pixel images"
    )


def test_all_negative_defocus(world, tmp_path, capsys):
    def flip(tables):
        tables["particles"]["rlnDefocusU"] *= -1
        tables["particles"]["rlnDefocusV"] *= -1

    star = _edited_star(world, tmp_path, flip)
    _error(capsys, _train(world, tmp_path / "run", star), "flip the sign")


def test_base_larger_than_the_box_or_with_a_detached_residue_is_reported(world):
    from atomvae.train.preflight import warn_about_geometry

    structure = read_structure(BASE_PDB)
    far = structure.coords.copy()
    far[structure.topology.residue_index == 9] += 500.0
    moved = type(structure)(structure.topology, far)
    with pytest.warns(UserWarning) as record:
        messages = warn_about_geometry(moved, BASE_PDB, BOX, PIXEL_SIZE)
    assert len(record) == 2
    assert "fall outside the box" in messages[0] and "residue A:" in messages[1]
    assert "from any other residue" in messages[1]
    assert warn_about_geometry(structure, BASE_PDB, BOX, PIXEL_SIZE) == []


def test_evaluate_with_missing_residues_is_an_error_unless_allowed(tmp_path, capsys):
    structure = read_structure(BASE_PDB)
    coords = np.stack([structure.coords + 0.1 * k for k in range(4)])
    gt, pred = tmp_path / "gt.pdb", tmp_path / "pred.pdb"
    write_ensemble(gt, structure.topology, coords)
    keep = np.flatnonzero(structure.topology.residue_index < 7)
    write_ensemble(pred, structure.topology.subset(keep), coords[:, keep])
    _error(
        capsys,
        ["evaluate", pred, gt, "--n", "2", "-o", tmp_path / "e"],
        "3 of its 10 CA atoms have no partner in",
    )
    assert not (tmp_path / "e").exists()
    with pytest.warns(UserWarning, match="compares only 7 CA atoms in common"):
        assert (
            main(
                [
                    "evaluate",
                    str(pred),
                    str(gt),
                    "--n",
                    "2",
                    "-o",
                    str(tmp_path / "e"),
                    "--allow-missing-atoms",
                ]
            )
            == 0
        )
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["atoms_note"].startswith("ONLY 7 CA atoms")


# ----------------------------------------------------------------------------- 6. faults mid-run


def test_kill_after_an_epochs_validation_leaves_no_duplicate_row(world, tmp_path, capsys, monkeypatch):
    """A checkpoint at an epoch's last step precedes its validation; a kill between the validation row and
    the next checkpoint used to leave that row twice in metrics.jsonl after --resume."""
    # 22 training particles, batch 8: 3 steps an epoch; a checkpoint every 3 steps lands on epoch ends
    config = tmp_path / "every3.yaml"
    save_config(replace(tiny_config(), checkpoint_every=3), config)
    out = tmp_path / "run"
    real_log = MetricsLogger.log

    class Killed(BaseException):
        pass

    def log_then_die(self, record):
        real_log(self, record)
        if record["kind"] == "val" and record["step"] == 3:
            raise Killed  # like kill -9: nothing after the row is written

    monkeypatch.setattr(MetricsLogger, "log", log_then_die)
    argv = [
        "train",
        str(world["star"]),
        str(BASE_PDB),
        "-o",
        str(out),
        "--config",
        str(config),
        "--max-steps",
        "5",
        "--no-progress",
    ]
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    records = read_metrics(out / "seed_0" / "metrics.jsonl")
    val = [(r["stage"], r["epoch"]) for r in records if r["kind"] == "val"]
    assert val == [(1, 0)]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5]


def test_full_disk_during_simulate_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "sim"
    argv = ["simulate", BASE_PDB, "-n", "4", "--box", "16", "--pixel-size", "2", "-o", out, "--no-progress"]
    _error(capsys, argv, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_simulate_checks_free_space_before_rendering(tmp_path, capsys, monkeypatch):
    almost_full = shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: almost_full)
    out = tmp_path / "sim"
    _error(
        capsys,
        ["simulate", BASE_PDB, "-n", "4", "--box", "16", "--pixel-size", "2", "-o", out, "--no-progress"],
        "but only 0 MiB are free",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_mid_run_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import atomvae.simulate

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "particles.star")

    monkeypatch.setattr(atomvae.simulate.starfile, "write", no_space)
    out = tmp_path / "sim"
    _error(
        capsys,
        ["simulate", BASE_PDB, "-n", "2", "--box", "16", "--pixel-size", "2", "-o", out, "--no-progress"],
        "particles.star: No space left on device",
        code=1,
    )
    assert list(tmp_path.iterdir()) == []


def test_warnings_print_as_one_line():
    """atomvae's warnings (skipped particles, a moved particle file) read like its errors on the terminal."""
    from atomvae.cli.main import _one_line_warning

    line = _one_line_warning(
        "p.star: 1 of 24 particle(s) are not finite", UserWarning, "/x/atomvae/data/validate.py", 10
    )
    assert line == "atomvae: warning: p.star: 1 of 24 particle(s) are not finite\n"
    assert "DeprecationWarning" in _one_line_warning("old", DeprecationWarning, "/x/numpy/core.py", 3)


def test_evaluate_names_a_base_structure_that_lacks_residues(tmp_path, capsys):
    structure = read_structure(BASE_PDB)
    coords = np.stack([structure.coords + 0.1 * k for k in range(4)])
    gt, base = tmp_path / "gt.pdb", tmp_path / "base.pdb"
    write_ensemble(gt, structure.topology, coords)
    keep = np.flatnonzero(structure.topology.residue_index < 8)
    write_ensemble(base, structure.topology.subset(keep), structure.coords[keep])
    line = _error(
        capsys,
        ["evaluate", gt, gt, "--base", base, "--n", "2", "-o", tmp_path / "e"],
        "2 of its 10 CA atoms have no partner in",
    )
    label = structure.topology.residue_label(8)
    assert f"no partner in {base} (first: residue {label})" in line


def test_search_poses_never_replaces_its_input_star(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["star"].parent, data)
    before = _tree(data)
    _error(
        capsys,
        [
            "search-poses",
            data / "particles.star",
            BASE_PDB,
            "-o",
            data / "particles.star",
            "--overwrite",
            "--image-size",
            "32",
            "--no-progress",
        ],
        "is an input of this command",
    )
    assert _tree(data) == before
