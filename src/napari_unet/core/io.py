"""Reading and writing TIFF files with tifffile, and finding the files a user means.

Label images are written atomically (a temporary file renamed when complete), so an
interrupted run never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .atomic import made_folder, replaced_atomically
from .errors import InputError, system_reason
from .units import in_unit, is_length, length_unit

__all__ = ["TIFF_SUFFIXES", "ImageInfo", "TiffErrors", "collect_tiffs", "pair_by_name", "read_tiff", "tiff_info", "tiff_pixel_size", "tiff_z_step", "write_tiff"]

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class ImageInfo:
    """What a TIFF file says about its pixels.

    Attributes:
        axes: tifffile's axes string of the array (for example "ZYX" or "YXS").
        pixel_size: Physical size of a pixel ``(y, x)`` if the file records it.
        unit: Unit of ``pixel_size`` (for example "um").
        z_step: Distance between the planes of a z-stack, in ``unit``, if the file
            records it together with the pixel size.
    """

    axes: str = ""
    pixel_size: tuple[float, float] | None = None
    unit: str = ""
    z_step: float | None = None

    @property
    def z_scale(self) -> float | None:
        """The z step in pixels (z step over pixel width), or None when the file does not record both."""
        if self.z_step is None or self.pixel_size is None:
            return None
        return self.z_step / self.pixel_size[1]


def collect_tiffs(spec: str | os.PathLike) -> list[Path]:
    """The TIFF files a user means by a folder, a glob pattern or a file.

    Raises:
        InputError: If nothing matches.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file())
    elif path.is_file():
        files = [path]
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
    else:
        raise InputError(f"no such file or folder: {text}")
    if not files:
        raise InputError(f"no TIFF files found in {text}")
    return files


def search_root(spec: str | os.PathLike) -> Path:
    """The folder a folder, glob pattern or file is found in: itself, the folder before the
    first wildcard, or the file's folder."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    folder = Path(*parts) if parts else Path(".")
    return folder.parent if folder == path else folder


def pair_by_name(images: list[Path], labels: list[Path], missing: str = "image(s) have no label file"
                 ) -> list[tuple[Path, Path]]:
    """Pair image and label files with the same name (single files pair with each other).

    Args:
        images: The files that each need a partner.
        labels: Their partners.
        missing: What the error says of images without a partner, before "of the same name".

    Raises:
        InputError: If an image has no label file.
    """
    if len(images) == 1 and len(labels) == 1:
        return [(images[0], labels[0])]
    by_stem = {p.stem: p for p in labels}
    unpaired = [p.name for p in images if p.stem not in by_stem]
    if unpaired:
        shown = ", ".join(unpaired[:3]) + (" ..." if len(unpaired) > 3 else "")
        raise InputError(f"{len(unpaired)} {missing} of the same name: {shown}")
    return [(p, by_stem[p.stem]) for p in images]


class TiffErrors(logging.Handler):
    """Refuses a file whose reading, within the block, made tifffile log an error in this thread.

    tifffile recovers from a truncated or damaged file with a smaller or differently
    shaped series (a stack read as one plane) and only logs it: the block's end raises a
    ValueError instead, when nothing else was raised in it.
    """

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self.messages.append(record.getMessage())

    def __enter__(self) -> TiffErrors:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, error_type, *_) -> None:
        logging.getLogger("tifffile").removeHandler(self)
        if error_type is None and self.messages:
            raise ValueError(f"damaged or truncated: {self.messages[0]}")


def unreadable_tiff(path: str | os.PathLike, error: Exception, page: str | None = None) -> InputError:
    """The error to raise for a file (or one ``page`` of it, "3 of 20") that tifffile could not read, in plain words.

    tifffile's own words where they say what is wrong (a compression it cannot decode);
    for damage, which it reports with any exception ("list index out of range", page
    offsets), only that the file is damaged: its words stay the error's cause.
    """
    words = str(error)
    if isinstance(error, OSError) and not isinstance(error, tifffile.TiffFileError):
        reason = f"the system cannot read it ({system_reason(error)})"  # permission, a disk gone
    elif isinstance(error, tifffile.TiffFileError) and words.startswith("not a TIFF file"):
        reason = "it is not a TIFF file"
    elif "compression" in words.lower() or "imagecodecs" in words:
        reason = f"it uses a compression that cannot be decoded here ({words})"
    elif isinstance(error, MemoryError):
        reason = "it does not fit in memory"
    else:
        reason = "it is damaged or truncated"
    what = f"{path}: page {page} is not readable" if page else f"{path} is not a readable TIFF file"
    return InputError(f"{what}: {reason}")


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, ImageInfo]:
    """Read the first image series of a TIFF file and its pixel size.

    Raises:
        InputError: If the file is missing or not a readable TIFF.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        with TiffErrors(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            info = tiff_info(tif, series.axes)
    except Exception as error:  # tifffile and its codecs report damage with many types
        raise unreadable_tiff(path, error) from error
    return data, info


def ome_pixels(tif: tifffile.TiffFile) -> dict[str, str]:
    """The attributes of the OME-XML's first ``Pixels`` element: of the image that is read.

    A file may hold several images (a pyramid's levels, a label image beside the data),
    each with its own physical sizes; the first is ``tif.series[0]``. Empty for a file
    without OME metadata.
    """
    if not (tif.is_ome and tif.ome_metadata):
        return {}
    pixels = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", tif.ome_metadata)
    return dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(1))) if pixels else {}


def tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[tuple[float, float] | None, str]:
    """The physical pixel size ``(y, x)`` of the image an open TIFF file holds, and its unit.

    Read from the OME-XML's physical sizes when the file has them (of its first image, the
    one read), else from the resolution tags with ImageJ's unit. The writers' default of
    1 pixel per unit, a resolution in pixels per inch (a scanner's or screen's setting)
    and unreadable values give no pixel size rather than a wrong one.

    Args:
        tif: The open file, as :class:`tifffile.TiffFile`.

    Returns:
        The pixel size and the symbol of its unit ("um", "nm", ...; "" when the file names
        none); ``(None, "")`` when the file records no pixel size.
    """
    ome = ome_pixels(tif)
    if "PhysicalSizeX" in ome:
        try:
            x = float(ome["PhysicalSizeX"])
            y = float(ome.get("PhysicalSizeY", x))
        except ValueError:
            return None, ""
        return (y, x), length_unit(ome.get("PhysicalSizeXUnit", "um"))  # the OME schema's default unit
    page = tif.pages.first
    x_tag, y_tag = page.tags.get("XResolution"), page.tags.get("YResolution")
    if x_tag is None or y_tag is None:
        return None, ""
    try:
        x_res = x_tag.value[0] / x_tag.value[1]
        y_res = y_tag.value[0] / y_tag.value[1]
    except (TypeError, ZeroDivisionError, IndexError):
        return None, ""
    unit = (tif.imagej_metadata or {}).get("unit", "") if tif.is_imagej else ""
    # 1 pixel per unit is the writers' default, not a measurement, unless a unit of
    # length says so (ImageJ's "micron" at 1 pixel per micron).
    if x_res <= 0 or y_res <= 0 or (x_res == 1 and y_res == 1 and not is_length(unit)):
        return None, ""
    if not unit:
        resolution_unit = page.tags.get("ResolutionUnit")
        code = int(resolution_unit.value) if resolution_unit is not None else 1
        if code == 3:  # centimeter
            return (1e4 / y_res, 1e4 / x_res), "um"
        if code == 2:  # inch: a scanner or screen setting, not a microscope's
            return None, ""
    unit = length_unit(unit)
    return (1.0 / y_res, 1.0 / x_res), unit


def tiff_info(tif: tifffile.TiffFile, axes: str) -> ImageInfo:
    """What an open TIFF file says about the pixels of its image of ``axes``."""
    pixel_size, unit = tiff_pixel_size(tif)
    z_step, z_unit = tiff_z_step(tif)
    if pixel_size is None or z_step is None:
        return ImageInfo(axes, pixel_size, unit)
    converted = in_unit((z_step, z_step), z_unit, unit)
    return ImageInfo(axes, pixel_size, unit, converted[0] if converted is not None else None)


def tiff_z_step(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    """The distance between the z planes of an open TIFF file, and its unit.

    Read from the OME-XML's ``PhysicalSizeZ`` (of its first image), else from ImageJ's
    ``spacing``, whose unit is the pixel size's. ``(None, "")`` when the file records
    none, or a value that is not a positive number.
    """
    ome = ome_pixels(tif)
    step, unit = None, ""
    if "PhysicalSizeZ" in ome:
        step, unit = ome["PhysicalSizeZ"], length_unit(ome.get("PhysicalSizeZUnit", "um"))  # OME's default unit
    elif tif.is_imagej:
        metadata = tif.imagej_metadata or {}
        step, unit = metadata.get("spacing"), length_unit(str(metadata.get("unit", "")))
    try:
        step = float(step)
    except (TypeError, ValueError):
        return None, ""
    return (step, unit) if step > 0 and np.isfinite(step) else (None, "")


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    pixel_size: tuple[float, float] | None = None,
    unit: str = "um",
    z_step: float | None = None,
) -> Path:
    """Write an array to a compressed TIFF atomically, with its pixel size when known.

    ImageJ-compatible files are written where ImageJ can read the dtype (uint8, uint16,
    float32); BigTIFF is used when the data need it. ``z_step``, the distance between
    planes in ``unit``, is recorded in ImageJ files (as their ``spacing``).
    """
    path = Path(path)
    made_folder(path.parent)
    data = np.asarray(data)
    imagej = data.dtype in (np.uint8, np.uint16, np.float32) and data.ndim <= 6
    # Planes are gray, never colour samples (tifffile would store 3 or 4 planes as RGB).
    options: dict = {"compression": "zlib", "bigtiff": data.nbytes > 2**31, "photometric": "minisblack"}
    if imagej and not options["bigtiff"]:
        options["imagej"] = True
        options["metadata"] = {"axes": "ZYX"[-data.ndim :] if data.ndim <= 3 else None}
        if options["metadata"]["axes"] is None:
            options["metadata"] = {}
    if pixel_size is not None:
        unit = length_unit(unit)
        options["resolution"] = (1.0 / pixel_size[1], 1.0 / pixel_size[0])
        if options.get("imagej"):
            options["metadata"]["unit"] = unit
            if z_step is not None:
                options["metadata"]["spacing"] = float(z_step)
        else:
            options["resolutionunit"] = "CENTIMETER" if unit == "um" else "NONE"
            if unit == "um":
                options["resolution"] = (1e4 / pixel_size[1], 1e4 / pixel_size[0])
    with replaced_atomically(path) as temporary:
        tifffile.imwrite(temporary, data, **options)
    return path
