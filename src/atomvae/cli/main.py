"""atomvae: continuous distributions of atomic protein structures from cryo-EM particles.

Each subcommand lives in its own module of ``atomvae.cli``; its docstring is its ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings

from atomvae import __version__
from atomvae.allocator import keep_freed_memory
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
            name,
            help=doc.splitlines()[0] if doc else name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _terminate(signum, frame) -> None:
    # SIGTERM (a scheduler's kill, `kill PID`) unwinds like an exception, so every atomic write removes
    # its temporary file or folder instead of leaving it behind. Training turns it into a checkpoint.
    raise SystemExit(128 + signum)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # atomvae's own warnings (skipped particles, dropped residues) read like its errors: one line, no
    # source excerpt; other libraries' warnings keep Python's format, which says where they come from.
    if issubclass(category, UserWarning) and "atomvae" in str(filename):
        return f"atomvae: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def _os_error_line(err: OSError) -> str:
    """A failed write or read (full disk, read-only folder, ...) as one line naming the file."""
    where = err.filename if err.filename is not None else None
    problem = err.strerror or str(err)
    return f"atomvae: error: {where}: {problem}" if where else f"atomvae: error: {problem}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    keep_freed_memory()  # no page faults on every step's large tensors (atomvae.allocator)
    previous_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(args._run(args) or 0)
    except InputError as err:
        print(f"atomvae: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # after the checks before work: the disk filled up, a folder became read-only
        print(_os_error_line(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("atomvae: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
