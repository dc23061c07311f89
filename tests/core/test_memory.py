"""Memory queries."""

from __future__ import annotations

from napari_unet.core import memory


def test_available_memory_is_positive_and_at_most_the_total():
    available, total = memory.available_memory(), memory.total_memory()
    assert 0 < available <= total
    assert total > 2**28  # no machine that runs torch has under 256 MB
