"""Memory queries: psutil where installed, Linux's sysconf without it, None elsewhere."""

from __future__ import annotations

import sys

import pytest

from napari_unet.core import memory


def test_available_memory_is_positive_and_at_most_the_total():
    available, total = memory.available_memory(), memory.total_memory()
    assert total is not None and available is not None
    assert 0 < available <= total


def test_without_psutil_linux_sysconf_answers(monkeypatch):
    pytest.importorskip("psutil")
    with_psutil = memory.total_memory()
    monkeypatch.setitem(sys.modules, "psutil", None)  # "import psutil" now fails
    names = getattr(memory.os, "sysconf_names", {})  # none on Windows; macOS lacks free pages
    if "SC_PHYS_PAGES" in names:
        assert memory.total_memory() == pytest.approx(with_psutil, rel=0.05)
    else:
        assert memory.total_memory() is None
    if "SC_AVPHYS_PAGES" in names:
        assert 0 < memory.available_memory() <= memory.total_memory()
    else:
        assert memory.available_memory() is None


def test_without_psutil_or_sysconf_there_is_no_answer(monkeypatch):
    def no_such_name(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr(memory.os, "sysconf", no_such_name, raising=False)
    assert memory.total_memory() is None and memory.available_memory() is None
