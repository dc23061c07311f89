"""Units of length: the names that files, napari and people give them, and conversions.

A model records the pixel size of its training data in one unit; an image may come in
another (an ImageJ TIFF in nanometers, a napari layer in micrometers). Both are brought
to one symbol per unit here, and pixel sizes are converted between them.
"""

from __future__ import annotations

import math

__all__ = ["length_unit", "is_length", "in_unit", "same_pixel_size"]

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
