"""The command line a benchmark records (printed, and in its JSON results), relative to the repository.

``python benchmarks/x.py ...`` run from the repository root reads the same on every checkout: absolute
paths inside the repository become relative to its root, and an interpreter outside it is written
``python`` (one inside it, e.g. ``.venv/bin/python``, keeps its relative path). Paths outside the
repository stay as given: they are inputs a reader would have to supply.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def _relative(word: str, cwd: Path) -> str:
    """``word`` (a path, an option or ``--option=path``) with a path inside the repository made relative."""
    if word.startswith("-") and "=" in word:
        option, value = word.split("=", 1)
        return f"{option}={_relative(value, cwd)}"
    if word.startswith("-") or not word:
        return word
    # Without resolving links: .venv/bin/python links to an interpreter outside the repository.
    path = Path(os.path.normpath(cwd / word))
    if not (Path(word).is_absolute() or path.exists()):
        return word  # an output still to be written, or not a path: relative to where it was run
    try:
        return path.relative_to(REPOSITORY).as_posix() or "."
    except ValueError:
        return word


def repository_command(argv: Sequence[str] | None = None, executable: str | None = None) -> str:
    """The shell-quoted command line of this process (default: ``sys.executable`` and ``sys.argv``)."""
    cwd = Path.cwd()
    interpreter = _relative(executable or sys.executable, cwd)
    if Path(interpreter).is_absolute():
        interpreter = "python"
    words = list(sys.argv if argv is None else argv)
    return shlex.join([interpreter, *(_relative(w, cwd) for w in words)])
