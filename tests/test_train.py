"""Training config (presets, YAML round trip, overrides) and the training loop."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import yaml

from atomvae.cli.train import add_arguments, build_config
from atomvae.errors import InputError
from atomvae.train import metrics as metrics_module
from atomvae.train.config import PRESETS, StageConfig, TrainConfig, load_config, save_config
from atomvae.train.loop import train
from atomvae.train.metrics import MetricsLogger, plot_training_curve, read_metrics
from atomvae.train.progress import TrainingProgress
from helpers_train import BASE_PDB, tiny_config, write_particles


def test_paper_preset_holds_the_paper_numbers():
    config = PRESETS["paper"]
    assert (config.stage1.epochs, config.stage1.n_pose, config.stage1.lr_decay_epochs) == (2000, 128, (1000,))
    assert (config.stage2.epochs, config.stage2.n_conf, config.stage2.n_pose) == (500, 64, 4)
    assert config.batch_size == 256 and config.n_seeds == 3
    assert config.stage1.learning_rate == config.stage2.learning_rate == 3e-4
    assert config.model.render_atoms == "heavy" and config.model.render_sigma == 1.0
    assert config.model.encoder_widths == (2048, 1024, 512, 512)
    loss = config.loss
    assert (loss.beta_conf, loss.beta_pose, loss.backbone, loss.centering) == (1.0, 0.01, 0.01, 0.1)


def test_learning_rate_halves_at_the_milestone():
    stage = StageConfig(epochs=2000, n_pose=128, learning_rate=3e-4, lr_decay_epochs=(1000,))
    assert stage.learning_rate_at(0) == stage.learning_rate_at(999) == 3e-4
    assert stage.learning_rate_at(1000) == stage.learning_rate_at(1999) == 1.5e-4


def test_decay_epochs_scale_with_the_stage_length():
    paper = StageConfig(epochs=2000, n_pose=128, lr_decay_epochs=(1000,))
    assert paper.with_epochs(300).lr_decay_epochs == (150,)  # still after half the stage
    assert paper.with_epochs(2000) == paper
    cpu = StageConfig(epochs=8, n_pose=8, lr_decay_epochs=(6,))
    short = cpu.with_epochs(2)
    assert (short.epochs, short.lr_decay_epochs) == (2, (1,))
    assert short.learning_rate_at(1) == cpu.learning_rate / 2  # a short stage still decays
    assert cpu.with_epochs(1).lr_decay_epochs == (1,)  # never from the first epoch
    assert cpu.with_epochs(16).lr_decay_epochs == (12,)


def test_cli_epochs_move_the_decay(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["p.star", "b.pdb", "-o", str(tmp_path / "run"), "--preset", "cpu", "--epochs-stage1", "4"]
    )
    assert build_config(args).stage1.lr_decay_epochs == (3,)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_yaml_round_trip(tmp_path, preset):
    path = tmp_path / "config.yaml"
    save_config(PRESETS[preset], path, argv=["train", "x.star"])
    text = yaml.safe_load(path.read_text())
    assert text["argv"] == ["train", "x.star"] and "atomvae_version" in text
    assert load_config(path) == PRESETS[preset]


def test_yaml_overrides_preset_field_by_field(tmp_path):
    path = tmp_path / "override.yaml"
    path.write_text(
        "stage1: {epochs: 3}\nmodel: {render_sigma: 2.5}\nbatch_size: 8\ndata: {noise_sigma: 1}\n"
    )
    config = load_config(path, base=PRESETS["cpu"])
    cpu = PRESETS["cpu"]
    assert config.stage1.epochs == 3 and config.stage1.n_pose == cpu.stage1.n_pose
    assert config.model.render_sigma == 2.5 and config.model.render_atoms == cpu.model.render_atoms
    assert config.batch_size == 8 and config.stage2 == cpu.stage2
    assert config.data.noise_sigma == 1.0 and isinstance(config.data.noise_sigma, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stage1: {epoch: 3}\n", "unknown config key 'stage1.epoch'"),
        ("batchsize: 3\n", "unknown config key 'batchsize'"),
        ("batch_size: many\n", "batch_size: expected an integer"),
        ("model: {render_atoms: all}\n", "render_atoms"),
        ("pose_mode: guessed\n", "pose_mode must be one of"),
        ("stage1: [1, 2]\n", "stage1: expected a mapping"),
        ("batch_size: [\n", "not valid YAML"),
        ("loss: {search_resolution: -1}\n", "search_resolution must be >= 0"),
        ("loss: {search_resolution: 6, search_binning: 2}\n", "set one"),
        (
            "model: {render_atoms: residue, learn_render_sigma: true, render_sigma_by_kind: true}\n"
            "loss: {search_resolution: 6}\n",
            "search_resolution needs one render width",
        ),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_preset_named_in_the_file_or_on_the_command_line(tmp_path):
    from atomvae.cli.main import build_parser
    from atomvae.cli.train import build_config

    path = tmp_path / "mine.yaml"
    path.write_text("preset: paper\nbatch_size: 16\n")
    parse = build_parser().parse_args
    from_file = build_config(parse(["train", "p.star", "b.pdb", "-o", "r", "--config", str(path)]))
    assert from_file == replace(PRESETS["paper"], batch_size=16)
    flag_wins = build_config(
        parse(["train", "p.star", "b.pdb", "-o", "r", "--config", str(path), "--preset", "cpu"])
    )
    assert flag_wins == replace(PRESETS["cpu"], batch_size=16)
    assert build_config(parse(["train", "p.star", "b.pdb", "-o", "r"])) == PRESETS["cpu"]
    path.write_text("preset: fast\n")
    with pytest.raises(InputError, match="unknown preset 'fast'"):
        load_config(path)


def test_invalid_values_are_input_errors():
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)


def test_command_line_overrides_config_file_overrides_preset(tmp_path):
    from atomvae.cli.main import build_parser
    from atomvae.cli.train import build_config, command_line

    path = tmp_path / "mine.yaml"
    path.write_text("batch_size: 16\nstage2: {n_conf: 5}\ndata: {val_fraction: 0.2}\n")
    args = build_parser().parse_args(
        [
            "train",
            "p.star",
            "b.pdb",
            "-o",
            "run",
            "--preset",
            "cpu",
            "--config",
            str(path),
            "--val-fraction",
            "0.3",
            "--epochs-stage1",
            "4",
            "--poses",
            "refine",
            "--pose-center",
            "1,2,3.5",
        ]
    )
    config = build_config(args)
    negative = build_parser().parse_args(
        ["train", "p.star", "b.pdb", "-o", "run", "--pose-center", "-1.5,-2,3e-1"]
    )
    assert build_config(negative).data.pose_center == (-1.5, -2.0, 0.3)
    cpu = PRESETS["cpu"]
    assert config.batch_size == 16 and config.stage2.n_conf == 5 and config.stage2.n_pose == cpu.stage2.n_pose
    assert config.data.val_fraction == 0.3 and config.stage1.epochs == 4
    assert config.stage1.n_pose == cpu.stage1.n_pose and config.model == cpu.model
    assert config.pose_mode == "refine" and config.data.pose_center == (1.0, 2.0, 3.5)
    again = build_config(build_parser().parse_args(command_line(args)))
    assert again == config


# ------------------------------------------------------------------------- loop on a tiny particle set


def _records(run_dir, seed):
    return read_metrics(run_dir / f"seed_{seed}" / "metrics.jsonl")


def test_given_poses_skip_stage_one(tmp_path):
    star = write_particles(tmp_path / "data", n=24)
    summary = train(tiny_config(pose_mode="given"), star, BASE_PDB, tmp_path / "run", max_steps=3)
    steps = [r for r in _records(tmp_path / "run", 0) if r["kind"] == "train"]
    assert [r["stage"] for r in steps] == [2, 2, 2] and all(r["kl_pose"] == 0.0 for r in steps)
    assert summary.seeds[0].position.stage == 2


def test_train_says_which_pose_route_it_takes(tmp_path, capsys):
    """Without poses in the file: one line naming the amortised route and the projection-matching one;
    with poses that --poses inferred leaves unused: one line saying so; with --poses given: nothing."""
    bare = write_particles(tmp_path / "bare", n=24, with_poses=False)
    train(tiny_config(), bare, BASE_PDB, tmp_path / "run_bare", max_steps=1, show_progress=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "has no poses" in lines[0] and "--poses inferred" in lines[0]
    assert "atomvae search-poses" in lines[0] and "searched route" in lines[0]
    posed = write_particles(tmp_path / "posed", n=24)
    train(tiny_config(), posed, BASE_PDB, tmp_path / "run_posed", max_steps=1, show_progress=False)
    assert "poses are not used" in capsys.readouterr().err
    train(
        tiny_config(pose_mode="given"),
        posed,
        BASE_PDB,
        tmp_path / "run_given",
        max_steps=1,
        show_progress=False,
    )
    assert capsys.readouterr().err == ""


def test_several_seeds_keep_the_best_by_held_out_log_likelihood(tmp_path):
    star = write_particles(tmp_path / "data", n=24)
    summary = train(tiny_config(n_seeds=2, seed=7), star, BASE_PDB, tmp_path / "run", max_steps=2)
    assert [r.seed for r in summary.seeds] == [7, 8]
    best = max(summary.seeds, key=lambda r: r.val_log_likelihood)
    assert summary.best_seed == best.seed
    recorded = yaml.safe_load((tmp_path / "run" / "best.yaml").read_text())
    assert recorded["seed"] == best.seed and recorded["checkpoint"] == f"seed_{best.seed}/checkpoints/last.pt"
    assert recorded["seeds"][7]["val_log_likelihood"] == summary.seeds[0].val_log_likelihood
    # Different seeds: different initialisations and data orders, the same validation images.
    first7 = next(r for r in _records(tmp_path / "run", 7) if r["kind"] == "train")
    first8 = next(r for r in _records(tmp_path / "run", 8) if r["kind"] == "train")
    assert first7["loss"] != first8["loss"]


def test_metrics_log_is_cut_back_to_the_resume_step_and_plotted(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log({"kind": "train", "step": step, "stage": 1 if step < 4 else 2, "loss": 10.0 - step})
        log.log({"kind": "val", "step": 5, "stage": 2, "val_log_likelihood": -3.0})
    with MetricsLogger(tmp_path, resume_step=3, tensorboard=False) as log:
        log.log({"kind": "train", "step": 4, "stage": 2, "loss": 0.5})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("train", step) for step in (1, 2, 3, 4)]
    assert records[-1]["loss"] == 0.5
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # a torn last line is skipped
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4
    plot_training_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_bar_shows_images_per_second_and_eta(capsys):
    with TrainingProgress(total_images=100, done_images=20, enabled=True) as bar:
        bar.update(40, stage=1, loss=1.5)
    err = capsys.readouterr().err
    assert "60/100" in err and "img/s" in err and "loss=1.5" in err


def test_metrics_are_mirrored_to_tensorboard_when_installed(tmp_path, monkeypatch):
    written = []

    class RecordingWriter:  # stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional)
        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append("closed")

    monkeypatch.setattr(metrics_module, "_tensorboard_writer", lambda log_dir: RecordingWriter())
    with MetricsLogger(tmp_path) as log:
        log.log({"kind": "train", "step": 3, "stage": 1, "loss": 2.5, "finite": True, "nll": float("nan")})
        log.log({"kind": "val", "step": 3, "stage": 1, "val_log_likelihood": -7.0})
    assert ("train/loss", 2.5, 3) in written and ("val/val_log_likelihood", -7.0, 3) in written
    assert not any(tag[0] == "train/nll" for tag in written if isinstance(tag, tuple))  # NaN is skipped
    assert written[-1] == "closed"


def test_refine_mode_trains_both_stages_and_encodes_refined_poses(tmp_path):
    from atomvae.data.metadata import read_particles
    from atomvae.train.inference import encode_particles
    from atomvae.train.run import load_run

    star = write_particles(tmp_path / "data", n=24)
    train(tiny_config(pose_mode="refine"), star, BASE_PDB, tmp_path / "run", max_steps=7)
    steps = [r for r in _records(tmp_path / "run", 0) if r["kind"] == "train"]
    assert [r["stage"] for r in steps] == [1] * 6 + [2] and all(r["kl_pose"] > 0 for r in steps)
    latents = encode_particles(load_run(tmp_path / "run"), star)
    given = read_particles(star).rotation.numpy()[latents["index"]]
    # A refinement starts at the given pose: the corrections of a barely trained head are small turns.
    cos_angle = (np.einsum("nij,nij->n", latents["rotation"].astype(np.float64), given) - 1.0) / 2.0
    assert np.all(np.degrees(np.arccos(np.clip(cos_angle, -1.0, 1.0))) < 30.0)
