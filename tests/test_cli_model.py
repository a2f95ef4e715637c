"""atomvae train / sample / interpolate / encode end to end on a tiny simulated particle set."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from atomvae.cli.main import main
from atomvae.structure.io import read_ensemble, read_structure
from atomvae.train.config import save_config
from atomvae.train.inference import latent_line, principal_axis_endpoints
from helpers_train import BASE_PDB, tiny_config, write_particles


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder trained for 10 steps (stage 1 and into stage 2) through the command line."""
    folder = tmp_path_factory.mktemp("cli")
    star = write_particles(folder / "data", n=24)
    config_path = folder / "tiny.yaml"
    save_config(tiny_config(), config_path)
    run_dir = folder / "run"
    argv = [
        "train",
        str(star),
        str(BASE_PDB),
        "-o",
        str(run_dir),
        "--config",
        str(config_path),
        "--max-steps",
        "8",
        "--seed",
        "3",
        "--no-progress",
    ]
    assert main(argv) == 0
    return folder, star, run_dir


def test_train_writes_a_self_describing_run_folder(trained_run):
    _, _, run_dir = trained_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == 3 and "atomvae_version" in config
    assert config["argv"][:2] == ["train", str(trained_run[1])] and "--max-steps" in config["argv"]
    assert config["model"]["image_size"] == 32 and config["batch_size"] == 8  # --config applied
    info = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert info["box"] == 32 and info["pixel_size"] == 1.5 and info["noise_sigma"] > 0
    assert info["n_train"] + info["n_val"] == 24
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["seed"] == 3 and not best["complete"] and np.isfinite(best["val_log_likelihood"])
    seed_dir = run_dir / "seed_3"
    assert (seed_dir / "checkpoints" / "last.pt").is_file()
    assert (seed_dir / "checkpoints" / "stage1.pt").is_file()
    assert (seed_dir / "training_curve.png").stat().st_size > 1000
    assert (run_dir / "training_curve.png").read_bytes() == (seed_dir / "training_curve.png").read_bytes()
    assert (run_dir / "metrics.jsonl").read_text() == (seed_dir / "metrics.jsonl").read_text()
    records = [yaml.safe_load(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 9))
    assert {r["stage"] for r in train_records} == {1, 2}
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 and r["lr"] > 0 for r in train_records)
    assert any(r["kind"] == "val" for r in records)


@pytest.mark.parametrize("suffix", [".pdb", ".cif", ".dcd"])
def test_sample_writes_all_atom_structures(trained_run, suffix):
    folder, _, run_dir = trained_run
    out = folder / f"ensemble{suffix}"
    assert main(["sample", str(run_dir), "-n", "5", "-o", str(out), "--seed", "1"]) == 0
    base = read_structure(BASE_PDB)
    if suffix == ".dcd":
        topology, coords = read_ensemble(out, topology_path=folder / "ensemble_topology.pdb")
    else:
        topology, coords = read_ensemble(out)
    assert coords.shape == (5, base.topology.n_atoms, 3) and np.all(np.isfinite(coords))
    assert list(topology.atom_name) == list(base.topology.atom_name)
    # Barely trained: structures stay near the base, in the base's own frame.
    assert np.abs(coords.mean(axis=1) - base.coords.mean(axis=0)).max() < 5.0


def test_sample_is_reproducible_by_seed(trained_run):
    folder, _, run_dir = trained_run
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        out = str(folder / f"{name}.pdb")
        assert main(["sample", str(run_dir), "-n", "3", "-o", out, "--seed", str(seed)]) == 0
    a, b, c = (read_ensemble(folder / f"{name}.pdb")[1] for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_encode_writes_latents(trained_run):
    folder, star, run_dir = trained_run
    out = folder / "latents.npz"
    assert main(["encode", str(run_dir), str(star), "-o", str(out)]) == 0
    with np.load(out) as latents:
        shapes = {k: latents[k].shape for k in latents.files}
        assert shapes["mu"] == shapes["sigma"] == (24, 32)
        assert shapes["rotation"] == (24, 3, 3) and shapes["shift"] == (24, 2) and shapes["euler"] == (24, 3)
        assert np.array_equal(latents["index"], np.arange(24))
        assert all(np.all(np.isfinite(latents[k])) for k in latents.files)
        assert np.all(latents["sigma"] > 0)
        rotation = latents["rotation"].astype(np.float64)
        assert np.allclose(rotation @ rotation.transpose(0, 2, 1), np.eye(3), atol=1e-5)
        from atomvae.geometry.euler import relion_to_matrix

        euler = torch.as_tensor(latents["euler"], dtype=torch.float64)
        back = relion_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2]).numpy()
        assert np.allclose(back, rotation, atol=1e-4)


def test_interpolate_automatic_and_between_points(trained_run):
    folder, _, run_dir = trained_run
    n_atoms = read_structure(BASE_PDB).topology.n_atoms
    auto = folder / "auto.pdb"
    assert main(["interpolate", str(run_dir), "-o", str(auto), "--steps", "4"]) == 0
    coords = read_ensemble(auto)[1]
    assert coords.shape == (4, n_atoms, 3) and np.all(np.isfinite(coords))
    start, end = folder / "start.npy", folder / "end.npy"
    np.save(start, np.zeros(32))
    np.save(end, np.full(32, 2.0))
    between = folder / "between.pdb"
    assert (
        main(
            [
                "interpolate",
                str(run_dir),
                "-o",
                str(between),
                "--steps",
                "3",
                "--from",
                str(start),
                "--to",
                str(end),
            ]
        )
        == 0
    )
    coords = read_ensemble(between)[1]
    midpoint = folder / "mid.pdb"
    assert (
        main(
            [
                "interpolate",
                str(run_dir),
                "-o",
                str(midpoint),
                "--steps",
                "2",
                "--from",
                ",".join(["1"] * 32),
                "--to",
                ",".join(["1"] * 32),
            ]
        )
        == 0
    )
    negative = folder / "negative.pdb"
    assert (
        main(
            [
                "interpolate",
                str(run_dir),
                "-o",
                str(negative),
                "--steps",
                "2",
                "--from",
                ",".join(["-1"] * 32),
                "--to",
                ",".join(["-1.5e-1"] * 32),
            ]
        )
        == 0
    )
    assert read_ensemble(negative)[1].shape == (2, n_atoms, 3)
    # The middle of the line from 0 to 2 is the point 1.
    assert np.allclose(coords[1], read_ensemble(midpoint)[1][0], atol=2e-3)


def test_latent_line_and_principal_axis():
    line = latent_line(torch.zeros(2), torch.tensor([2.0, 4.0]), 3)
    assert torch.allclose(line, torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]))
    rng = np.random.default_rng(0)
    t = np.linspace(-3, 3, 101)
    mu = np.stack([t, 0.5 * t, 0.01 * rng.standard_normal(101)], axis=1) + 1.0
    low, high = principal_axis_endpoints(mu, percentile=0.0)
    assert np.allclose(low, [-2.0, -0.5, 1.0], atol=0.02) and np.allclose(high, [4.0, 2.5, 1.0], atol=0.02)
    low_flipped, _ = principal_axis_endpoints(mu[::-1], percentile=0.0)  # same axis, same orientation
    assert np.allclose(low_flipped, low)
    low10, high10 = principal_axis_endpoints(mu, percentile=10.0)
    assert np.allclose(low10, [-1.4, -0.2, 1.0], atol=0.02)  # t = -2.4 and +2.4 on the line (t, t/2, 0) + 1
    assert np.allclose(high10, [3.4, 2.2, 1.0], atol=0.02)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "{folder}/nowhere", "-n", "2", "-o", "{folder}/x.pdb"], "run folder not found"),
        (["sample", "{run}", "-n", "2", "-o", "{folder}/x.xyz"], "output must end in"),
        (["interpolate", "{run}", "-o", "{folder}/x.pdb", "--from", "1,2"], "give both ends"),
        (["interpolate", "{run}", "-o", "{folder}/x.pdb", "--from", "1,2", "--to", "3,4"], "has 32 values"),
        (["encode", "{run}", "{folder}/big/particles.star", "-o", "{folder}/l.npz"], "run was trained on"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(trained_run, capsys, argv, message):
    folder, _, run_dir = trained_run
    if "big" in " ".join(argv) and not (folder / "big" / "particles.star").exists():
        write_particles(folder / "big", n=4, box=48)  # Fourier-cropped to 32 px: another pixel size
    argv = [a.format(folder=folder, run=run_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomvae: error: ") and message in err and "\n" not in err


def test_corrupt_checkpoint_is_reported(trained_run, capsys, tmp_path):
    _, _, run_dir = trained_run
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "seed_3" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(["sample", str(broken), "-n", "1", "-o", str(tmp_path / "x.pdb")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_search_poses_against_a_runs_learnt_states(trained_run, tmp_path):
    """search-poses --references-from: the base plus the run's decoded states farthest from it (and from
    each other), in the base's centred frame; the STAR file it writes trains like any posed file."""
    from atomvae.train.inference import encode_particles
    from atomvae.train.pose_search import PoseSearchConfig, run_references
    from atomvae.train.run import load_run

    _, star, run_dir = trained_run
    config = PoseSearchConfig(atoms="CA")
    references = run_references(run_dir, star, 2, config).double().numpy()
    base = read_structure(BASE_PDB)
    ca = base.topology.select("CA")
    assert references.shape == (3, len(ca), 3)
    assert np.allclose(references[0], base.coords[ca] - base.coords.mean(axis=0), atol=1e-4)
    # the first learnt reference is the decoded posterior mean farthest from the base
    run = load_run(run_dir)
    mu = torch.as_tensor(encode_particles(run, star)["mu"])
    with torch.no_grad():
        decoded = run.model.to_base_frame(run.model.decode(mu))[:, ca].double().numpy()
    decoded -= base.coords.mean(axis=0)
    rmsd_to_base = np.sqrt(((decoded - references[0]) ** 2).sum(-1).mean(-1))
    first = np.sqrt(((references[1] - references[0]) ** 2).sum(-1).mean())
    assert first == pytest.approx(rmsd_to_base.max(), abs=1e-4)

    out = tmp_path / "searched.star"
    argv = [
        "search-poses",
        str(star),
        str(BASE_PDB),
        "-o",
        str(out),
        "--references-from",
        str(run_dir),
        "--n-references",
        "2",
        "--rotations",
        "500",
        "--image-size",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 0
    found = np.load(out.with_suffix(".npz"))
    assert set(found["reference"].tolist()) <= {0, 1, 2} and len(found["score"]) == 24
    assert main(argv) == 2  # never overwrites without --overwrite
    assert main(argv + ["--overwrite"]) == 0


def test_init_starts_from_another_runs_weights(trained_run, tmp_path, capsys):
    from atomvae.train.checkpoint import load_checkpoint
    from atomvae.train.run import best_checkpoint_path

    folder, star, run_dir = trained_run
    config_path = tmp_path / "tiny.yaml"
    save_config(tiny_config(), config_path)
    out = tmp_path / "warm"
    argv = [
        "train",
        str(star),
        str(BASE_PDB),
        "-o",
        str(out),
        "--config",
        str(config_path),
        "--init",
        str(run_dir),
        "--max-steps",
        "1",
        "--seed",
        "5",
        "--no-progress",
    ]
    assert main(argv) == 0
    source = load_checkpoint(best_checkpoint_path(run_dir)[1], map_location="cpu")["model"]
    warm = load_checkpoint(out / "seed_5" / "checkpoints" / "last.pt", map_location="cpu")["model"]
    # one Adam step (lr 3e-4) away from the source's weights, where the same run without --init is not
    cold_out = tmp_path / "cold"
    cold_argv = [a if a != str(out) else str(cold_out) for a in argv]
    cold_argv = cold_argv[: cold_argv.index("--init")] + cold_argv[cold_argv.index("--init") + 2 :]
    assert main(cold_argv) == 0
    cold = load_checkpoint(cold_out / "seed_5" / "checkpoints" / "last.pt", map_location="cpu")["model"]
    for key in source:
        if key.startswith("encoder") and source[key].dim() == 2:  # linear layers (random at init)
            assert (warm[key] - source[key]).abs().max() < 2e-3
            assert (cold[key] - source[key]).abs().max() > 1e-2
    assert yaml.safe_load((out / "config.yaml").read_text())["init_from"] == str(run_dir.resolve())
    # a model of another shape is refused with one line
    other = tmp_path / "other.yaml"
    save_config(tiny_config(model=replace(tiny_config().model, decoder_width=16)), other)
    argv = [
        "train",
        str(star),
        str(BASE_PDB),
        "-o",
        str(tmp_path / "bad"),
        "--config",
        str(other),
        "--init",
        str(run_dir),
        "--max-steps",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "--init: its model does not fit" in capsys.readouterr().err


def test_train_resume_with_more_epochs_continues_a_finished_run(tmp_path, capsys):
    from atomvae.train.checkpoint import Position, load_checkpoint

    star = write_particles(tmp_path / "data", n=24)
    config_path = tmp_path / "tiny.yaml"
    save_config(tiny_config(), config_path)
    run_dir = tmp_path / "run"
    argv = ["train", str(star), str(BASE_PDB), "-o", str(run_dir), "--config", str(config_path)]
    argv.append("--no-progress")
    assert main(argv) == 0  # 2 + 2 epochs of 3 steps
    assert main([*argv[:5], "--resume", "--epochs-stage2", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ignoring" not in err
    last = load_checkpoint(run_dir / "seed_0" / "checkpoints" / "last.pt")
    assert last["position"] == Position(3, 0, 0, 15)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["stage2"]["epochs"] == 3 and config["argv"][:2] == ["train", str(star)]
    assert yaml.safe_load((run_dir / "best.yaml").read_text())["seeds"][0]["global_step"] == 15


def test_sample_from_the_aggregate_posterior(trained_run):
    folder, star, run_dir = trained_run
    from atomvae.train.inference import sample_structures
    from atomvae.train.run import load_run

    run = load_run(run_dir)
    generator = torch.Generator().manual_seed(3)
    mu = torch.randn(4, 32, generator=generator).numpy() * 3.0
    # sigma 0: every structure is the decoding of one of the particles' means, drawn uniformly.
    samples = sample_structures(run, 40, seed=2, posterior=(mu, np.zeros_like(mu)))
    with torch.no_grad():
        decoded = run.model.decode(torch.as_tensor(mu), "all")
    distance = (samples[:, None] - decoded[None]).abs().amax(dim=(-2, -1))  # (40, 4)
    assert float(distance.min(dim=1).values.max()) < 1e-5
    assert len(set(distance.argmin(dim=1).tolist())) == 4  # all four particles drawn
    # From the CLI, with an encode output.
    latents = folder / "latents_for_sampling.npz"
    assert main(["encode", str(run_dir), str(star), "-o", str(latents)]) == 0
    out = folder / "posterior.pdb"
    assert main(["sample", str(run_dir), "-n", "3", "-o", str(out), "--latents", str(latents)]) == 0
    assert read_ensemble(out)[1].shape[0] == 3
    bad = folder / "not_latents.npz"
    np.savez(bad, mu=np.zeros((3, 32)))
    assert main(["sample", str(run_dir), "-n", "3", "-o", str(folder / "x.pdb"), "--latents", str(bad)]) == 2


def test_a_search_trained_run_encodes_by_search_and_warns_on_prior_sampling(tmp_path):
    from atomvae.model.config import LossWeights

    star = write_particles(tmp_path / "data", n=24)
    config_path = tmp_path / "search.yaml"
    save_config(tiny_config(loss=LossWeights(search_candidates=4, search_width=0.2)), config_path)
    run_dir = tmp_path / "run"
    argv = ["train", str(star), str(BASE_PDB), "-o", str(run_dir), "--config", str(config_path)]
    assert main([*argv, "--max-steps", "8", "--no-progress"]) == 0
    latents = tmp_path / "latents.npz"
    assert main(["encode", str(run_dir), str(star), "-o", str(latents)]) == 0
    assert np.allclose(np.load(latents)["sigma"], 0.2)  # the search posterior's width
    with pytest.warns(UserWarning, match="--latents"):
        assert main(["sample", str(run_dir), "-n", "2", "-o", str(tmp_path / "prior.pdb")]) == 0
    assert (
        main(["sample", str(run_dir), "-n", "2", "-o", str(tmp_path / "post.pdb"), "--latents", str(latents)])
        == 0
    )
