"""atomvae simulate: read-back round trips, agreement with the model renderer, SNR and dose, weights, CLI."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch
from MDAnalysisTests.datafiles import PDB_closed
from MDAnalysisTests.datafiles import PDB_small as PDB_open

from atomvae.cli.main import main
from atomvae.data.metadata import read_particles
from atomvae.errors import InputError
from atomvae.physics import noise, scattering
from atomvae.physics.ctf import CTFParams
from atomvae.physics.render import render
from atomvae.simulate import SimulationConfig, frame_weights, simulate
from atomvae.structure.io import read_ensemble, write_ensemble

BOX, PIXEL = 32, 3.0


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Five backbone frames interpolating adenylate kinase open -> closed, as a multi-model PDB."""
    topology, open_ = read_ensemble(PDB_open, atoms="backbone")
    _, closed = read_ensemble(PDB_closed, atoms="backbone")
    frames = np.stack([open_[0] + t * (closed[0] - open_[0]) for t in np.linspace(0, 1, 5)])
    path = tmp_path_factory.mktemp("ens") / "ensemble.pdb"
    write_ensemble(path, topology, frames)
    return path


def _config(ensemble, output, **kw):
    base = dict(
        ensemble=ensemble,
        output=output,
        n_particles=24,
        box=BOX,
        pixel_size=PIXEL,
        gt_n=8,
        chunk=10,
        shift_spread=2.0,
        progress=False,
        oversample=1,  # the physics test below covers oversampling; 1 keeps the other tests fast
    )
    base.update(kw)
    return SimulationConfig(**base)


def test_round_trip_poses_ctf_images(ensemble, tmp_path):
    out = tmp_path / "sim"
    simulate(_config(ensemble, out, snr=0.5, seed=4))
    truth = np.load(out / "truth.npz")
    meta = read_particles(out / "particles.star")
    assert len(meta) == 24 and meta.box == BOX and meta.pixel_size == PIXEL
    np.testing.assert_allclose(meta.rotation.numpy(), truth["rotation"], atol=1e-9)
    np.testing.assert_allclose(meta.shift.numpy(), truth["shift"], atol=1e-9)
    np.testing.assert_allclose(meta.ctf.defocus_u.numpy(), truth["defocus"][:, 0], rtol=1e-11)
    np.testing.assert_allclose(meta.ctf.defocus_v.numpy(), truth["defocus"][:, 1], rtol=1e-11)
    np.testing.assert_allclose(meta.ctf.astigmatism_angle.numpy(), truth["defocus_angle"], rtol=1e-11)
    assert (meta.ctf.voltage == 300).all() and (meta.ctf.amplitude_contrast == 0.1).all()
    with mrcfile.open(out / "particles.mrcs") as mrc:
        assert mrc.data.dtype == np.float32 and mrc.voxel_size.x == pytest.approx(PIXEL)
        stored = np.array(mrc.data)
    np.testing.assert_array_equal(meta.open_stack()[:].numpy(), stored)
    # same seed, same particles (chunking does not matter)
    simulate(_config(ensemble, tmp_path / "again", snr=0.5, seed=4, chunk=7))
    with mrcfile.open(tmp_path / "again" / "particles.mrcs") as mrc:
        np.testing.assert_array_equal(np.array(mrc.data), stored)
    gt_topology, gt = read_ensemble(out / "gt_ensemble.pdb")
    frames = read_ensemble(ensemble)[1] - truth["center"]
    np.testing.assert_allclose(gt, frames[truth["gt_frame"]], atol=1e-3)  # PDB keeps 3 decimals
    assert truth["weights"].shape == (5,) and truth["frame"].shape == (24,)


def test_noise_free_images_are_the_physics(ensemble, tmp_path):
    """A noise-free particle equals phase_contrast_images of its frame, pose and CTF from truth.npz."""
    out = tmp_path / "clean"
    simulate(_config(ensemble, out, seed=1, n_particles=6, oversample=2))
    truth = np.load(out / "truth.npz")
    meta = read_particles(out / "particles.star")
    topology, frames = read_ensemble(ensemble)
    coords = torch.as_tensor(frames - truth["center"], dtype=torch.float32)[truth["frame"]]
    a, b = scattering.scattering_parameters(topology.element, dtype=torch.float32)
    expected = scattering.phase_contrast_images(
        coords,
        meta.rotation.float(),
        meta.shift.float(),
        a,
        b,
        meta.ctf.to(dtype=torch.float32),
        BOX,
        PIXEL,
        bfactor=20.0,
        oversample=2,
    )
    torch.testing.assert_close(meta.open_stack()[:], expected, rtol=1e-4, atol=1e-6)


def test_simulator_correlates_with_model_renderer():
    """Different physics, same geometry and conventions: noise-free images correlate >= 0.9."""
    topology, frames = read_ensemble(PDB_open)  # all heavy atoms
    coords = torch.as_tensor(frames[0] - frames[0].mean(0), dtype=torch.float64)
    n, box, pixel = 6, 64, 1.5
    g = torch.Generator().manual_seed(0)
    from atomvae.geometry.rotations import random_rotations

    rotation = random_rotations(n, g, dtype=torch.float64)
    shift = torch.randn(n, 2, generator=g, dtype=torch.float64) * 3
    ctf = CTFParams(
        defocus_u=torch.linspace(10000, 20000, n, dtype=torch.float64),
        defocus_v=torch.linspace(9500, 19000, n, dtype=torch.float64),
        astigmatism_angle=torch.linspace(0, 150, n, dtype=torch.float64),
    )
    a, b = scattering.scattering_parameters(topology.element)
    sim = scattering.phase_contrast_images(
        coords.expand(n, -1, -1), rotation, shift, a, b, ctf, box, pixel, bfactor=20.0, oversample=2
    )
    model = render(coords.expand(n, -1, -1), rotation, shift, ctf, box, pixel)
    for i in range(n):
        r = np.corrcoef(sim[i].flatten().numpy(), model[i].flatten().numpy())[0, 1]
        assert r >= 0.9, (i, r)
    # a wrong pose (transposed rotation) does not correlate like that: the test can fail
    wrong = render(coords.expand(n, -1, -1), rotation.transpose(1, 2), shift, ctf, box, pixel)
    r_wrong = np.corrcoef(sim[0].flatten().numpy(), wrong[0].flatten().numpy())[0, 1]
    assert r_wrong < 0.9


def test_measured_snr_matches_request(ensemble, tmp_path):
    simulate(_config(ensemble, tmp_path / "clean", seed=7, n_particles=40, chunk=40))
    simulate(_config(ensemble, tmp_path / "noisy", seed=7, n_particles=40, chunk=40, snr=0.05))
    clean = read_particles(tmp_path / "clean" / "particles.star").open_stack()[:].double()
    noisy = read_particles(tmp_path / "noisy" / "particles.star").open_stack()[:].double()
    assert noise.measured_snr(clean, noisy) == pytest.approx(0.05, rel=0.1)
    sigma = float(np.load(tmp_path / "noisy" / "truth.npz")["noise_sigma"])
    assert float((noisy - clean).std()) == pytest.approx(sigma, rel=0.05)
    # the dataset's background estimate of sigma_noise (what the model is given) finds it too
    from atomvae.data.dataset import ParticleDataset

    meta = read_particles(tmp_path / "noisy" / "particles.star")
    assert ParticleDataset(meta, normalize="none").noise_sigma == pytest.approx(sigma, rel=0.05)


def test_dose_gives_shot_noise_level(ensemble, tmp_path):
    simulate(_config(ensemble, tmp_path / "clean", seed=2, n_particles=20))
    simulate(_config(ensemble, tmp_path / "dose", seed=2, n_particles=20, dose=30.0))
    clean = read_particles(tmp_path / "clean" / "particles.star").open_stack()[:].double()
    noisy = read_particles(tmp_path / "dose" / "particles.star").open_stack()[:].double()
    residual = noisy - clean
    assert abs(float(residual.mean())) < 0.05 * noise.shot_noise_sigma(30.0, PIXEL)
    assert float(residual.std()) == pytest.approx(noise.shot_noise_sigma(30.0, PIXEL), rel=0.05)
    truth = np.load(tmp_path / "dose" / "truth.npz")
    assert float(truth["effective_snr"]) == pytest.approx(noise.measured_snr(clean, noisy), rel=0.1)


def test_refuses_to_overwrite_unless_told(ensemble, tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="output folder already exists; pass --overwrite to replace it"):
        simulate(_config(ensemble, out))
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    simulate(_config(ensemble, out, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == [
        "gt_ensemble.pdb",
        "particles.mrcs",
        "particles.star",
        "truth.npz",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_frame_weights_specs(tmp_path):
    np.testing.assert_allclose(frame_weights(None, 4), [0.25] * 4)
    # 0.5 * bump centred on frame 0 with width 1 + 0.5 * uniform, by hand
    bump = np.exp(-0.5 * np.arange(4.0) ** 2)
    expected = 0.5 * bump / bump.sum() + 0.5 * np.full(4, 0.25)
    np.testing.assert_allclose(frame_weights("mix:0.5@0:1,0.5@uniform", 4), expected)
    np.savetxt(tmp_path / "w.txt", [1, 0, 3])
    np.testing.assert_allclose(frame_weights(tmp_path / "w.txt", 3), [0.25, 0, 0.75])
    with pytest.raises(InputError, match="has 3 weights but the ensemble has 5 frames"):
        frame_weights(tmp_path / "w.txt", 5)
    with pytest.raises(InputError, match="cannot read component 'x@1'"):
        frame_weights("mix:x@1", 5)


def test_particle_frames_follow_the_weights(ensemble, tmp_path):
    simulate(_config(ensemble, tmp_path / "s", weights="mix:1@4:0.3", n_particles=30, gt_n=50))
    truth = np.load(tmp_path / "s" / "truth.npz")
    # weight of frame 4 is 1 / (1 + 2 exp(-1/(2*0.09)) + ...) ~ 0.992: nearly every draw is frame 4
    assert (truth["frame"] == 4).mean() > 0.9 and (truth["gt_frame"] == 4).mean() > 0.9


def test_cli(ensemble, tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "simulate",
        str(ensemble),
        "-n",
        "5",
        "--box",
        "32",
        "--pixel-size",
        "3",
        "-o",
        str(out),
        "--snr",
        "0.1",
        "--gt-n",
        "4",
        "--oversample",
        "1",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "wrote 5 particles" in capsys.readouterr().out
    assert main(args) == 2
    assert "output folder already exists" in capsys.readouterr().err


def test_sigterm_mid_run_leaves_no_temporary_folder(ensemble, tmp_path):
    """A scheduler's SIGTERM unwinds the simulator like an error: its temporary folder is removed, no output
    folder appears, and the exit status says it was terminated (128 + 15)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "atomvae",
        "simulate",
        str(ensemble),
        "-n",
        "200000",
        "--box",
        "32",
        "--pixel-size",
        "3",
        "-o",
        str(out),
        "--snr",
        "0.1",
        "--gt-n",
        "4",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".killed.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".killed.*")), "the simulator never started writing"
    time.sleep(0.5)  # well inside the image loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert list(tmp_path.iterdir()) == []
