"""The training loop's thread choice (train.threads.ThreadTuner), driven with made-up step times."""

from __future__ import annotations

import pytest
import torch

from atomvae.train import threads as threads_module
from atomvae.train.threads import ThreadTuner


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(threads_module, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(tuner: ThreadTuner, seconds_per_thread_count: dict[int, float], steps: int) -> list[int]:
    used = []
    for _ in range(steps):
        n = tuner.before_step()
        assert torch.get_num_threads() == n
        used.append(n)
        tuner.after_step(seconds_per_thread_count[n])
    return used


def test_probes_after_a_warm_up_step_and_keeps_the_faster(two_cpus):
    tuner = ThreadTuner(interval=5, probe_steps=2)
    # Busy machine: 1 thread is 4x faster than 2.
    used = _run(tuner, {1: 0.25, 2: 1.0}, steps=1 + 4 + 5)
    assert used == [2, 1, 2, 1, 2, 1, 1, 1, 1, 1]
    assert tuner.chosen == 1


def test_follows_the_load_as_it_changes(two_cpus):
    tuner = ThreadTuner(interval=3, probe_steps=1, max_overhead=10.0)  # the interval stays 3
    used = _run(tuner, {1: 0.25, 2: 1.0}, steps=1 + 2 + 3)
    assert used[-3:] == [1, 1, 1]
    # The other processes end: 2 threads become faster, and the next probe sees it.
    used = _run(tuner, {1: 0.3, 2: 0.2}, steps=2 + 3)
    assert used == [1, 2, 2, 2, 2]


def test_interval_grows_so_that_probes_stay_cheap(two_cpus):
    # A 14x gap: a 2-step probe on the slow setting costs 26 step-times; at most 10% of the interval -> 260.
    tuner = ThreadTuner(interval=50, probe_steps=2, max_overhead=0.1, max_interval=1000)
    _run(tuner, {1: 0.1, 2: 1.4}, steps=1 + 4)
    assert tuner.chosen == 1 and tuner.current_interval == 260
    used = _run(tuner, {1: 0.1, 2: 1.4}, steps=260 + 1)
    assert set(used[:260]) == {1} and used[260] == 1  # then the next probe starts (1 thread first)
    capped = ThreadTuner(interval=50, probe_steps=2, max_overhead=0.1, max_interval=100)
    _run(capped, {1: 0.1, 2: 1.4}, steps=5)
    assert capped.current_interval == 100
    close = ThreadTuner(interval=50, probe_steps=2)
    _run(close, {1: 0.15, 2: 0.1}, steps=5)  # 1.5x: the probe costs 1 step-time, so the base 50 stays
    assert close.chosen == 2 and close.current_interval == 50


def test_fixed_by_option_or_environment(two_cpus, monkeypatch):
    assert set(_run(ThreadTuner(fixed=1), {1: 9.0, 2: 0.1}, steps=20)) == {1}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ThreadTuner.from_environment().candidates == (1,)
    assert ThreadTuner.from_environment(2).candidates == (2,)  # the option wins over the environment
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert ThreadTuner.from_environment().candidates == (1, 2)


def test_one_cpu_never_probes(monkeypatch):
    monkeypatch.setattr(threads_module, "available_cpus", lambda: 1)
    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner()
        assert tuner.candidates == (1,) and not tuner.probing
        assert set(_run(tuner, {1: 1.0}, steps=5)) == {1}
    finally:
        torch.set_num_threads(before)


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        ThreadTuner(fixed=0)
    with pytest.raises(ValueError):
        ThreadTuner(interval=0)


def test_training_leaves_the_callers_thread_count_as_it_was(tmp_path):
    """A run that trains on 1 thread hands the caller back its own thread count (the searched route searches
    poses in the same process after each learning run)."""
    from atomvae.train.loop import train
    from helpers_train import BASE_PDB, tiny_config, write_particles

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        star = write_particles(tmp_path / "data", n=16)
        train(
            tiny_config(pose_mode="given"),
            star,
            BASE_PDB,
            tmp_path / "run",
            max_steps=1,
            show_progress=False,
            threads=1,
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
