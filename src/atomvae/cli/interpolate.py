"""interpolate (being built; see the issue tracker)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("atomvae interpolate: not available yet in this build")
