"""Checkpoints: atomic round trip, random states, corrupt files; data order and resume equality."""

from __future__ import annotations

import os
import random
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

from atomvae.errors import InputError
from atomvae.train import loop
from atomvae.train.checkpoint import (
    Position,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from atomvae.train.config import load_config
from atomvae.train.loop import train
from atomvae.train.metrics import read_metrics, training_seconds
from atomvae.train.seeding import epoch_batches, split_indices
from helpers_train import BASE_PDB, tiny_config, write_particles


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
    save_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        position=position,
        model_init={"box": 64, "pixel_size": 1.5, "noise_sigma": 0.7},
        seed=5,
        metrics={"x": 1.0},
    )
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint at all", "cannot read checkpoint"),
        (None, "not an atomvae checkpoint"),
    ],
)
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


# ------------------------------------------------------------------------------------ resume equality


def _final_state(run_dir):
    payload = load_checkpoint(run_dir / "seed_0" / "checkpoints" / "last.pt")
    return payload["position"], payload["model"], payload["optimizer"]


def _train_records(run_dir):
    return [
        {k: v for k, v in r.items() if k not in ("images_per_s", "train_seconds")}
        for r in read_metrics(run_dir / "seed_0" / "metrics.jsonl")
    ]


@pytest.mark.parametrize("memory", [False, True], ids=["plain", "particle_memory"])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, monkeypatch, memory):
    """24 particles, batch 8 -> 3 steps per epoch, 2 + 2 epochs = 12 steps, checkpoints every 5 steps.
    The interrupted run stops by --max-steps in stage 1 mid-epoch (step 4), then crashes in stage 2 during
    step 11 (resuming from the periodic checkpoint of step 10, mid-epoch), then runs to the end. With the
    particle memory (stage-1 pose search, stage-2 conformation search) the checkpoints carry it, so the
    resumed run searches from what the interrupted one had found."""
    star = write_particles(tmp_path / "data", n=24)
    config = tiny_config()
    if memory:
        config = replace(
            config,
            loss=replace(config.loss, hypothesis_pull=1.0, search_candidates=4, search_memory=True),
            stage1=replace(config.stage1, pose_hypotheses=4),
        )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(config, star, BASE_PDB, straight)
    first = train(config, star, BASE_PDB, interrupted, max_steps=4)
    assert not first.complete and first.seeds[0].position == Position(1, 1, 1, 4)

    real_step, calls = loop.train_step, []

    def crash_on_the_seventh_step(*args, **kwargs):  # steps 5..10 run, step 11 dies
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crash_on_the_seventh_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, star, BASE_PDB, interrupted, resume=True)
    monkeypatch.undo()
    assert _final_state(interrupted)[0] == Position(2, 1, 1, 10)
    third = train(config, star, BASE_PDB, interrupted, resume=True)
    assert third.complete and third.seeds[0].position == Position(3, 0, 0, 12)

    position_a, model_a, _ = _final_state(straight)
    position_b, model_b, _ = _final_state(interrupted)
    assert position_a == position_b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    assert _train_records(straight) == _train_records(interrupted)
    # The training clock runs on over the three processes: it never goes back along the log, and the
    # total counts the earlier legs too (the first leg's 4 steps are in it).
    clock = [r["train_seconds"] for r in read_metrics(interrupted / "seed_0" / "metrics.jsonl")]
    assert len(clock) == len(_train_records(interrupted)) and clock == sorted(clock)
    first_leg = [
        r["train_seconds"] for r in read_metrics(interrupted / "seed_0" / "metrics.jsonl") if r["step"] <= 4
    ]
    assert training_seconds(interrupted / "seed_0" / "metrics.jsonl") > max(first_leg) > 0
    # Stage-end snapshots agree too (stage 1 ended inside the crashed leg).
    stage1_a = load_checkpoint(straight / "seed_0" / "checkpoints" / "stage1.pt")["model"]
    stage1_b = load_checkpoint(interrupted / "seed_0" / "checkpoints" / "stage1.pt")["model"]
    assert all(torch.equal(stage1_a[k], stage1_b[k]) for k in stage1_a)
    saved = load_checkpoint(interrupted / "seed_0" / "checkpoints" / "last.pt").get("particle_memory")
    if memory:
        # the same memory as the uninterrupted run's; the latents of the training images were written in
        # stage 2 (the validation images are never visited: NaN, nothing found)
        uninterrupted = load_checkpoint(straight / "seed_0" / "checkpoints" / "last.pt")["particle_memory"]
        assert set(saved) == {"rotation", "shift", "latent"}
        assert saved["latent"].shape == (24, config.model.latent_conf)
        for key in saved:
            torch.testing.assert_close(saved[key], uninterrupted[key], rtol=0, atol=0, equal_nan=True)
        found = torch.isfinite(saved["latent"]).all(dim=1)
        assert int(found.sum()) >= 20 and bool((saved["latent"][found].abs().sum(dim=1) > 0).all())
    else:
        assert saved is None


def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_a_used_folder(tmp_path):
    star = write_particles(tmp_path / "data", n=24)
    config = tiny_config()
    train(config, star, BASE_PDB, tmp_path / "run", max_steps=1)
    with pytest.raises(InputError, match="already holds|not empty"):
        train(config, star, BASE_PDB, tmp_path / "run", max_steps=1)
    changed = tiny_config(batch_size=4)
    with pytest.raises(InputError, match="different configuration.*batch_size"):
        train(changed, star, BASE_PDB, tmp_path / "run", resume=True)
    with pytest.raises(InputError, match="not a run folder"):
        train(config, star, BASE_PDB, tmp_path / "nothing", resume=True)


def test_a_finished_run_continued_for_more_epochs_equals_a_longer_run(tmp_path):
    """--resume --epochs-stage2: a 2 + 2 epoch run that finished, continued to 2 + 4, holds the same
    parameters, Adam moments and log as a 2 + 4 run from the start (last.pt keeps the final stage's Adam
    moments; the data order and the noise are functions of seed, stage, epoch and step)."""
    star = write_particles(tmp_path / "data", n=24)
    config = tiny_config()
    longer = replace(config, stage2=config.stage2.extended(4))
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    train(longer, star, BASE_PDB, straight)
    assert train(config, star, BASE_PDB, extended).seeds[0].position == Position(3, 0, 0, 12)
    summary = train(longer, star, BASE_PDB, extended, resume=True)
    assert summary.complete and summary.seeds[0].position == Position(3, 0, 0, 18)
    position_a, model_a, adam_a = _final_state(straight)
    position_b, model_b, adam_b = _final_state(extended)
    assert position_a == position_b
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    moments_a, moments_b = adam_a["state"], adam_b["state"]
    assert moments_a.keys() == moments_b.keys()
    assert all(torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]) for i in moments_a)
    assert _train_records(straight) == _train_records(extended)
    assert load_config(extended / "config.yaml").stage2.epochs == 4


def test_more_epochs_refuses_to_shorten_or_to_reopen_a_finished_earlier_stage(tmp_path):
    star = write_particles(tmp_path / "data", n=24)
    config = tiny_config()
    run_dir = tmp_path / "run"
    train(config, star, BASE_PDB, run_dir, max_steps=7)  # into stage 2
    before = (run_dir / "seed_0" / "checkpoints" / "last.pt").read_bytes()
    shorter = replace(config, stage2=config.stage2.extended(1))
    with pytest.raises(InputError, match="cannot shorten stage2 from 2 to 1"):
        train(shorter, star, BASE_PDB, run_dir, resume=True)
    longer_stage1 = replace(config, stage1=config.stage1.extended(3))
    with pytest.raises(InputError, match="finished stage 1; only the final stage"):
        train(longer_stage1, star, BASE_PDB, run_dir, resume=True)
    # nothing was rewritten by the refused resumes
    assert (run_dir / "seed_0" / "checkpoints" / "last.pt").read_bytes() == before
    assert load_config(run_dir / "config.yaml") == config


def test_ctrl_c_finishes_the_step_and_writes_a_checkpoint(tmp_path, monkeypatch):
    star = write_particles(tmp_path / "data", n=24)
    real_step, calls = loop.train_step, []
    # Python's default, or SIG_IGN when the test process was started in the background (nohup, CI runners)
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupt_during_the_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupt_during_the_second_step)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 2"):
        train(tiny_config(), star, BASE_PDB, tmp_path / "run")
    assert len(calls) == 2
    assert _final_state(tmp_path / "run")[0] == Position(1, 0, 2, 2)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
