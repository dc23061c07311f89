"""Helpers for the core's long work, which is written as generators.

A long operation yields progress objects and returns its result, so that a caller can
show progress and stop it between steps. :func:`run_to_end` runs such a generator to the
end.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["run_to_end"]

Result = TypeVar("Result")


def run_to_end(generator: Generator[object, None, Result], on_progress: Callable | None = None) -> Result:
    """Exhaust a progress generator and return its return value.

    Args:
        generator: The long operation.
        on_progress: Called with every progress object, if given.
    """
    while True:
        try:
            progress = next(generator)
        except StopIteration as finished:
            return finished.value
        if on_progress is not None:
            on_progress(progress)

