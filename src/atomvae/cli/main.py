"""atomvae: continuous distributions of atomic protein structures from cryo-EM particles.

Each subcommand lives in its own module of ``atomvae.cli``; its docstring is its ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from atomvae import __version__
from atomvae.errors import InputError

# subcommand -> module under atomvae.cli (one thin module per subcommand)
SUBCOMMANDS = {
    "simulate": "simulate",
    "search-poses": "search_poses",
    "train": "train",
    "sample": "sample",
    "interpolate": "interpolate",
    "encode": "encode",
    "evaluate": "evaluate",
    "analyze": "analyze",
    "export": "export",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atomvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"atomvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"atomvae.cli.{module_name}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name, help=doc.splitlines()[0] if doc else name, description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _terminate(signum, frame) -> None:
    # SIGTERM (a scheduler's kill, `kill PID`) unwinds like an exception, so every atomic write removes
    # its temporary file or folder instead of leaving it behind. Training turns it into a checkpoint.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args._run(args) or 0)
    except InputError as err:
        print(f"atomvae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atomvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
