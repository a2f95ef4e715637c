"""The command line benchmarks record (benchmarks/command_line.py): relative to the repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# Loaded from its file: putting benchmarks/ on sys.path would let its data.py, render.py, ... shadow modules.
_spec = importlib.util.spec_from_file_location("command_line", BENCHMARKS / "command_line.py")
assert _spec is not None and _spec.loader is not None
command_line = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(command_line)
REPOSITORY, repository_command = command_line.REPOSITORY, command_line.repository_command


def test_paths_inside_the_repository_become_relative_and_others_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # wherever it was run from
    argv = [
        str(BENCHMARKS / "adk.py"),
        f"--base={REPOSITORY / 'src'}",
        "--config",
        "/elsewhere/x.yaml",
        "-n",
        "3",
    ]
    assert repository_command(argv, executable="/usr/bin/python3") == (
        "python benchmarks/adk.py --base=src --config /elsewhere/x.yaml -n 3"
    )
    assert repository_command(["run me"], executable=str(REPOSITORY / ".venv" / "bin" / "python")) == (
        ".venv/bin/python 'run me'"
    )
