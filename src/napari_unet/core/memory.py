"""How much memory this machine has, and how much of it this process may take now.

Free memory is what the system reports (psutil, on every system), bounded by the limit of
the process's control group where one is set (a container, a cluster job: the machine's
free memory is not theirs), and by a limit set with :func:`limit_memory`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import psutil

__all__ = ["available_memory", "give_back_freed_memory", "limit_memory", "memory_limit", "total_memory"]

_limit: int | None = None

CGROUP_ROOT = Path("/sys/fs/cgroup")


def total_memory() -> int:
    """Physical memory in bytes."""
    return int(psutil.virtual_memory().total)


def limit_memory(limit: int | None) -> None:
    """Keep this process's planning under ``limit`` bytes in all (None: no limit of its own).

    Tiles, chunks and blocks are then sized for what the process may still take: the
    limit less what it holds already.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"a memory limit is a positive number of bytes, not {limit}")
    global _limit
    _limit = limit


def give_back_freed_memory() -> None:
    """Hand the memory this process freed back to the system, where the C library keeps it (glibc).

    glibc keeps freed blocks for reuse, and after large arrays are freed it serves
    arrays of up to 32 MB from that kept memory rather than mapping them anew: labelling
    one chunk of a 40 x 2048 x 2048 volume left the process 0.5 GB larger than before it,
    and the next chunk's labelling was planned without that memory. Elsewhere this does
    nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def memory_limit() -> int | None:
    """The limit :func:`limit_memory` set, in bytes, if any."""
    return _limit


def available_memory() -> int:
    """Bytes that can be allocated now without swapping or passing a limit.

    The file cache the system would give back counts as free.
    """
    free = int(psutil.virtual_memory().available)
    group = _control_group_room()
    if group is not None:
        free = min(free, group)
    if _limit is not None:
        free = min(free, max(_limit - psutil.Process().memory_info().rss, 0))
    return free


def _control_group_room() -> int | None:
    """Bytes left under the memory limit of this process's control group (v2 or v1), if it has one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            files = ("memory.max", "memory.current", "inactive_file")
            folders = [CGROUP_ROOT / path.lstrip("/"), CGROUP_ROOT]
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
            folders = [CGROUP_ROOT / "memory" / path.lstrip("/"), CGROUP_ROOT / "memory"]
        else:
            continue
        for folder in folders:
            room = _room_in(folder, *files)
            if room is not None:
                return room
    return None


def _room_in(folder: Path, limit_file: str, usage_file: str, reclaimable: str) -> int | None:
    """The room under a control group's limit; None if it sets none (or cannot be read)."""
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
        stat = (folder / "memory.stat").read_text()
    except (OSError, ValueError):
        return None
    # "max" (v2) or a page-rounded 2**63 (v1) mean no limit.
    if limit == "max" or int(limit) >= 2**60:
        return None
    # The usage counts the group's file cache, which the kernel gives back before it fails.
    cache = next((int(line.split()[1]) for line in stat.splitlines() if line.split()[:1] == [reclaimable]), 0)
    return max(int(limit) - usage + cache, 0)
