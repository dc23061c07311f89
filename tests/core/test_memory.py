"""Memory queries."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from napari_unet.core import memory


def test_available_memory_is_positive_and_at_most_the_total():
    available, total = memory.available_memory(), memory.total_memory()
    assert 0 < available <= total
    assert total > 2**28  # no machine that runs torch has under 256 MB


def test_a_limit_set_bounds_the_memory_available_by_what_the_process_holds(monkeypatch):
    held = psutil.Process().memory_info().rss
    monkeypatch.setattr(memory, "_limit", None)
    memory.limit_memory(held + 2**28)
    assert memory.memory_limit() == held + 2**28
    assert 0 < memory.available_memory() <= 2**28
    memory.limit_memory(held // 2)  # less than it holds already: no room
    assert memory.available_memory() == 0
    memory.limit_memory(None)
    assert memory.available_memory() > 2**28
    with pytest.raises(ValueError, match="positive"):
        memory.limit_memory(0)


def _control_group(root, version: int, limit: str, usage: int, cache: int) -> None:
    """A control group's memory files, as the kernel shows them, under ``root``."""
    folder = root / ("job" if version == 2 else "memory/job")
    folder.mkdir(parents=True)
    names = ("memory.max", "memory.current", "inactive_file") if version == 2 else (
        "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    (folder / names[0]).write_text(limit + "\n")
    (folder / names[1]).write_text(f"{usage}\n")
    (folder / "memory.stat").write_text(f"anon 1\n{names[2]} {cache}\nactive_file 9\n")


@pytest.mark.parametrize("version", [1, 2])
def test_the_limit_of_the_process_control_group_bounds_the_memory_available(version, tmp_path, monkeypatch):
    # A cluster job's or a container's limit, not the machine's free memory, is what it may take.
    cgroup = "0::/job\n" if version == 2 else "5:cpu:/\n4:memory:/job\n"
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda path, *args, **kwargs: cgroup if str(path) == "/proc/self/cgroup"
                        else real_read(path, *args, **kwargs))
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(memory, "_limit", None)
    _control_group(tmp_path, version, str(2**30), usage=2**29, cache=2**27)
    assert memory.available_memory() == 2**30 - 2**29 + 2**27  # the cache it can give back counts
    # No limit set: the machine's free memory.
    unlimited = "max" if version == 2 else str(2**63 - 4096)
    (tmp_path / ("job/memory.max" if version == 2 else "memory/job/memory.limit_in_bytes")).write_text(unlimited)
    assert memory.available_memory() > 2**30 - 2**29 + 2**27
