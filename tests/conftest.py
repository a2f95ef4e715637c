"""Test-session settings."""

from __future__ import annotations

import os

# Training runs in the tests compare results across runs (resume, one process against two) to float
# rounding, which depends on the thread count: a fixed count keeps it the same. Without OMP_NUM_THREADS a
# one-process CPU run would choose its count while it trains (atomvae.train.threads, tested on its own).
os.environ.setdefault("OMP_NUM_THREADS", "1")
