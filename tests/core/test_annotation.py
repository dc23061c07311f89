"""Tests of the masks of annotated pixels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.annotation import labelled_planes_mask, regions_mask


def box(shape, rows: slice, cols: slice, planes=...) -> np.ndarray:
    expected = np.zeros(shape, bool)
    expected[planes if planes is Ellipsis else (*planes, Ellipsis)][..., rows, cols] = True
    return expected


# --- labelled_planes_mask ------------------------------------------------------------


def test_only_planes_with_labels_are_annotated():
    labels = np.zeros((5, 8, 9), np.int32)
    labels[1, 2, 3] = 4
    labels[3, 7, 8] = 1
    labels[3, 0, 0] = 2
    mask = labelled_planes_mask(labels)
    assert mask.dtype == bool and mask.shape == labels.shape
    np.testing.assert_array_equal(mask.all(axis=(1, 2)), [False, True, False, True, False])
    np.testing.assert_array_equal(mask.any(axis=(1, 2)), [False, True, False, True, False])


def test_labelled_planes_of_a_four_dimensional_stack():
    labels = np.zeros((2, 3, 6, 7), np.uint16)
    labels[0, 2, 5, 6] = 1
    labels[1, 0, 1, 1] = 3
    mask = labelled_planes_mask(labels)
    expected_planes = np.array([[False, False, True], [True, False, False]])
    np.testing.assert_array_equal(mask.all(axis=(2, 3)), expected_planes)
    np.testing.assert_array_equal(mask.any(axis=(2, 3)), expected_planes)


def test_labelled_planes_of_a_single_image():
    labels = np.zeros((6, 7), np.int32)
    assert labelled_planes_mask(labels).shape == (6, 7)
    assert not labelled_planes_mask(labels).any()
    labels[2, 2] = 1
    assert labelled_planes_mask(labels).all()


def test_labelled_planes_mask_is_writable_and_independent():
    labels = np.zeros((3, 4, 4), np.int32)
    labels[1, 1, 1] = 1
    mask = labelled_planes_mask(labels)
    mask[1, 0, 0] = False  # must not raise or change other planes
    assert mask[1].sum() == 15
    assert not mask[0].any() and not mask[2].any()


# --- regions_mask --------------------------------------------------------------------


def test_rectangle_on_an_image():
    corners = [[2, 3], [2, 7], [5, 7], [5, 3]]
    mask = regions_mask((10, 12), [corners])
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, box((10, 12), slice(2, 5), slice(3, 7)))


def test_fractional_corners_cover_every_touched_pixel():
    mask = regions_mask((10, 12), [[[1.5, 2.2], [4.1, 6.7]]])
    np.testing.assert_array_equal(mask, box((10, 12), slice(1, 5), slice(2, 7)))


def test_rectangles_are_clipped_to_the_image():
    mask = regions_mask((10, 12), [[[-4, -3], [3, 2]], [[7, 9], [20, 30]]])
    expected = box((10, 12), slice(0, 3), slice(0, 2)) | box((10, 12), slice(7, 10), slice(9, 12))
    np.testing.assert_array_equal(mask, expected)


def test_rectangles_outside_the_image_or_empty_are_ignored():
    shape = (10, 12)
    regions = [
        [[-8, -8], [-2, -1]],  # above and left of the image
        [[11, 2], [15, 6]],  # below the image
        [[3, 4], [3, 9]],  # no height
    ]
    assert not regions_mask(shape, regions).any()
    assert not regions_mask(shape, []).any()


def test_several_rectangles_are_united():
    mask = regions_mask((10, 10), [[[0, 0], [4, 4]], [[2, 2], [6, 6]]])
    expected = box((10, 10), slice(0, 4), slice(0, 4)) | box((10, 10), slice(2, 6), slice(2, 6))
    np.testing.assert_array_equal(mask, expected)


def test_rectangle_with_plane_coordinate_marks_only_that_plane():
    shape = (4, 10, 12)
    corners = [[2, 1, 1], [2, 1, 5], [2, 6, 5], [2, 6, 1]]
    mask = regions_mask(shape, [corners])
    np.testing.assert_array_equal(mask, box(shape, slice(1, 6), slice(1, 5), planes=(2,)))


def test_plane_coordinate_is_rounded():
    shape = (4, 10, 12)
    mask = regions_mask(shape, [[[0.8, 1, 1], [0.8, 3, 3]]])
    np.testing.assert_array_equal(mask.any(axis=(1, 2)), [False, True, False, False])


def test_two_dimensional_rectangle_over_a_stack_marks_every_plane():
    shape = (3, 10, 12)
    mask = regions_mask(shape, [[[4, 5], [8, 11]]])
    np.testing.assert_array_equal(mask, box(shape, slice(4, 8), slice(5, 11)))
    assert mask.all(axis=0).sum() == 4 * 6


def test_rectangle_with_two_leading_coordinates_on_a_four_dimensional_stack():
    shape = (2, 3, 8, 8)
    mask = regions_mask(shape, [[[1, 2, 0, 0], [1, 2, 3, 4]]])
    np.testing.assert_array_equal(mask, box(shape, slice(0, 3), slice(0, 4), planes=(1, 2)))


def test_rectangle_with_one_leading_coordinate_on_a_four_dimensional_stack():
    # Coordinates align with the last axes, as napari aligns layers: the plane is z = 1.
    shape = (2, 3, 8, 8)
    mask = regions_mask(shape, [[[1, 0, 0], [1, 3, 4]]])
    expected = np.zeros(shape, bool)
    expected[:, 1, 0:3, 0:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_extra_leading_coordinates_are_ignored_on_an_image():
    mask = regions_mask((6, 6), [[[5, 1, 1], [5, 3, 4]]])
    np.testing.assert_array_equal(mask, box((6, 6), slice(1, 3), slice(1, 4)))


@pytest.mark.parametrize("plane", [-1, 4, 7])
def test_rectangle_on_a_plane_outside_the_stack_is_ignored(plane):
    mask = regions_mask((4, 10, 12), [[[plane, 1, 1], [plane, 5, 5]], [[0, 0, 0], [0, 2, 2]]])
    np.testing.assert_array_equal(mask, box((4, 10, 12), slice(0, 2), slice(0, 2), planes=(0,)))


@pytest.mark.parametrize("corners", [[1, 2], [[1], [2]], [[[1, 2]]]])
def test_malformed_region_raises(corners):
    with pytest.raises(ValueError):
        regions_mask((5, 5), [corners])
