"""napari reader for TIFF stacks: ImageJ hyperstacks, OME-TIFF, BigTIFF and plain multi-page files.

The reader passes the file's pixel size on as the layers' ``scale`` (and ``units``), so
that training and prediction in napari see the same physical pixel size as the command
line does. Files larger than ``LAZY_BYTES`` open lazily as dask arrays with one TIFF page
per chunk, so napari reads only the planes it shows.

This module belongs to the plugin side: it may use napari's dependencies (dask, pint),
while ``napari_unet.core`` stays free of them.
"""

from __future__ import annotations

import math
import os
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .core.io import TIFF_SUFFIXES, TiffErrors, tiff_pixel_size, tiff_z_step, unreadable_tiff
from .core.memory import total_memory

__all__ = ["LAZY_BYTES", "get_reader", "read_tiffs"]

LayerData = tuple[Any, dict[str, Any], str]


def _default_lazy_bytes() -> int:
    # A quarter of memory leaves room for napari's own copies (contrast limits, thumbnails,
    # the float32 arrays that training and prediction make).
    limit = 2 * 2**30
    return min(limit, total_memory() // 4)


#: Series larger than this many bytes open lazily (a dask array) instead of being loaded.
LAZY_BYTES = _default_lazy_bytes()


def get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable[..., list[LayerData]] | None:
    """npe2 reader contribution: a reader for TIFF files, or None for anything else.

    Only the file name is checked here: napari calls this for every file it is asked to
    open, so a damaged TIFF must fail in the reader with a message, not silently fall
    through to another plugin.

    Args:
        path: One path or a list of paths.

    Returns:
        A function that takes the same argument and returns napari layer data tuples,
        or None if any path is not named like a TIFF file.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or any(Path(p).suffix.lower() not in TIFF_SUFFIXES for p in paths):
        return None
    return read_tiffs


def read_tiffs(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Read one or more TIFF files as napari image layer data.

    Args:
        path: One path or a list of paths.

    Returns:
        One ``(data, kwargs, "image")`` tuple per file; napari splits a file with a
        channel axis into one layer per channel.

    Raises:
        InputError: If a file cannot be read; the message names the file.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [_read_one(Path(p)) for p in paths]


def _read_one(path: Path) -> LayerData:
    """The layer data tuple of one file (see ``read_tiffs``)."""
    try:
        with TiffErrors(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            pixel_size, xy_unit = tiff_pixel_size(tif)
            z_size, z_unit = tiff_z_step(tif)
            if series.nbytes > LAZY_BYTES:
                data = _lazy_array(path, series)
            else:
                data = series.asarray()
    except Exception as error:  # tifffile and its codecs report damage with many types
        raise unreadable_tiff(path, error) from error

    rgb = "S" in axes and shape[axes.index("S")] in (3, 4)
    if rgb and not axes.endswith("S"):
        # Planar RGB (samples stored as separate planes): napari wants colour samples last.
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    channel_axis = axes.find("C")
    if channel_axis < 0 and not rgb:
        channel_axis = axes.find("S")  # extra samples that are not colour are channels

    # scale and units describe the axes that each layer keeps: napari removes the
    # channel axis before applying them, and the colour axis is not a spatial axis.
    scale: list[float] = []
    units: list[str] = []
    for index, axis in enumerate(axes):
        if index == channel_axis or (rgb and axis == "S"):
            continue
        if axis in "YX" and pixel_size is not None:
            scale.append(float(pixel_size["YX".index(axis)]))
            units.append(_pint_unit(xy_unit))
        elif axis == "Z" and z_size is not None:
            scale.append(z_size)
            units.append(_pint_unit(z_unit))
        else:
            scale.append(1.0)
            units.append("pixel")

    # rgb is always given so that napari does not guess it from a last axis of 3 or 4.
    kwargs: dict[str, Any] = {"name": path.stem, "scale": tuple(scale), "rgb": rgb}
    if any(unit != "pixel" for unit in units):
        kwargs["units"] = tuple(units)
    if channel_axis >= 0:
        kwargs["channel_axis"] = channel_axis
    return data, kwargs, "image"


def _pint_unit(name: str) -> str:
    """The pint name of a unit of length, or "pixel" (napari's default) if it is not one."""
    if not name:
        return "pixel"
    import pint  # a napari dependency, so available wherever this reader runs

    registry = pint.get_application_registry()
    try:
        unit = registry.parse_units(name)
    except Exception:  # pint's parser raises unrelated types for free text (TokenError, ...)
        return "pixel"
    return str(unit) if unit.dimensionality == registry.meter.dimensionality else "pixel"


def _page_axes(shape: tuple[int, ...], pages: int) -> int:
    """How many leading axes of a series index its pages (the rest is one page)."""
    for count in range(len(shape) + 1):
        if math.prod(shape[:count]) == pages:
            return count
    raise ValueError(f"its {pages} pages do not tile an array of shape {shape}")


def _lazy_array(path: Path, series: tifffile.TiffPageSeries):
    """A dask array of the series whose chunks are single pages, read when needed."""
    import dask.array as da

    leading = _page_axes(series.shape, len(series))
    chunks = tuple((1,) * length for length in series.shape[:leading]) + tuple(
        (length,) for length in series.shape[leading:]
    )
    if series.dataoffset is not None:
        # Uncompressed and contiguous (including ImageJ hyperstacks over 4 GiB, which keep
        # only their first page's header): the operating system pages the data in.
        return da.from_array(tifffile.memmap(path, series=0, mode="r"), chunks=chunks)
    reader = _PageReader(path, series.shape, leading)
    # An explicit name spares dask from hashing the reader (and its open file).
    return da.map_blocks(
        reader,
        chunks=chunks,
        dtype=series.dtype,
        meta=np.empty((0,) * len(series.shape), series.dtype),
        name=f"napari-unet-tiff-{uuid.uuid4().hex}",
    )


class _PageReader:
    """Reads one page of a TIFF file's first series per dask block.

    The file stays open while the dask array (which holds this object) lives: reopening
    it per block would parse its headers and metadata again for every page.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], leading: int):
        self._path = path
        self._leading_shape = shape[:leading]
        self._page_shape = shape[leading:]
        self._tif = tifffile.TiffFile(path)
        # dask reads blocks from several threads, which must not share a file position.
        self._tif.filehandle.set_lock(True)
        self._series = self._tif.series[0]
        weakref.finalize(self, self._tif.close)

    def __call__(self, block_id: tuple[int, ...]) -> np.ndarray:
        index = int(np.ravel_multi_index(block_id[: len(self._leading_shape)], self._leading_shape))
        try:
            # Finding a page reads its header from the file; decoding runs unlocked.
            with self._tif.filehandle.lock:
                page = self._series[index]
            if page is None:  # a page that the metadata lists but the file lacks
                data = np.zeros(self._page_shape, self._series.dtype)
            else:
                data = page.asarray()
        except Exception as error:  # tifffile and its codecs report damage with many types
            raise unreadable_tiff(self._path, error, str(index)) from error  # napari counts from 0
        return data.reshape((1,) * len(self._leading_shape) + self._page_shape)
