"""TIFF stacks read and written one page at a time, so that their size does not matter.

:class:`TiffPageReader` reads the pages of a file's first series when asked, never the
whole series; :class:`TiffPlanes` gives a stack of one-channel pages to prediction as
the planes it reads, one at a time. :class:`PageTiffWriter` writes a result stack page
by page, compressed, with the input's axes, page order, resolution tags and ImageJ or
OME metadata, under a temporary name that it renames to the final one only when every
page is written: an interrupted run leaves a hidden ``.NAME.partial`` file, never a
truncated ``NAME.tif``.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .atomic import made_folder, write_errors_said_plainly
from .errors import InputError
from .io import TiffErrors, tiff_info, unreadable_tiff
from .planes import LazyPlanes

__all__ = ["TiffMetadata", "TiffPageReader", "TiffPlanes", "PageTiffWriter", "partial_path", "written_settings"]

#: A private TIFF tag holding how a file was made (readers that do not know it pass it by).
SETTINGS_TAG = 65000

#: ImageJ description entries that describe the pixels and still hold for a result.
_IMAGEJ_KEYS = ("unit", "spacing", "finterval", "fps", "xorigin", "yorigin", "zorigin", "loop")
#: OME Pixels attributes that describe the geometry and still hold for a result.
_OME_KEYS = tuple(f"PhysicalSize{axis}{unit}" for axis in "XYZ" for unit in ("", "Unit")) + (
    "TimeIncrement", "TimeIncrementUnit",
)
#: Above this many bytes of raw pixels a result is written as BigTIFF (classic TIFF ends at 4 GiB).
BIGTIFF_BYTES = 2**31


@dataclass(frozen=True)
class TiffMetadata:
    """What a result file keeps of its input's metadata.

    Attributes:
        kind: "imagej", "ome" or "plain" (tifffile's JSON description with the axes).
        resolution: The XResolution and YResolution tags, as stored (pixels per unit).
        resolution_unit: The ResolutionUnit tag.
        imagej: ImageJ description entries (unit, spacing, frame interval, origins).
        ome: OME Pixels attributes (physical sizes and their units, time increment).
    """

    kind: str = "plain"
    resolution: tuple | None = None
    resolution_unit: int | None = None
    imagej: dict = field(default_factory=dict)
    ome: dict = field(default_factory=dict)


def partial_path(path: str | os.PathLike) -> Path:
    """Where a result is written until it is complete: a hidden file that no TIFF search finds."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


class TiffPageReader:
    """The pages of a TIFF file's first series, read one at a time.

    Uncompressed contiguous data (including ImageJ hyperstacks over 4 GiB, whose later
    pages have no headers) are read by offset; other files page by page through their
    headers. Reading a page reads that page only: memory does not grow with the stack.

    Args:
        path: The TIFF file.

    Raises:
        InputError: If the file is missing or not a readable TIFF.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"file not found: {self.path}")
        self._tif = None
        try:
            with TiffErrors():  # segmenting a series tifffile shortened would silently lose planes
                self._tif = tifffile.TiffFile(self.path)
                series = self._tif.series[0]
            page = series.keyframe
            self.axes: str = series.axes
            self.shape: tuple[int, ...] = tuple(series.shape)
            self.dtype = np.dtype(series.dtype)
            self.page_shape: tuple[int, ...] = tuple(page.shape)
            self.page_axes: str = page.axes
            self.info = tiff_info(self._tif, series.axes)
            self.metadata = _metadata(self._tif, page)
        except Exception as error:  # tifffile and its codecs report damage with many types
            self.close()
            raise unreadable_tiff(self.path, error) from error
        leading = len(self.shape) - len(self.page_shape)
        if leading < 0 or self.shape[leading:] != self.page_shape:
            self.close()
            raise InputError(f"{self.path}: its pages ({self.page_shape}) do not tile its image ({self.shape})")
        self.leading_axes = self.axes[:leading]
        self.leading_shape = self.shape[:leading]
        self.pages = math.prod(self.leading_shape)
        self._series = series
        self._page_bytes = math.prod(self.page_shape) * self.dtype.itemsize
        self._dataoffset = series.dataoffset

    def read_page(self, index: int) -> np.ndarray:
        """Page ``index`` (0-based, in file order) as an array of ``page_shape``.

        Raises:
            InputError: If the page cannot be read (a truncated or damaged file).
        """
        try:
            if self._dataoffset is not None:
                handle = self._tif.filehandle
                handle.seek(self._dataoffset + index * self._page_bytes)
                data = handle.read_array(self.dtype.newbyteorder(self._tif.byteorder), math.prod(self.page_shape))
                return data.reshape(self.page_shape).astype(self.dtype.newbyteorder("="), copy=False)
            page = self._series[index]
            if page is None:
                raise ValueError("the page is missing")
            return page.asarray().reshape(self.page_shape)
        except Exception as error:  # tifffile and its codecs report damage with many types
            raise unreadable_tiff(self.path, error, f"{index + 1} of {self.pages}") from error

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> TiffPageReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class TiffPlanes(LazyPlanes):
    """A TIFF stack of one-channel pages as the ``(planes, 1, height, width)`` array prediction reads.

    Planes are read when indexed, never held (:class:`~napari_unet.core.planes.LazyPlanes`):
    a z-stack larger than memory is labelled in 3D with one plane's pixels in memory at a
    time. Reads from several threads take turns on the file.

    Args:
        reader: The open file; it must outlive this.
        first, count: The planes of the file this gives (None: all from ``first``).

    Raises:
        InputError: If the file's pages are not one-channel planes of integers or real
            numbers (read such files whole).
    """

    def __init__(self, reader: TiffPageReader, first: int = 0, count: int | None = None, *, _lock=None):
        if not self.reads(reader):
            raise InputError(f"{reader.path}: only stacks of one-channel integer or real planes are read a plane "
                             "at a time")
        self._reader, self._first = reader, first
        count = reader.pages - first if count is None else count
        super().__init__(count, reader.page_shape, reader.dtype,
                         reader.leading_shape if count == reader.pages else (count,), _lock)

    @staticmethod
    def reads(reader: TiffPageReader) -> bool:
        """Whether the file's pages are one-channel planes of integers or real numbers, which this reads a plane
        at a time."""
        return reader.dtype.kind in "iuf" and len(reader.page_shape) == 2

    def _read(self, index: int) -> np.ndarray:
        return self._reader.read_page(self._first + index)

    def _run(self, start: int, count: int) -> TiffPlanes:
        return TiffPlanes(self._reader, self._first + start, count, _lock=self._lock)


def _metadata(tif: tifffile.TiffFile, page) -> TiffMetadata:
    tags = page.tags
    resolution = None
    if "XResolution" in tags and "YResolution" in tags:
        resolution = (tags["XResolution"].value, tags["YResolution"].value)
    unit_tag = tags.get("ResolutionUnit")
    resolution_unit = int(unit_tag.value) if unit_tag is not None else None
    if tif.is_ome and tif.ome_metadata:
        return TiffMetadata("ome", resolution, resolution_unit, ome=_ome_pixels(tif.ome_metadata))
    if tif.is_imagej:
        imagej = {key: value for key, value in (tif.imagej_metadata or {}).items() if key in _IMAGEJ_KEYS}
        return TiffMetadata("imagej", resolution, resolution_unit, imagej=imagej)
    return TiffMetadata("plain", resolution, resolution_unit)


def _ome_pixels(xml: str) -> dict:
    """The geometry attributes of the first image's Pixels element of an OME-XML text."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    values = {}
    for key in _OME_KEYS:
        if key in pixels.attrib:
            text = pixels.attrib[key]
            values[key] = text if key.endswith("Unit") else float(text)
    return values


class PageTiffWriter:
    """Writes a stack page by page to ``.NAME.partial`` and renames it to ``NAME`` when complete.

    Use it as a context manager and call :meth:`commit` after the last page; leaving the
    block without a commit (an error, a stop) deletes the partial file.

    Args:
        path: The final file.
        shape: Shape of the whole stack; its last two axes are one page.
        axes: tifffile axes of ``shape`` (for example "TZCYX").
        dtype: Pixel type.
        metadata: The input's metadata to keep (ImageJ, OME or plain, and resolution).
        settings: Text saying how the file was made, kept in the first page's
            :data:`SETTINGS_TAG` (see :func:`written_settings`).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], axes: str, dtype,
                 metadata: TiffMetadata | None = None, settings: str | None = None):
        self.path = Path(path)
        self._settings = settings
        self.partial = partial_path(self.path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.pages = math.prod(self.shape[:-2])
        self._written = 0
        self._committed = False
        metadata = metadata or TiffMetadata()
        self._description = _description(self.shape, axes, self.dtype, metadata)
        self._options: dict = {"compression": "zlib", "photometric": "minisblack", "metadata": None}
        if metadata.resolution is not None:
            self._options["resolution"] = metadata.resolution
            self._options["resolutionunit"] = metadata.resolution_unit
        made_folder(self.path.parent)
        bigtiff = math.prod(self.shape) * self.dtype.itemsize > BIGTIFF_BYTES
        with write_errors_said_plainly(self.path):
            self._writer = tifffile.TiffWriter(self.partial, bigtiff=bigtiff)

    def write(self, page: np.ndarray) -> None:
        """Append the next page."""
        if self._written >= self.pages:
            raise ValueError(f"{self.path}: all {self.pages} pages are already written")
        # Every page is its own TIFF page; the first carries the description of the whole
        # stack, and how it was made.
        first = self._written == 0
        extratags = [(SETTINGS_TAG, "s", 0, self._settings, True)] if first and self._settings else []
        with write_errors_said_plainly(self.path):
            self._writer.write(np.asarray(page, self.dtype), description=self._description if first else None,
                               extratags=extratags, **self._options)
        self._written += 1

    def commit(self) -> Path:
        """Close the file and give it its final name; returns the final path."""
        if self._written != self.pages:
            raise ValueError(f"{self.path}: {self._written} of {self.pages} pages written")
        with write_errors_said_plainly(self.path):
            self._writer.close()
            os.replace(self.partial, self.path)
        self._committed = True
        return self.path

    def discard(self) -> None:
        """Close and delete the partial file (the final file, if any, is left as it was)."""
        self._writer.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> PageTiffWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._committed:
            self.discard()


def written_settings(path: str | os.PathLike) -> str | None:
    """The ``settings`` a :class:`PageTiffWriter` wrote into a file; None if it has none or cannot be read."""
    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(SETTINGS_TAG)
            return None if tag is None else str(tag.value)
    except (OSError, ValueError):  # not a TIFF file (any more): nothing to say
        return None


def _description(shape: tuple[int, ...], axes: str, dtype: np.dtype, metadata: TiffMetadata) -> str | bytes:
    """The first page's description: ImageJ, OME-XML or tifffile's JSON, as the input had it.

    A stack that ImageJ or OME cannot describe (ImageJ takes no uint32, neither takes
    every axis letter) falls back to the JSON description, which keeps shape and axes.
    """
    if metadata.kind == "imagej" and dtype in (np.uint8, np.uint16, np.float32):
        try:
            return tifffile.imagej_description(shape, axes, rgb=False, **metadata.imagej)
        except ValueError:
            pass
    if metadata.kind == "ome":
        ome = tifffile.OmeXml()
        try:
            ome.addimage(dtype, shape, (math.prod(shape[:-2]), 1, 1, *shape[-2:], 1), axes=axes, **metadata.ome)
            # OME-XML is UTF-8 (units such as µm); TIFF strings are ASCII, so it goes as bytes.
            return ome.tostring(declaration=True).encode()
        except (ValueError, TypeError):
            pass
    return tifffile.tifffile.shaped_description(shape, axes=axes)

