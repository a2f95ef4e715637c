"""Checkpoints: atomic round trip, random states, corrupt files; data order and resume equality."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from atomvae.errors import InputError
from atomvae.train.checkpoint import (
    Position,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from atomvae.train.loop import epoch_batches, split_indices


def _tiny_model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip(tmp_path):
    model, optimizer = _tiny_model_and_optimizer()
    path = tmp_path / "ckpt" / "last.pt"
    position = Position(stage=2, epoch=3, step_in_epoch=7, global_step=41)
    save_checkpoint(path, model=model, optimizer=optimizer, position=position,
                    model_init={"box": 64, "pixel_size": 1.5, "noise_sigma": 0.7}, seed=5, metrics={"x": 1.0})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind
    payload = load_checkpoint(path)
    assert payload["position"] == position and payload["seed"] == 5
    assert payload["model_init"] == {"box": 64, "pixel_size": 1.5, "noise_sigma": 0.7}
    for key, value in model.state_dict().items():
        assert torch.equal(payload["model"][key], value)
    fresh_model, fresh_optimizer = _tiny_model_and_optimizer()
    fresh_optimizer.load_state_dict(payload["optimizer"])
    state, saved = fresh_optimizer.state_dict()["state"], optimizer.state_dict()["state"]
    for index in saved:
        assert torch.equal(state[index]["exp_avg_sq"], saved[index]["exp_avg_sq"])


def test_rng_states_restore_exactly():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.rand(10), np.random.rand(10), random.random()
    restore_rng_state(state)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


@pytest.mark.parametrize(("content", "message"), [
    (b"not a checkpoint at all", "cannot read checkpoint"),
    (None, "not an atomvae checkpoint"),
])
def test_corrupt_checkpoints_are_input_errors(tmp_path, content, message):
    path = tmp_path / "last.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_truncated_checkpoint_is_an_input_error(tmp_path):
    model, optimizer = _tiny_model_and_optimizer()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, position=Position(), model_init={}, seed=0)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_epoch_batches_partition_the_training_set_reproducibly():
    train = np.array([3, 5, 8, 9, 10, 11, 20])
    batches = epoch_batches(train, 3, seed=4, stage=1, epoch=2)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == train.tolist()
    assert batches == epoch_batches(train, 3, seed=4, stage=1, epoch=2)
    assert batches != epoch_batches(train, 3, seed=4, stage=1, epoch=3)
    assert batches != epoch_batches(train, 3, seed=5, stage=1, epoch=2)


def test_split_is_fixed_by_seed_and_disjoint():
    train, val = split_indices(100, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    again_train, again_val = split_indices(100, 0.1, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, split_indices(100, 0.1, seed=1)[1])
    assert len(split_indices(3, 0.01, seed=0)[1]) == 1
