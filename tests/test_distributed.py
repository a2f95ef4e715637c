"""Data-parallel training (torchrun / DistributedDataParallel, gloo on the CPU): two processes compute what
one computes, and a two-process checkpoint resumes in one process.

The two processes are started as torchrun starts them (environment variables RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) with torch.multiprocessing, and join the group inside ``train`` itself.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from atomvae.model.batch_noise import BatchNoiseRows
from atomvae.train import distributed
from atomvae.train.checkpoint import load_checkpoint
from atomvae.train.loop import train
from atomvae.train.run import read_run_info
from atomvae.train.step import rank_loss_weights
from helpers_train import BASE_PDB, tiny_config, write_particles

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_worker(rank: int, world_size: int, port: int, function, args: tuple) -> None:
    """One process as torchrun would start it: its environment, then ``function(*args)``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    function(*args)


def run_processes(world_size: int, function, *args) -> None:
    mp.spawn(_torchrun_worker, args=(world_size, _free_port(), function, args), nprocs=world_size, join=True)


def _config():
    # Stage 1 of one epoch (6 steps of 8 images, the last one of 3: an uneven split over 2 ranks), then
    # stage 2; the heavy-atom clash term on the first 4 images of each batch.
    config = tiny_config()
    return replace(
        config,
        stage1=replace(config.stage1, epochs=1),
        stage2=replace(config.stage2, epochs=1),
        loss=replace(config.loss, heavy_clash=0.5, heavy_clash_images=4),
    )


def _memory_config():
    # The particle memory: stage 1's pose search with the hypothesis pull, stage 2's conformation search.
    config = _config()
    return replace(
        config,
        loss=replace(config.loss, hypothesis_pull=1.0, search_candidates=4, search_memory=True),
        stage1=replace(config.stage1, pose_hypotheses=4),
    )


def _train(star, run_dir, max_steps, resume=False, memory=False):
    config = _memory_config() if memory else _config()
    train(config, star, BASE_PDB, run_dir, max_steps=max_steps, resume=resume, show_progress=False)


def _state(run_dir):
    return load_checkpoint(run_dir / "seed_0" / "checkpoints" / "last.pt")


def _losses(run_dir):
    with open(run_dir / "seed_0" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return (
        {r["step"]: r["loss"] for r in records if r["kind"] == "train"},
        [r["val_log_likelihood"] for r in records if r["kind"] == "val"],
    )


def test_shards_interleave_and_weight_the_global_batch():
    parts = [distributed.shard(range(10, 15), rank_=r, world_size_=2) for r in range(2)]
    assert parts[0].indices == [10, 12, 14] and parts[1].indices == [11, 13]
    assert [p.rows.tolist() for p in parts] == [[0, 2, 4], [1, 3]]
    assert sum(p.weight for p in parts) == pytest.approx(2.0)  # weights average to 1 over the ranks
    empty = distributed.shard([7], rank_=1, world_size_=2)  # a batch smaller than the group
    assert empty.indices == [7] and empty.weight == 0 and empty.n_images == 0


def test_batch_noise_rows_are_the_single_process_draws():
    whole = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(5))
    rows = torch.tensor([1, 3, 5])
    part = BatchNoiseRows(torch.Generator().manual_seed(5), 6, rows).standard_normal(
        (3, 3, 2), "cpu", torch.float32
    )
    torch.testing.assert_close(part, whole[rows])


def test_two_processes_train_as_one_and_resume_in_one(tmp_path):
    star = write_particles(tmp_path / "data", n=48)
    one, two = tmp_path / "one", tmp_path / "two"
    _train(star, one, max_steps=8)
    run_processes(2, _train, star, two, 8)

    # Past the end of stage 1 (6 steps, one validation) into stage 2: the same losses step by step and the
    # same parameters, up to float rounding (the gradient is summed in another order).
    losses_one, val_one = _losses(one)
    losses_two, val_two = _losses(two)
    assert sorted(losses_two) == list(range(1, 9))
    np.testing.assert_allclose(
        [losses_two[s] for s in range(1, 9)], [losses_one[s] for s in range(1, 9)], rtol=1e-5
    )
    np.testing.assert_allclose(val_two, val_one, rtol=1e-5)
    state_one, state_two = _state(one), _state(two)
    assert state_two["position"] == state_one["position"]
    for name, value in state_one["model"].items():
        torch.testing.assert_close(state_two["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert read_run_info(two)["world_size"] == 2 and read_run_info(one)["world_size"] == 1

    # The two-process checkpoint continues in one process as the one-process run does.
    _train(star, one, max_steps=11, resume=True)
    _train(star, two, max_steps=11, resume=True)
    assert read_run_info(two)["world_size"] == 1
    losses_one, _ = _losses(one)
    losses_two, _ = _losses(two)
    np.testing.assert_allclose(
        [losses_two[s] for s in range(1, 12)], [losses_one[s] for s in range(1, 12)], rtol=1e-5
    )
    for name, value in _state(one)["model"].items():
        torch.testing.assert_close(_state(two)["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_two_processes_keep_the_particle_memory_of_one(tmp_path):
    """Each rank sends what its share found, so both ranks hold the whole memory, the same as one process's:
    stage 1 (6 steps, the last batch split unevenly) and two stage-2 steps."""
    star = write_particles(tmp_path / "data", n=48)
    one, two = tmp_path / "one", tmp_path / "two"
    _train(star, one, 8, False, True)
    run_processes(2, _train, star, two, 8, False, True)
    losses_one, _ = _losses(one)
    losses_two, _ = _losses(two)
    np.testing.assert_allclose(
        [losses_two[s] for s in range(1, 9)], [losses_one[s] for s in range(1, 9)], rtol=1e-5
    )
    memory_one, memory_two = _state(one)["particle_memory"], _state(two)["particle_memory"]
    assert set(memory_one) == {"rotation", "shift", "latent"}
    for name, value in memory_one.items():
        torch.testing.assert_close(memory_two[name], value, rtol=1e-4, atol=1e-4, equal_nan=True, msg=name)
    assert int(torch.isfinite(memory_one["latent"]).all(dim=1).sum()) >= 16  # two stage-2 batches of 8


def test_weighted_shard_gradients_sum_to_the_global_batch_gradient(tmp_path):
    """What DDP averages, computed in one process: the ranks' weighted shard losses (interleaved shards,
    their rows of the batch's noise, the heavy-atom clash term on the first n / W images of each) have the
    gradient of the global batch's loss, also for an uneven split and with clashes present."""
    from atomvae.data.dataset import ParticleDataset
    from atomvae.data.metadata import read_particles
    from atomvae.structure.io import read_structure
    from atomvae.train.particles import ParticleSource
    from atomvae.train.run import build_model

    config = tiny_config()
    source = ParticleSource(tmp_path, ParticleDataset(read_particles(write_particles(tmp_path, n=7))))
    structure = read_structure(BASE_PDB)
    torch.manual_seed(0)
    model = build_model(
        config,
        structure.topology,
        structure.coords,
        {"box": source.box, "pixel_size": source.pixel_size, "noise_sigma": 1.0},
    )
    with torch.no_grad():  # a decoder far from the base, so that atoms clash
        for parameter in model.decoder.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape))
    weights = replace(config.loss, heavy_clash=1.0, heavy_clash_images=4)
    batch_indices = list(range(7))  # 7 images over 2 ranks: 4 + 3

    def gradients(indices, generator, loss_weights, scale):
        batch = source.load(indices, torch.device("cpu"))
        model.zero_grad()
        out = model.loss(
            batch["image"],
            batch["ctf"],
            stage=2,
            n_conf=2,
            n_pose=2,
            weights=loss_weights,
            generator=generator,
        )
        (out.total * scale).backward()
        return out, [p.grad.clone() for p in model.parameters()]

    out, whole = gradients(batch_indices, torch.Generator().manual_seed(3), weights, 1.0)
    assert out.terms["heavy_clash"] > 0
    summed = [torch.zeros_like(g) for g in whole]
    for rank in range(2):
        part = distributed.shard(batch_indices, rank_=rank, world_size_=2)
        noise = BatchNoiseRows(torch.Generator().manual_seed(3), part.global_size, part.rows)
        _, grads = gradients(part.indices, noise, rank_loss_weights(weights, part), part.weight / 2)
        summed = [s + g for s, g in zip(summed, grads, strict=True)]
    for s, w in zip(summed, whole, strict=True):
        # float32 sums in another order: agreement to ~1e-5 of the tensor's largest gradient
        torch.testing.assert_close(s, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()) + 1e-8)


def _encode_and_search(run_dir, star, out_dir, search_config):
    from atomvae.train.inference import encode_to_file
    from atomvae.train.pose_search import search_poses_to_file

    encode_to_file(run_dir, star, out_dir / "latents.npz")
    search_poses_to_file(
        star, BASE_PDB, out_dir / "poses.star", config=search_config, image_size=32, progress=False
    )


def test_encode_and_search_poses_split_particles_over_processes(tmp_path):
    """Each of 2 processes handles particles rank, rank + 2, ...; rank 0 writes the same files as one
    process (7 particles: an uneven split)."""
    from atomvae.train.pose_search import PoseSearchConfig

    search = PoseSearchConfig(n_rotations=200, search_box=16, top_k=2, local_rounds=1, batch_size=3)
    star = write_particles(tmp_path / "data", n=7)
    run_dir = tmp_path / "run"
    train(
        replace(tiny_config(), data=replace(tiny_config().data, n_calibration_images=4)),
        star,
        BASE_PDB,
        run_dir,
        max_steps=1,
        show_progress=False,
    )
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _encode_and_search(run_dir, star, one, search)
    run_processes(2, _encode_and_search, run_dir, star, two, search)

    latents_one, latents_two = np.load(one / "latents.npz"), np.load(two / "latents.npz")
    assert sorted(latents_two.files) == sorted(latents_one.files)
    np.testing.assert_array_equal(latents_two["index"], np.arange(7))
    for key in latents_one.files:
        np.testing.assert_allclose(latents_two[key], latents_one[key], rtol=1e-5, atol=1e-5, err_msg=key)
    poses_one, poses_two = np.load(one / "poses.npz"), np.load(two / "poses.npz")
    for key in ("rotation", "shift", "score", "reference", "index"):
        np.testing.assert_allclose(poses_two[key], poses_one[key], rtol=1e-4, atol=1e-4, err_msg=key)
    from atomvae.data.metadata import read_particles

    star_one, star_two = read_particles(one / "poses.star"), read_particles(two / "poses.star")
    np.testing.assert_array_equal(star_two.image_index, star_one.image_index)
    torch.testing.assert_close(star_two.rotation, star_one.rotation, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(star_two.shift, star_one.shift, rtol=1e-4, atol=1e-4)
