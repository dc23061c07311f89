"""Writing files safely: folders checked before any work, files replaced in one step so that a
reader never sees one half written."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError, WriteError, system_reason

__all__ = ["made_folder", "writable_folder", "write_errors_said_plainly", "replaced_atomically"]


def made_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created with its parents where needed.

    Raises:
        InputError: If it cannot be created: a file of that name (or above it), no
            permission, a read-only disk.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # Most often the folder, or one above it, is a file: say which.
        file = next((path for path in (folder, *folder.parents) if path.is_file()), None)
        if file is None:
            raise InputError(f"cannot create the folder {folder}: {system_reason(error)}") from None
        which = "it is" if file == folder else f"{file} is"
        raise InputError(f"cannot write into {folder}: {which} a file, not a folder") from None
    return folder


def writable_folder(folder: str | os.PathLike) -> Path:
    """:func:`made_folder`, once a file could be made in it: checked before long work writes there.

    Raises:
        InputError: If it cannot be created or written into.
    """
    folder = made_folder(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):  # nameless where the system allows: nothing is left
            pass
    except OSError as error:
        raise InputError(f"cannot write into the folder {folder}: {system_reason(error)}") from None
    return folder


@contextlib.contextmanager
def write_errors_said_plainly(path: str | os.PathLike) -> Iterator[None]:
    """Turn the system's errors in writing ``path`` (a full disk, say) into a :class:`WriteError` naming it."""
    try:
        yield
    except OSError as error:
        raise WriteError(f"cannot write {path}: {system_reason(error)}") from error


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
        WriteError: If it cannot be written (no permission, a read-only or full disk),
            named without the temporary file's name.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name to write")
    with write_errors_said_plainly(path):  # no permission, a read-only disk
        while True:
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
            try:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:  # another writer's temporary file of the same name
                continue
    try:
        with write_errors_said_plainly(path):  # the disk filled up, say: nothing was replaced
            yield temporary
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
