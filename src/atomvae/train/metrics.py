"""Training metrics: a JSONL log (one record per line), TensorBoard when installed, the training-curve plot.

Records carry ``kind`` ("train" per step, "val" per validation pass), ``step`` (global) and ``stage``,
and ``train_seconds``: the training loop's wall time so far, summed over the processes of a resumed run.
On resume the log is cut back to the checkpoint's step first, so a resumed run's log equals an
uninterrupted one (up to the clock).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from atomvae.errors import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter when tensorboard is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a torn last line (crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def training_seconds(path: str | Path) -> float | None:
    """The training loop's wall time of a run's metrics.jsonl, over all its processes (seconds); None for a
    log without the clock (written before it was recorded)."""
    return _latest_clock(read_metrics(path))


def _latest_clock(records: Iterable[dict[str, Any]]) -> float | None:
    seconds = [float(r["train_seconds"]) for r in records if "train_seconds" in r]
    return max(seconds) if seconds else None


def _record_key(record: dict[str, Any]) -> tuple:
    return record.get("kind"), record.get("step"), record.get("stage"), record.get("epoch")


class MetricsLogger:
    """Append-only JSONL metrics for one seed's run folder, mirrored to TensorBoard if available."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Records at the resume step that the resumed run may log again: a checkpoint written at an epoch's
        # last step precedes that epoch's validation, so after a kill between the two the validation is
        # redone on resume. Its record is already in the log (same parameters, same seeded noise): the
        # repeat is not written twice.
        self._already_logged: set[tuple] = set()
        # Training wall time of the earlier processes of a resumed run, up to the checkpoint (seconds).
        self.seconds_before = 0.0
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self._already_logged = {_record_key(r) for r in kept if r.get("step") == resume_step}
            self.seconds_before = _latest_clock(kept) or 0.0
        self._file = self.path.open("a")
        self._tb = _tensorboard_writer(self.run_dir / "tensorboard") if tensorboard else None

    def log(self, record: dict[str, Any]) -> None:
        key = _record_key(record)
        if key in self._already_logged:
            self._already_logged.discard(key)
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            kind = record.get("kind", "train")
            for name, value in record.items():
                if name not in ("step", "kind") and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{name}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullMetrics:
    """The metrics log of ranks other than 0: records are dropped (rank 0 logs global values)."""

    seconds_before = 0.0

    def log(self, record: dict[str, Any]) -> None:
        pass

    def __enter__(self) -> NullMetrics:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _series(records: Iterable[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("kind") == kind and isinstance(r.get(key), int | float) and math.isfinite(r[key]):
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def plot_training_curve(metrics_path: str | Path, out_path: str | Path) -> None:
    """Loss per step (with a running mean) and held-out log-likelihood per validation, stage 2 shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, (ax_loss, ax_val) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steps, loss = _series(records, "train", "loss")
    if steps:
        ax_loss.plot(steps, loss, lw=0.5, alpha=0.4, color="C0", label="loss per step")
        window = max(1, len(loss) // 50)
        running = [
            sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1])
            for i in range(len(loss))
        ]
        ax_loss.plot(steps, running, color="C0", label=f"running mean ({window} steps)")
    ax_loss.set_ylabel("training loss per image")
    ax_loss.legend(loc="upper right")
    val_steps, val_ll = _series(records, "val", "val_log_likelihood")
    if val_steps:
        ax_val.plot(val_steps, val_ll, "o-", color="C1")
    ax_val.set_ylabel("held-out log-likelihood per image")
    ax_val.set_xlabel("step")
    stage2_steps = [r["step"] for r in records if r.get("kind") == "train" and r.get("stage") == 2]
    if stage2_steps:
        for ax in (ax_loss, ax_val):
            ax.axvspan(min(stage2_steps), max(stage2_steps), color="0.9", zorder=0, label="stage 2")
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
