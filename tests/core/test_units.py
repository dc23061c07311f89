"""Units of length: the names files and napari use, and conversions between them."""

from __future__ import annotations

import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.units import common_pixel_size, in_unit, length_unit, same_pixel_size


@pytest.mark.parametrize(("name", "symbol"), [
    ("micrometer", "um"), ("micron", "um"), ("microns", "um"), ("\u00b5m", "um"), ("\u03bcm", "um"),
    ("\\u00B5m", "um"), ("um", "um"), (" UM ", "um"), ("nanometer", "nm"), ("nanometers", "nm"), ("nm", "nm"),
    ("millimeter", "mm"), ("metre", "m"), ("\u00c5", "angstrom"), ("angstrom", "angstrom"),
    ("pixel", ""), ("", ""), (None, ""), ("furlong", "furlong"),
])
def test_every_usual_name_of_a_unit_gives_its_symbol(name, symbol):
    assert length_unit(name) == symbol


@pytest.mark.parametrize(("size", "unit", "target", "expected"), [
    ((4.0, 4.0), "nanometer", "um", (0.004, 0.004)),
    ((0.004, 0.002), "um", "nm", (4.0, 2.0)),
    ((0.5, 0.5), "micron", "um", (0.5, 0.5)),
    ((2.0, 2.0), "mm", "um", (2000.0, 2000.0)),
    ((10.0, 10.0), "angstrom", "nm", (1.0, 1.0)),
])
def test_pixel_sizes_are_converted_between_units(size, unit, target, expected):
    assert in_unit(size, unit, target) == pytest.approx(expected)


@pytest.mark.parametrize(("unit", "target"), [("", "um"), ("nm", ""), ("pixel", "nm"), ("", "")])
def test_a_missing_unit_is_taken_to_be_the_other_one(unit, target):
    assert in_unit((0.3, 0.4), unit, target) == (0.3, 0.4)


def test_units_that_cannot_be_converted_give_none():
    assert in_unit((1.0, 1.0), "furlong", "um") is None
    assert in_unit((1.0, 1.0), "um", "second") is None


@pytest.mark.parametrize(("size", "unit", "other", "other_unit", "same"), [
    ((0.5, 0.5), "um", (500.0, 500.0), "nm", True),
    ((0.5, 0.5), "um", (0.502, 0.5), "um", True),  # within 1 %
    ((0.5, 0.6), "um", (0.6, 0.5), "um", False),  # each axis on its own
    ((0.5, 0.5), "um", (0.25, 0.25), "um", False),
    ((0.5, 0.5), "um", (0.5, 0.5), "second", False),
    ((0.5, 0.5), "um", None, "", False),
    (None, "", None, "", True),
])
def test_pixel_sizes_are_the_same_once_in_one_unit(size, unit, other, other_unit, same):
    assert same_pixel_size(size, unit, other, other_unit) is same


def test_images_trained_together_share_the_first_ones_pixel_size():
    images = [("a.tif", (0.5, 0.5), "um"), ("b.tif", (500.0, 500.0), "nm"), ("c.tif", (0.502, 0.5), "micron")]
    assert common_pixel_size(images) == ((0.5, 0.5), "um")
    assert common_pixel_size([("a.tif", None, ""), ("b.tif", None, "")]) == (None, "")
    assert common_pixel_size([]) == (None, "")


@pytest.mark.parametrize(("other", "described"), [
    (("c.tif", (0.25, 0.25), "um"), "0.5 x 0.5 um and 0.25 x 0.25 um"),
    (("c.tif", None, ""), "0.5 x 0.5 um and none"),  # unknown is not the same as known
])
def test_images_of_different_pixel_sizes_are_named_in_the_refusal(other, described):
    with pytest.raises(InputError) as refusal:
        common_pixel_size([("a.tif", (0.5, 0.5), "um"), ("b.tif", (0.5, 0.5), "um"), other])
    assert str(refusal.value) == (f"the images a.tif and c.tif have different pixel sizes ({described}); "
                                  "train on images of one pixel size together")
