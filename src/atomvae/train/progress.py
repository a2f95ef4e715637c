"""Progress bar over images processed in all stages: images/s and ETA come from tqdm's own rate estimate."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class TrainingProgress:
    """A tqdm bar counted in images; ``update`` after each step with the batch size and a short postfix."""

    def __init__(self, total_images: int, done_images: int = 0, enabled: bool | None = None, desc: str = ""):
        # enabled=None: show only on a terminal (tqdm's rule), so logs and tests stay clean.
        self._bar = tqdm(
            total=total_images,
            initial=done_images,
            unit="img",
            unit_scale=False,
            dynamic_ncols=True,
            smoothing=0.1,
            disable=(None if enabled is None else not enabled),
            file=sys.stderr,
            desc=desc,
        )

    def update(self, n_images: int, **postfix: float | int | str) -> None:
        if postfix:
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False
            )
        self._bar.update(n_images)

    def write(self, message: str) -> None:
        self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
