"""The command line benchmarks record (benchmarks/command_line.py): relative to the repository."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from command_line import REPOSITORY, repository_command  # noqa: E402


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
