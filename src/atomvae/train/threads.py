"""How many torch threads a CPU training run uses: measured while it runs, not guessed.

Why: on an idle 2-core machine a cpu-preset step is ~1.5x faster on 2 threads than on 1, but beside two
other busy processes a 2-thread run made 12 images/s where a 1-thread run made ~47 (BENCHMARKS.md,
issue 12): every operation's OpenMP barrier waits for a thread the scheduler has descheduled. Neither
fixed setting is safe on shared workstations and cluster nodes, and the load average lags a minute and
counts this run itself. So the run times itself: every ``interval`` steps it runs ``probe_steps`` steps on
each candidate thread count, alternating, and keeps the fastest until the next probe. A probe on the slow
setting costs ``probe_steps * (gap - 1)`` step-times, and under load the gap was 4-14x, so after a probe
the interval grows until that cost is at most ``max_overhead`` of it (at most ``max_interval`` steps, so
a change of load is still seen within minutes).
"""

from __future__ import annotations

import math
import os

import torch

THREADS_ENV = "OMP_NUM_THREADS"  # set by the user: that many threads, fixed


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a cluster job's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ThreadTuner:
    """Picks the torch thread count of each training step.

    ``fixed``: always that many threads (``--threads N``, or ``OMP_NUM_THREADS`` in the environment).
    Otherwise probes the candidates ``1`` and ``available_cpus()`` (one candidate when that is 1). Call
    ``before_step()`` before each step and ``after_step(seconds)`` with its wall time.
    """

    def __init__(
        self,
        fixed: int | None = None,
        interval: int = 50,
        probe_steps: int = 2,
        max_overhead: float = 0.1,
        max_interval: int = 1000,
    ):
        if fixed is not None and fixed < 1:
            raise ValueError(f"threads must be >= 1, got {fixed}")
        if interval < 1 or probe_steps < 1 or max_interval < interval or not max_overhead > 0:
            raise ValueError("need interval, probe_steps >= 1, max_interval >= interval, max_overhead > 0")
        cpus = available_cpus()
        self.candidates = (fixed,) if fixed is not None else tuple(sorted({1, cpus}))
        self.interval, self.probe_steps = interval, probe_steps
        self.max_overhead, self.max_interval = max_overhead, max_interval
        self.current_interval = interval
        self.chosen = self.candidates[-1]
        self._probe_times: dict[int, float] = {}
        self._probe_length = probe_steps * len(self.candidates)
        # Steps since the last probe started; the first probe follows one warm-up step (its one-off costs
        # would count against whichever candidate ran it).
        self._step = self._probe_length + interval - 1
        self._current = self.chosen

    @classmethod
    def from_environment(cls, threads: int | None = None) -> ThreadTuner:
        """``threads`` when given, else ``OMP_NUM_THREADS`` when set, else measured."""
        if threads is None and os.environ.get(THREADS_ENV, "").strip().isdigit():
            threads = max(1, int(os.environ[THREADS_ENV]))
        return cls(fixed=threads)

    @property
    def probing(self) -> bool:
        return len(self.candidates) > 1 and self._step < self._probe_length

    def before_step(self) -> int:
        """Set (and return) the thread count for the next step."""
        if self.probing:
            self._current = self.candidates[self._step % len(self.candidates)]
        else:
            self._current = self.chosen
        if torch.get_num_threads() != self._current:
            torch.set_num_threads(self._current)
        return self._current

    def after_step(self, seconds: float) -> None:
        """Record the wall time of the step just run; ends a probe by choosing its fastest candidate."""
        if self.probing:
            self._probe_times[self._current] = self._probe_times.get(self._current, 0.0) + seconds
            self._step += 1
            if not self.probing:
                fastest = min(self._probe_times.values())
                self.chosen = min(self._probe_times, key=self._probe_times.__getitem__)
                # Extra time the probe spent on slower settings, in step-times of the chosen one.
                extra = sum(t / fastest - 1.0 for t in self._probe_times.values()) * self.probe_steps
                wanted = math.ceil(extra / self.max_overhead)
                self.current_interval = min(self.max_interval, max(self.interval, wanted))
                self._probe_times = {}
            return
        self._step += 1
        if self._step >= self._probe_length + self.current_interval:
            self._step = 0
