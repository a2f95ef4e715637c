"""Training config (presets, YAML round trip, overrides) and the training loop."""

from __future__ import annotations

import pytest
import yaml

from atomvae.errors import InputError
from atomvae.train.config import PRESETS, StageConfig, TrainConfig, load_config, save_config


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
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_values_are_input_errors():
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
