"""How much memory this machine has, and how much of it is free now.

psutil answers on Linux, macOS and Windows; without it, Linux's ``sysconf`` does (other
systems then get None, and callers fall back to conservative defaults).
"""

from __future__ import annotations

import os

__all__ = ["available_memory", "total_memory"]


def _psutil_memory():
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory()


def total_memory() -> int | None:
    """Physical memory in bytes, or None where it cannot be found."""
    memory = _psutil_memory()
    if memory is not None:
        return int(memory.total)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
        return None


def available_memory() -> int | None:
    """Bytes that can be allocated now without swapping, or None where it cannot be found.

    psutil counts the file cache the system would give back; without it, Linux's free
    pages are a lower bound.
    """
    memory = _psutil_memory()
    if memory is not None:
        return int(memory.available)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # macOS has no SC_AVPHYS_PAGES, Windows no sysconf
        return None
