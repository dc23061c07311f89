"""Tests of the training targets and the U-Net border weight map."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk
from skimage.segmentation import expand_labels

from napari_unet.core.scale import equivalent_diameters
from napari_unet.core.targets import (
    MAX_CLASS_WEIGHT,
    as_instance_labels,
    border_weights,
    class_balance_weights,
    class_targets,
    consecutive_labels,
    nearest_object_distances,
    touching_borders,
)


def touching_squares() -> np.ndarray:
    """Two 8x6 rectangles sharing the border between columns 9 and 10."""
    labels = np.zeros((20, 24), np.int32)
    labels[4:12, 4:10] = 1
    labels[4:12, 10:16] = 2
    return labels


def random_touching_labels(seed: int, shape=(48, 56), count: int = 9) -> np.ndarray:
    """Random seeds grown until they meet: irregular objects with many shared borders."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    points = rng.integers(0, shape, size=(count, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, count + 1)
    labels = expand_labels(seeds, distance=rng.uniform(6, 10))
    assert _has_touching_pair(labels), "fixture must contain touching objects"
    return labels


def _has_touching_pair(labels: np.ndarray) -> bool:
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
        if np.any((a > 0) & (b > 0) & (a != b)):
            return True
    return False


def reference_distances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 from one full-image distance transform per object, sorted per pixel."""
    ids = [i for i in np.unique(labels) if i != 0]
    stacked = [ndimage.distance_transform_edt(labels != i) for i in ids]
    stacked += [np.full(labels.shape, np.inf)] * 2  # fewer than two objects
    distances = np.sort(np.stack(stacked), axis=0)
    return distances[0], distances[1]


def reference_border_weights(labels, w0, sigma, num_classes=2, gap=1) -> np.ndarray:
    target = class_targets(labels, num_classes, gap)
    class_weight = class_balance_weights(target, num_classes).astype(np.float64)
    d1, d2 = reference_distances(labels)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    return class_weight + np.where(target == 0, border, 0.0)


def brute_force_distances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 as the smallest Euclidean distance from each pixel to each object's pixels."""
    grid = np.stack(np.indices(labels.shape), axis=-1).reshape(-1, 1, 2).astype(np.float64)
    per_object = []
    for i in np.unique(labels):
        if i == 0:
            continue
        points = np.argwhere(labels == i).reshape(1, -1, 2)
        per_object.append(np.sqrt(((grid - points) ** 2).sum(-1)).min(axis=1))
    per_object += [np.full(labels.size, np.inf)] * 2
    ordered = np.sort(np.stack(per_object), axis=0)
    return ordered[0].reshape(labels.shape), ordered[1].reshape(labels.shape)


# --- border_weights ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "w0", "sigma"),
    [(0, 10.0, 5.0), (1, 10.0, 5.0), (2, 3.0, 2.0), (3, 25.0, 8.0), (4, 0.5, 1.5)],
)
def test_border_weights_match_direct_computation(seed, w0, sigma):
    labels = random_touching_labels(seed)
    expected = reference_border_weights(labels, w0, sigma)
    weights = border_weights(labels, w0=w0, sigma=sigma)
    assert weights.dtype == np.float32
    assert weights.shape == labels.shape
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-5)
    # The border term actually matters in these images (the test would not be vacuous).
    class_only = class_balance_weights(class_targets(labels), 2)
    assert np.max(weights - class_only) > 0.1 * w0


def test_border_weights_match_direct_computation_with_gap_and_non_consecutive_ids():
    labels = random_touching_labels(5) * 3  # ids 3, 6, 9, ...: find_objects gaps
    expected = reference_border_weights(labels, 10.0, 4.0, gap=2)
    np.testing.assert_allclose(border_weights(labels, w0=10.0, sigma=4.0, gap=2), expected, atol=1e-5)


def test_border_weights_three_classes_match_direct_computation():
    labels = random_touching_labels(6)
    expected = reference_border_weights(labels, 8.0, 3.0, num_classes=3)
    np.testing.assert_allclose(
        border_weights(labels, w0=8.0, sigma=3.0, num_classes=3), expected, atol=1e-5
    )


def test_border_weights_are_highest_in_the_gap_between_touching_objects():
    labels = touching_squares()
    weights = border_weights(labels)
    gap = weights[4:12, 9:11]
    assert gap.min() > weights[labels == 0].max() - 1e-6
    assert gap.min() > weights[class_targets(labels) == 1].max()


def test_border_weights_without_border_term_are_class_weights():
    labels = random_touching_labels(7)
    class_only = class_balance_weights(class_targets(labels), 2)
    np.testing.assert_array_equal(border_weights(labels, w0=0.0), class_only)


def test_border_weights_single_object_and_empty_labels():
    single = np.zeros((16, 16), np.int32)
    single[3:9, 4:12] = 1
    np.testing.assert_array_equal(
        border_weights(single), class_balance_weights(class_targets(single), 2)
    )
    # A single object with a high id still has no second object, so no border term.
    np.testing.assert_allclose(
        border_weights(single * 7), class_balance_weights(class_targets(single), 2), atol=1e-7
    )
    empty = border_weights(np.zeros((10, 12), np.int32))
    np.testing.assert_array_equal(empty, np.full((10, 12), 0.5, np.float32))


def test_border_weights_use_mask_for_class_frequencies():
    labels = touching_squares()
    mask = np.zeros(labels.shape, bool)
    mask[:, :12] = True
    target = class_targets(labels)
    expected = class_balance_weights(target, 2, mask)
    weights = border_weights(labels, w0=0.0, mask=mask)
    np.testing.assert_array_equal(weights, expected)
    assert not np.array_equal(weights, class_balance_weights(target, 2))


def test_border_weights_of_large_image_are_fast():
    rng = np.random.default_rng(0)
    labels = np.zeros((1024, 1024), np.int32)
    for index in range(1, 501):
        rr, cc = disk(tuple(rng.uniform(0, 1024, 2)), rng.uniform(8, 16), shape=labels.shape)
        labels[rr, cc] = index
    assert len(np.unique(labels)) > 450
    start = time.perf_counter()
    weights = border_weights(labels)
    elapsed = time.perf_counter() - start
    assert weights.shape == labels.shape
    assert elapsed < 2.0, f"border_weights took {elapsed:.2f} s"


# --- class_balance_weights -----------------------------------------------------------


def test_class_balance_weights_equalise_class_totals():
    target = np.zeros((10, 10), np.uint8)
    target[:2] = 1  # 20 foreground, 80 background pixels
    weights = class_balance_weights(target, 2)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[target == 0], 100 / (2 * 80))
    np.testing.assert_allclose(weights[target == 1], 100 / (2 * 20))
    assert weights[target == 0].sum() == pytest.approx(weights[target == 1].sum())


def test_class_balance_weights_are_capped_and_absent_classes_ignored():
    target = np.zeros((20, 20), np.uint8)
    target[0, 0] = 1  # one pixel of 400: uncapped weight 200
    weights = class_balance_weights(target, 3)
    assert weights[0, 0] == pytest.approx(MAX_CLASS_WEIGHT)
    np.testing.assert_allclose(weights[target == 0], 400 / (3 * 399), rtol=1e-6)


def test_class_balance_weights_count_only_masked_pixels():
    target = np.zeros((4, 10), np.uint8)
    target[:, :5] = 1
    mask = np.zeros(target.shape, bool)
    mask[:, 2:] = True  # 12 foreground, 20 background annotated
    weights = class_balance_weights(target, 2, mask)
    assert weights.shape == target.shape
    np.testing.assert_allclose(weights[target == 1], 32 / (2 * 12))
    np.testing.assert_allclose(weights[target == 0], 32 / (2 * 20))


# --- nearest_object_distances --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_object_distances_equal_brute_force(seed):
    labels = random_touching_labels(seed, shape=(22, 26), count=5)
    labels[labels == 2] = 0  # some background between objects, too
    d1, d2 = nearest_object_distances(labels)
    e1, e2 = brute_force_distances(labels)
    assert d1.dtype == d2.dtype == np.float32
    np.testing.assert_allclose(d1, e1, atol=1e-4)
    np.testing.assert_allclose(d2, e2, atol=1e-4)
    assert np.all(d1[labels > 0] == 0)


@pytest.mark.parametrize("max_distance", [2.5, 5.5, 9.3])
def test_nearest_object_distances_within_max_distance(max_distance):
    labels = random_touching_labels(3, shape=(30, 34), count=6)
    labels[labels == 1] = 0
    e1, e2 = brute_force_distances(labels)
    e1[e1 > max_distance] = np.inf
    e2[e2 > max_distance] = np.inf
    d1, d2 = nearest_object_distances(labels, max_distance=max_distance)
    np.testing.assert_allclose(d1, e1, atol=1e-4)
    np.testing.assert_allclose(d2, e2, atol=1e-4)
    assert np.isinf(d2).any() and np.isfinite(d2).any()


def test_nearest_object_distances_of_two_points():
    labels = np.zeros((5, 9), np.int32)
    labels[2, 1] = 1
    labels[2, 7] = 2
    d1, d2 = nearest_object_distances(labels)
    assert d1[2, 4] == pytest.approx(3.0)
    assert d2[2, 4] == pytest.approx(3.0)
    assert d1[0, 1] == pytest.approx(2.0)
    assert d2[0, 1] == pytest.approx(math.hypot(2, 6), rel=1e-6)
    assert d2[2, 1] == pytest.approx(6.0)


def test_nearest_object_distances_without_objects_are_infinite():
    d1, d2 = nearest_object_distances(np.zeros((6, 7), np.int32))
    assert np.all(np.isinf(d1)) and np.all(np.isinf(d2))
    single = np.zeros((6, 7), np.int32)
    single[2, 3] = 1
    d1, d2 = nearest_object_distances(single)
    assert np.all(np.isfinite(d1)) and np.all(np.isinf(d2))


# --- touching_borders and class_targets ----------------------------------------------


def test_touching_squares_are_separated_by_a_two_pixel_gap():
    labels = touching_squares()
    border = touching_borders(labels)
    expected = np.zeros(labels.shape, bool)
    expected[4:12, 9:11] = True
    np.testing.assert_array_equal(border, expected)
    target = class_targets(labels)
    assert target.dtype == np.uint8
    assert set(np.unique(target)) == {0, 1}
    _, count = ndimage.label(target == 1)
    assert count == 2
    np.testing.assert_array_equal(target == 1, (labels > 0) & ~expected)


def test_wider_gap_removes_more_columns():
    labels = touching_squares()
    expected = np.zeros(labels.shape, bool)
    expected[4:12, 8:12] = True
    np.testing.assert_array_equal(touching_borders(labels, gap=2), expected)
    assert ndimage.label(class_targets(labels, gap=2) == 1)[1] == 2


def test_objects_touching_at_a_corner_are_separated():
    labels = np.zeros((12, 12), np.int32)
    labels[2:6, 2:6] = 1
    labels[6:10, 6:10] = 2
    target = class_targets(labels)
    # With 8-connectivity the two foregrounds would otherwise be one component.
    assert ndimage.label(target == 1, structure=np.ones((3, 3)))[1] == 2
    assert target[5, 5] == 0 and target[6, 6] == 0


def test_random_touching_objects_become_separate_components():
    labels = random_touching_labels(11)
    target = class_targets(labels)
    _, count = ndimage.label(target == 1)
    assert count == len(np.unique(labels)) - 1
    # Every foreground pixel belongs to an object, and each component to a single object.
    assert np.all(labels[target == 1] > 0)
    components, _ = ndimage.label(target == 1)
    for component in range(1, count + 1):
        assert len(np.unique(labels[components == component])) == 1


def test_non_touching_objects_are_unchanged():
    labels = np.zeros((16, 20), np.int32)
    labels[2:8, 2:8] = 1
    labels[2:8, 9:14] = 2  # one background column between them
    labels[10:14, 2:19] = 3
    assert not touching_borders(labels).any()
    np.testing.assert_array_equal(class_targets(labels), (labels > 0).astype(np.uint8))


def test_objects_at_the_image_edge_keep_their_edge_pixels():
    labels = np.zeros((8, 8), np.int32)
    labels[:, :4] = 1
    np.testing.assert_array_equal(class_targets(labels), labels.astype(np.uint8))


def test_three_classes_mark_interior_and_boundary():
    labels = touching_squares()
    target = class_targets(labels, num_classes=3)
    assert target.dtype == np.uint8
    expected = np.zeros(labels.shape, np.uint8)
    expected[4:12, 4:16] = 2
    expected[5:11, 5:9] = 1  # interior of the left object
    expected[5:11, 11:15] = 1  # interior of the right object
    np.testing.assert_array_equal(target, expected)


def test_three_class_boundary_uses_four_neighbours():
    labels = random_touching_labels(12)
    target = class_targets(labels, num_classes=3)
    padded = np.pad(labels, 1, mode="edge")
    differs = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]]
        differs |= neighbour != labels
    expected = np.where(labels > 0, np.where(differs, 2, 1), 0)
    np.testing.assert_array_equal(target, expected)


def test_invalid_number_of_classes_raises():
    with pytest.raises(ValueError):
        class_targets(touching_squares(), num_classes=4)


# --- label input handling ------------------------------------------------------------


def test_all_zero_labels():
    labels = np.zeros((9, 11), np.int32)
    assert not touching_borders(labels).any()
    assert not class_targets(labels).any()
    assert not class_targets(labels, 3).any()


def test_single_object():
    labels = np.zeros((9, 11), np.int32)
    labels[2:7, 3:9] = 4
    assert not touching_borders(labels).any()
    np.testing.assert_array_equal(class_targets(labels), (labels > 0).astype(np.uint8))


def test_bool_labels_are_split_into_components():
    mask = np.zeros((10, 14), bool)
    mask[1:5, 1:5] = True
    mask[6:9, 8:13] = True
    labels = as_instance_labels(mask)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, mask)
    d1, d2 = nearest_object_distances(mask)
    assert np.isfinite(d2).all()
    np.testing.assert_array_equal(class_targets(mask), mask.astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float32])
def test_binary_zero_one_labels_are_split_into_components(dtype):
    binary = np.zeros((10, 14), dtype)
    binary[1:5, 1:5] = 1
    binary[6:9, 8:13] = 1
    labels = as_instance_labels(binary)
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(np.unique(labels[1:5, 1:5])) == 1 and len(np.unique(labels[6:9, 8:13])) == 1
    assert labels[2, 2] != labels[7, 9]
    weights = border_weights(binary)
    np.testing.assert_allclose(weights, reference_border_weights(labels, 10.0, 5.0), atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.float64, np.float32])
def test_other_label_dtypes_give_the_same_results(dtype):
    labels = random_touching_labels(13)
    converted = labels.astype(dtype)
    assert np.issubdtype(as_instance_labels(converted).dtype, np.integer)
    np.testing.assert_array_equal(touching_borders(converted), touching_borders(labels))
    np.testing.assert_array_equal(class_targets(converted), class_targets(labels))
    np.testing.assert_array_equal(class_targets(converted, 3), class_targets(labels, 3))
    np.testing.assert_array_equal(border_weights(converted), border_weights(labels))


def test_uint8_labels_with_the_largest_id():
    labels = np.zeros((12, 16), np.uint8)
    labels[2:8, 2:8] = 255
    labels[2:8, 8:12] = 3
    labels[9:11, 2:14] = 7  # isolated, must stay whole
    expected = np.zeros(labels.shape, bool)
    expected[2:8, 7:9] = True
    np.testing.assert_array_equal(touching_borders(labels), expected)
    np.testing.assert_array_equal(class_targets(labels), ((labels > 0) & ~expected).astype(np.uint8))


@pytest.mark.parametrize(
    "function",
    [touching_borders, class_targets, nearest_object_distances, border_weights, as_instance_labels],
)
def test_negative_labels_raise(function):
    labels = touching_squares()
    labels[0, 0] = -1
    with pytest.raises(ValueError):
        function(labels)


@pytest.mark.parametrize("bad", [1.5, np.nan, np.inf])
def test_non_whole_float_labels_raise(bad):
    labels = touching_squares().astype(np.float64)
    labels[0, 0] = bad
    with pytest.raises(ValueError):
        class_targets(labels)


def test_a_mask_with_one_nonzero_value_is_split_into_objects():
    from napari_unet.core.targets import as_instance_labels

    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 2:5] = 255
    mask[6:9, 10:15] = 255
    objects = as_instance_labels(mask)
    assert objects.max() == 2 and set(np.unique(objects[mask > 0])) == {1, 2}


@pytest.mark.parametrize("values", [
    [0, 3, 3, 7, 1000],  # gaps: a table from value to number
    [2, 5, 5, 9],  # no background
    [0, 1, 2**40],  # too far apart for a table: sorted
    [-3, 0, 4],  # negative: sorted
    [0.0, 2.5, 7.0],  # not integers: sorted
])
def test_consecutive_labels_number_objects_in_the_order_of_their_values_by_table_or_by_sorting(values):
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array(values), size=(30, 40))
    numbered, count = consecutive_labels(labels)
    objects = sorted(set(np.unique(labels).tolist()) - {0})
    assert count == len(objects)
    expected = np.zeros(labels.shape, np.int64)
    for number, value in enumerate(objects, start=1):
        expected[labels == value] = number
    np.testing.assert_array_equal(numbered, expected)


def test_label_values_far_above_the_pixel_count_are_numbered_and_measured_without_a_table_of_them():
    labels = np.zeros((40, 50), np.uint64)
    labels[5:15, 5:15] = 2**40  # napari accepts any value; a table indexed by it would need 8 TiB
    labels[20:30, 20:35] = 3 * 2**40
    numbered = as_instance_labels(labels)
    assert numbered.max() == 2 and np.array_equal(numbered > 0, labels > 0)
    np.testing.assert_allclose(equivalent_diameters(labels), np.sqrt(4 * np.array([100, 150]) / np.pi))
    small = labels // 2**40 * 7
    np.testing.assert_array_equal(as_instance_labels(small), small)  # values within the pixel count stay

