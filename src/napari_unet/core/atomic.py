"""Replacing a file in one step, so that a reader never sees it half written."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

__all__ = ["replaced_atomically"]


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary file beside ``path`` to write; it becomes ``path`` when the block ends.

    The temporary file is renamed over ``path`` in one step when the block ends without
    an error, and deleted otherwise, so ``path`` is always either the old file or the
    complete new one. It is created as any new file is, readable by others as the
    umask allows (``tempfile.mkstemp`` would make a shared model or result file
    readable by its owner only).

    Args:
        path: The file to write; its folder must exist.

    Raises:
        InputError: If ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name to write")
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # another writer's temporary file of the same name
            continue
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
