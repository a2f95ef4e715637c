"""User-facing errors and atomic file output.

Bad input must reach the user as one line naming the file and the problem, never as a traceback
from deep inside torch; and nothing the user had may be half-overwritten. Both concerns live here
so every module uses the same mechanism.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class InputError(Exception):
    """A problem with something the user gave us (a file, an option, a value).

    ``str(err)`` reads ``"<path>: <problem>"``; the CLI prints it on one line and exits with 2.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was. The temp
    file keeps the target's suffix (or ``suffix``) so libraries that dispatch on it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=suffix if suffix is not None else "".join(path.suffixes),
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_writable_folder(path: str | os.PathLike, output: str | os.PathLike | None = None) -> None:
    """The folder ``path`` (or, if it does not exist yet, its nearest existing parent, where it will be
    created) must accept new files: probed by creating and removing a temporary file, so read-only
    folders, read-only mounts and a path through a regular file fail here, before any work."""
    path = Path(path)
    output = Path(output) if output is not None else path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(output, f"cannot create it: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".atomvae-write-test.", dir=existing)
    except OSError as err:
        raise InputError(output, f"cannot write in {existing}: {err.strerror or err}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_file(
    path: str | os.PathLike, overwrite: bool, inputs: Iterable = (), companions: Iterable = ()
) -> Path:
    """An output file the command is about to write: one line (``InputError``) before any work when it
    names a folder, one of the command's ``inputs`` (never replaced, even with ``overwrite``), an
    existing file without ``overwrite``, or a place that cannot be written. ``companions``: further
    files written beside it (e.g. a .dcd's topology PDB), checked the same way."""
    path = Path(path)
    for target in (path, *map(Path, companions)):
        if target.is_dir():
            raise InputError(target, "is a folder; give a file name for the output")
        for source in inputs:
            if source is not None and _same_file(target, Path(source)):
                raise InputError(
                    target,
                    "is an input of this command; write the output elsewhere "
                    "(it is never replaced, even with --overwrite)",
                )
        if target.exists() and not overwrite:
            raise InputError(target, "already exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, path)
    return path


def check_positive_int(option: str, value: int | None) -> None:
    """A count option (``--batch-size``, ``-n``, ...) must be at least 1."""
    if value is not None and value < 1:
        raise InputError(option, f"must be a positive integer, got {value}")
