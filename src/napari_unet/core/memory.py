"""How much memory this machine has, and how much of it is free now (psutil, on every system)."""

from __future__ import annotations

import psutil

__all__ = ["available_memory", "total_memory"]


def total_memory() -> int:
    """Physical memory in bytes."""
    return int(psutil.virtual_memory().total)


def available_memory() -> int:
    """Bytes that can be allocated now without swapping (the file cache the system would give back counts)."""
    return int(psutil.virtual_memory().available)
