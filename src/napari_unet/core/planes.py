"""Stacks of one-channel planes read when indexed, for stacks larger than memory.

Prediction reads a stack as ``(planes, channels, height, width)``. A :class:`LazyPlanes`
gives it that layout without reading anything: each plane is read when indexed, so a
z-stack labelled in 3D or predicted plane by plane holds one plane's pixels at a time
(and the block that measuring the object diameter reads). :class:`ArrayPlanes` reads
the planes of a lazy array (Dask, Zarr, a memory map: what napari holds for a large file
opened lazily); :class:`~napari_unet.core.tiffstream.TiffPlanes` the pages of a TIFF file.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .normalize import is_colour

__all__ = ["ArrayPlanes", "LazyPlanes"]


class LazyPlanes:
    """A stack of one-channel planes as the ``(planes, 1, height, width)`` array prediction reads, read when indexed.

    Indexing takes a plane (an integer), a run of planes (a slice: another stack of the
    same kind, still unread), or a block of them (a tuple that starts with a slice of
    planes: read). Reads may come from several threads (a chunk's labels are trimmed in
    one while the network reads the next plane in another): they take turns.

    Args:
        count: Planes given.
        plane_shape: ``(height, width)``.
        dtype: The planes' type.
        stack_shape: The leading axes of the planes given (Z, or T and Z), as
            :func:`~napari_unet.core.normalize.as_planes` gives them.
        lock: Shared by the runs of one source.
    """

    def __init__(self, count: int, plane_shape: tuple[int, int], dtype, stack_shape: tuple[int, ...],
                 lock: threading.Lock | None = None):
        self.dtype = np.dtype(dtype)
        self.shape: tuple[int, ...] = (count, 1, *plane_shape)
        self.ndim = 4
        self.stack_shape = stack_shape
        self._lock = lock or threading.Lock()

    def _read(self, index: int) -> np.ndarray:
        """Plane ``index`` of those given, ``(height, width)``."""
        raise NotImplementedError

    def _run(self, start: int, count: int) -> LazyPlanes:
        """The ``count`` planes given from ``start`` on, unread."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"plane {key} of {len(self)}")
            with self._lock:
                return np.asarray(self._read(index))[np.newaxis]
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("planes are indexed by a plane, a run of planes or a block of a run of planes")
        start, stop, _ = key.indices(len(self))
        run = self._run(start, max(stop - start, 0))
        if not rest:
            return run
        channels, pixels = rest[0], rest[1:]
        return np.stack([plane[(slice(None), *pixels)] for plane in run])[:, channels]  # each cropped as read


class ArrayPlanes(LazyPlanes):
    """The planes of a lazy array (Dask, Zarr, a memory map) of one-channel planes, read when indexed.

    Args:
        array: ``(..., height, width)``, its leading axes the stack's.
        first, count: The planes (of the leading axes flattened) given (None: all from ``first``).
    """

    def __init__(self, array, first: int = 0, count: int | None = None, *, _lock=None):
        self._array, self._first = array, first
        leading = tuple(array.shape[:-2])
        planes = math.prod(leading)
        count = planes - first if count is None else count
        super().__init__(count, tuple(array.shape[-2:]), array.dtype, leading if count == planes else (count,),
                         _lock)

    @staticmethod
    def reads(image, in_channels: int, channel_axis: int | None = None) -> bool:
        """Whether ``image`` is a lazy stack of one-channel planes of numbers that a one-channel model reads as such."""
        shape = getattr(image, "shape", None)
        try:
            kind = np.dtype(getattr(image, "dtype", object)).kind
        except TypeError:  # not numpy's types (a torch tensor): read whole, as numpy reads it
            kind = "O"
        return (not isinstance(image, (np.ndarray, LazyPlanes)) and shape is not None and len(shape) >= 3
                and hasattr(image, "__getitem__") and kind in "iuf" and in_channels == 1 and channel_axis is None
                and not is_colour(image, in_channels))

    def _read(self, index: int) -> np.ndarray:
        position = np.unravel_index(self._first + index, self._array.shape[:-2])
        return np.asarray(self._array[tuple(int(i) for i in position)])

    def _run(self, start: int, count: int) -> ArrayPlanes:
        return ArrayPlanes(self._array, self._first + start, count, _lock=self._lock)
