"""Units of length: the names that files, napari and people give them, and conversions.

A model records the pixel size of its training data in one unit; an image may come in
another (an ImageJ TIFF in nanometers, a napari layer in micrometers). Both are brought
to one symbol per unit here, and pixel sizes are converted between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .errors import InputError

__all__ = ["length_unit", "is_length", "in_unit", "same_pixel_size", "common_pixel_size"]

#: Micrometers per unit, by symbol.
_MICROMETERS = {"pm": 1e-6, "angstrom": 1e-4, "nm": 1e-3, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}

#: Other spellings of the units above, in lower case (plural "s" removed).
_SYMBOLS = {
    "picometer": "pm", "picometre": "pm",
    "\u00e5": "angstrom", "\u212b": "angstrom", "\u00e5ngstr\u00f6m": "angstrom",
    "nanometer": "nm", "nanometre": "nm",
    "micrometer": "um", "micrometre": "um", "micron": "um", "\u00b5m": "um", "\u03bcm": "um", "\\u00b5m": "um",
    "millimeter": "mm", "millimetre": "mm",
    "centimeter": "cm", "centimetre": "cm",
    "meter": "m", "metre": "m",
}


def length_unit(name: str | None) -> str:
    """The symbol ("nm", "um", "mm", ...) of a unit of length, from any usual name of it.

    Args:
        name: A unit as a file, napari or a user writes it ("micron", "µm",
            "nanometer", "\\u00B5m" as ImageJ stores it).

    Returns:
        The symbol; "" for no unit (empty, or napari's "pixel"); any other text as given.
    """
    text = (name or "").strip()
    lower = text.lower()
    if lower in ("", "pixel", "pixels", "px"):
        return ""
    if lower in _MICROMETERS:
        return lower
    singular = lower[:-1] if lower.endswith("s") and lower[:-1] in _SYMBOLS else lower
    return _SYMBOLS.get(singular, text)


def is_length(name: str | None) -> bool:
    """Whether ``name`` is a unit of length that pixel sizes can be converted from and to."""
    return length_unit(name) in _MICROMETERS


def in_unit(pixel_size: tuple[float, float], unit: str | None, target: str | None) -> tuple[float, float] | None:
    """``pixel_size``, given in ``unit``, expressed in ``target``.

    A missing unit on either side is taken to be the other one (files often record a
    pixel size without its unit).

    Returns:
        The converted pixel size, or None when the two units are named but cannot be
        converted (one of them is not a known unit of length).
    """
    unit, target = length_unit(unit), length_unit(target)
    if not unit or not target or unit == target:
        return (float(pixel_size[0]), float(pixel_size[1]))
    if unit not in _MICROMETERS or target not in _MICROMETERS:
        return None
    factor = _MICROMETERS[unit] / _MICROMETERS[target]
    return (float(pixel_size[0]) * factor, float(pixel_size[1]) * factor)


def same_pixel_size(size: tuple[float, float] | None, unit: str | None,
                    other: tuple[float, float] | None, other_unit: str | None) -> bool:
    """Whether two pixel sizes (None: unknown) are the same, within 1 %, once in one unit."""
    if size is None or other is None:
        return size is None and other is None
    converted = in_unit(other, other_unit, unit)
    return converted is not None and all(math.isclose(a, b, rel_tol=0.01) for a, b in zip(converted, size))


def common_pixel_size(
    images: Iterable[tuple[str, tuple[float, float] | None, str]],
) -> tuple[tuple[float, float] | None, str]:
    """The one pixel size of images trained together, and its unit.

    A model records a single pixel size for its training data: images of two pixel sizes
    would teach it objects at two scales and record only one of them.

    Args:
        images: The name, pixel size (None: unknown) and unit of every image, in the order
            the user gave them. An unknown pixel size is the same only as another unknown one.

    Returns:
        The first image's pixel size and unit; (None, "") without images.

    Raises:
        InputError: If an image's pixel size differs from the first image's, naming both.
    """
    first = None
    for name, size, unit in images:
        if first is None:
            first = (name, size, unit)
        elif not same_pixel_size(first[1], first[2], size, unit):
            raise InputError(
                f"the images {first[0]} and {name} have different pixel sizes ({_described(*first[1:])} and "
                f"{_described(size, unit)}); train on images of one pixel size together")
    return (None, "") if first is None else (first[1], first[2])


def _described(size: tuple[float, float] | None, unit: str | None) -> str:
    """A pixel size as people read it: "0.5 x 0.5 um", or "none" when unknown."""
    return "none" if size is None else f"{size[0]:g} x {size[1]:g} {unit or ''}".rstrip()
