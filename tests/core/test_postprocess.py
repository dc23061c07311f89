"""Tests of the conversion from class probabilities to instance labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet.core.metrics import match_counts
from napari_unet.core.postprocess import (
    FEWEST_OBJECTS_TO_CHOOSE,
    choose_postprocessing,
    foreground_probability,
    growth_distance,
    probabilities_to_labels,
)
from napari_unet.core.targets import class_targets


def probabilities_from_target(target: np.ndarray, num_classes: int, high: float = 0.9) -> np.ndarray:
    """A confident ``(classes, H, W)`` softmax-like map that predicts ``target``."""
    low = (1.0 - high) / (num_classes - 1)
    probabilities = np.full((num_classes, *target.shape), low, np.float32)
    for k in range(num_classes):
        probabilities[k][target == k] = high
    return probabilities


def touching_squares() -> np.ndarray:
    labels = np.zeros((20, 24), np.int32)
    labels[4:12, 4:10] = 1
    labels[4:12, 10:16] = 2
    return labels


def assert_same_objects(result: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to a renumbering of the objects."""
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result > 0, expected > 0)
    pairs = set(zip(result[expected > 0].tolist(), expected[expected > 0].tolist()))
    assert len(pairs) == len(np.unique(expected[expected > 0])) == len(np.unique(result[result > 0]))


def test_touching_objects_are_split_and_grown_back_over_the_gap():
    labels = touching_squares()
    target = class_targets(labels)
    assert np.all(target[4:12, 9:11] == 0)  # the 2-px gap in the class-1 probability
    result = probabilities_to_labels(probabilities_from_target(target, 2), min_size=1)
    assert result.dtype == np.int32
    assert set(np.unique(result)) == {0, 1, 2}
    left, right = result[6, 5], result[6, 14]
    assert left != right and left > 0 and right > 0
    # Every pixel of each original object gets that object's label: the gap is covered.
    assert np.all(result[labels == 1] == left)
    assert np.all(result[labels == 2] == right)
    # The only extra pixels are next to the ends of the gap, in its columns.
    extra = np.argwhere((result > 0) & (labels == 0))
    assert len(extra) <= 4
    assert all(9 <= col <= 10 and row in (3, 12) for row, col in extra)


def test_gap_is_covered_for_a_wider_gap():
    labels = touching_squares()
    target = class_targets(labels, gap=2)
    result = probabilities_to_labels(probabilities_from_target(target, 2), min_size=1, gap=2)
    assert np.all(result[labels == 1] == result[6, 5])
    assert np.all(result[labels == 2] == result[6, 14])
    assert result[6, 5] != result[6, 14]


def test_isolated_objects_are_not_grown():
    labels = np.zeros((40, 40), np.int32)
    labels[3:13, 3:11] = 1
    labels[5:9, 20:35] = 2  # 9 background columns from the first object
    labels[25:35, 5:15] = 3
    labels[20:34, 19:25] = 4  # 4 background columns from object 3
    result = probabilities_to_labels(probabilities_from_target(class_targets(labels), 2))
    assert_same_objects(result, labels)


def test_isolated_object_beside_a_touching_pair_is_not_grown():
    labels = np.zeros((30, 40), np.int32)
    labels[4:12, 4:10] = 1
    labels[4:12, 10:16] = 2
    labels[18:26, 25:35] = 3
    result = probabilities_to_labels(probabilities_from_target(class_targets(labels), 2))
    isolated = result[22, 30]
    np.testing.assert_array_equal(result == isolated, labels == 3)


def test_min_size_removes_small_objects():
    labels = np.zeros((30, 30), np.int32)
    labels[2:10, 2:10] = 1  # 64 px
    labels[15:18, 15:18] = 2  # 9 px
    labels[22:24, 22:27] = 3  # 10 px
    probabilities = probabilities_from_target((labels > 0).astype(np.uint8), 2)
    kept_ten = probabilities_to_labels(probabilities, min_size=10)
    assert_same_objects(kept_ten, np.where(labels == 2, 0, labels))
    kept_eleven = probabilities_to_labels(probabilities, min_size=11)
    assert_same_objects(kept_eleven, np.where(labels == 1, 1, 0))
    kept_all = probabilities_to_labels(probabilities, min_size=0)
    assert_same_objects(kept_all, labels)


def test_labels_are_consecutive_after_removing_small_objects():
    labels = np.zeros((20, 40), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:4, 14:16] = 2  # too small, between the other two
    labels[2:10, 20:30] = 3
    result = probabilities_to_labels(probabilities_from_target((labels > 0).astype(np.uint8), 2))
    assert result.dtype == np.int32
    np.testing.assert_array_equal(np.unique(result), [0, 1, 2])


def test_three_classes_give_full_size_objects():
    labels = touching_squares()
    labels[14:19, 18:23] = 3
    target = class_targets(labels, num_classes=3)
    result = probabilities_to_labels(probabilities_from_target(target, 3), min_size=1)
    assert result.dtype == np.int32
    assert_same_objects(result, labels)
    np.testing.assert_array_equal(np.unique(result), [0, 1, 2, 3])


def test_three_classes_do_not_grow_past_the_predicted_foreground():
    labels = np.zeros((20, 20), np.int32)
    labels[4:14, 4:14] = 1
    target = class_targets(labels, num_classes=3)
    probabilities = probabilities_from_target(target, 3)
    probabilities[:, 4, 4:14] = [[0.9], [0.05], [0.05]]  # top boundary predicted as background
    result = probabilities_to_labels(probabilities, min_size=1)
    expected = labels.copy()
    expected[4, 4:14] = 0
    assert_same_objects(result, expected)


def large_object_probabilities(size: int, rim: int) -> tuple[np.ndarray, np.ndarray]:
    """A three-class output of one disk ``size`` px across whose interior class only clears 0.5 ``rim`` px inside it."""
    yy, xx = np.mgrid[: size + 20, : size + 20] - (size + 20) / 2
    labels = (np.hypot(yy, xx) < size / 2).astype(np.int32)
    core = ndimage.distance_transform_edt(labels) > rim
    probabilities = np.zeros((3, *labels.shape), np.float32)
    probabilities[0] = np.where(labels > 0, 0.05, 0.9)
    probabilities[1] = np.where(core, 0.9, 0.05)  # what a network gives a large cell
    probabilities[2] = 1.0 - probabilities[0] - probabilities[1]
    return probabilities, labels


def test_three_class_objects_grow_over_a_rim_as_wide_as_their_size_calls_for():
    probabilities, labels = large_object_probabilities(size=48, rim=5)
    without = probabilities_to_labels(probabilities, min_size=1)
    assert np.count_nonzero((labels > 0) & (without == 0)) > 300  # the 2 px growth loses the rim
    grown = probabilities_to_labels(probabilities, min_size=1, object_diameter=48)
    assert_same_objects(grown, labels)
    # The diameter is in the network's pixels: a plane brought back 2x larger grows 2x further.
    large = probabilities.repeat(2, axis=1).repeat(2, axis=2)
    grown_large = probabilities_to_labels(large, min_size=1, pixel_scale=2, object_diameter=48)
    assert_same_objects(grown_large, labels.repeat(2, axis=0).repeat(2, axis=1))


def test_growth_distance_is_the_boundary_width_for_small_objects_and_an_eighth_of_large_ones():
    assert growth_distance(1, None) == growth_distance(1, 16) == 2.0
    assert growth_distance(2, 16) == 4.0
    assert growth_distance(1, 56) == 7.0


def test_two_class_growth_does_not_depend_on_the_diameter(nuclei):
    _, labels = nuclei
    probabilities = probabilities_from_target(class_targets(labels, 2), 2)
    probabilities = ndimage.gaussian_filter(probabilities, (0, 1.5, 1.5)).astype(np.float32)
    np.testing.assert_array_equal(probabilities_to_labels(probabilities, 0.3, object_diameter=80),
                                  probabilities_to_labels(probabilities, 0.3))


def test_threshold_applies_to_the_object_class():
    labels = np.zeros((16, 16), np.int32)
    labels[3:12, 3:12] = 1
    probabilities = probabilities_from_target((labels > 0).astype(np.uint8), 2, high=0.6)
    assert probabilities_to_labels(probabilities, threshold=0.5).max() == 1
    assert probabilities_to_labels(probabilities, threshold=0.6).max() == 0


def test_two_class_threshold_under_one_half_extends_objects_without_joining_them():
    # Two cells behind a faint membrane (foreground 0.4 across it), each with a faint rim.
    cell = np.zeros((2, 16, 30), np.float32)
    cell[1] = 0.05
    cell[1, 4:12, 4:13] = 0.9
    cell[1, 4:12, 15:24] = 0.9
    cell[1, 4:12, 13:15] = 0.4  # the membrane: not certainly background
    cell[1, 4:12, 24:26] = 0.4  # a faint rim of the second cell
    cell[0] = 1.0 - cell[1]
    labels = probabilities_to_labels(cell, threshold=0.35, min_size=1)
    assert labels.max() == 2
    assert labels[8, 8] != labels[8, 20] and labels[8, 8] > 0 and labels[8, 20] > 0
    assert labels[8, 25] == labels[8, 20]  # the rim extends the second cell
    assert labels[8, 13] == labels[8, 8] and labels[8, 14] == labels[8, 20]  # the membrane is shared out
    assert labels[2, 8] == 0 and labels[8, 27] == 0  # below the threshold stays background
    assert probabilities_to_labels(cell, threshold=0.5, min_size=1)[8, 25] == 0  # 0.5: no rim


def _bridged_pairs(bridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of touching pairs whose interiors are joined by a ``bridge``-high neck."""
    labels = np.zeros((24, 60), np.int32)
    for pair, left in enumerate((4, 32)):
        labels[6:18, left : left + 12] = 2 * pair + 1
        labels[6:18, left + 12 : left + 24] = 2 * pair + 2
    probabilities = probabilities_from_target(class_targets(labels, num_classes=3), 3)
    for left in (4, 32):
        neck = (slice(9, 15), slice(left + 11, left + 13))
        probabilities[:, neck[0], neck[1]] = np.array([0.05, bridge, 0.95 - bridge])[:, None, None]
    return probabilities, labels


def _enough(pair: tuple[np.ndarray, np.ndarray]) -> tuple[list, list]:
    """Copies of one plane, with enough objects among them to choose a threshold on."""
    copies = FEWEST_OBJECTS_TO_CHOOSE // pair[1].max() + 1
    return [pair[0]] * copies, [pair[1]] * copies


def test_choosing_the_threshold_finds_the_one_that_separates_touching_objects():
    probabilities, labels = _bridged_pairs(bridge=0.6)  # above 0.5: merged at the usual threshold
    assert probabilities_to_labels(probabilities, 0.5, min_size=1).max() == 2
    chosen, separation = choose_postprocessing(*_enough((probabilities, labels)), current=0.5, min_size=1)
    assert 0.6 <= chosen < 0.9 and separation == "seeds"
    assert probabilities_to_labels(probabilities, chosen, min_size=1).max() == 4


def test_choosing_the_threshold_keeps_the_current_one_unless_another_is_better():
    probabilities, labels = _bridged_pairs(bridge=0.3)  # every threshold from 0.3 up separates them
    assert choose_postprocessing(*_enough((probabilities, labels)), current=0.55, min_size=1) == (0.55, "seeds")
    assert choose_postprocessing([], [], current=0.42, separation="peaks") == (0.42, "peaks")


def test_choosing_the_threshold_breaks_equal_aps_by_pixel_iou():
    # Two-class cells whose annotated extent includes a faint rim (0.42): every threshold
    # finds them all (same AP), the ones under 0.42 also outline them whole.
    labels = np.zeros((20, 40), np.int32)
    labels[4:16, 4:16], labels[4:16, 22:34] = 1, 2
    probabilities = np.zeros((2, 20, 40), np.float32)
    probabilities[1] = np.where(labels > 0, 0.42, 0.05)
    probabilities[1][ndimage.binary_erosion(labels > 0)] = 0.9  # matched with or without the rim
    probabilities[0] = 1.0 - probabilities[1]
    chosen = choose_postprocessing(*_enough((probabilities, labels)), current=0.5, min_size=1)
    assert chosen == (0.4, "seeds")  # of the equally good 0.3, 0.35 and 0.4, the nearest to 0.5


def test_choosing_the_threshold_keeps_the_current_one_on_few_objects():
    probabilities, labels = _bridged_pairs(bridge=0.6)
    few = [probabilities] * 10, [labels] * 10  # 40 objects: better at 0.65, but too few to tell
    assert choose_postprocessing(*few, current=0.5, min_size=1) == (0.5, "seeds")


def _necked_pair(classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two discs of 20 pixels overlapping in a neck of about 9, whose interior the network left joined."""
    yy, xx = np.mgrid[:40, :60]
    first, second = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100, (yy - 20) ** 2 + (xx - 38) ** 2 <= 100
    truth = np.where(first, 1, np.where(second, 2, 0)).astype(np.int32)
    inside = ndimage.binary_erosion(first | second, iterations=2)
    probabilities = np.zeros((classes, 40, 60), np.float32)
    probabilities[1] = np.where(inside, 0.9, np.where(first | second, 0.1, 0.0))
    if classes == 3:
        probabilities[2] = np.where((first | second) & ~inside, 0.85, 0.05)
    probabilities[0] = 1.0 - probabilities[1:].sum(axis=0)
    return probabilities, truth


@pytest.mark.parametrize("classes", [2, 3])
def test_peaks_part_objects_joined_by_a_neck_that_seeds_keep_together(classes):
    probabilities, truth = _necked_pair(classes)
    assert probabilities_to_labels(probabilities, 0.5, min_size=1, object_diameter=20).max() == 1
    labels = probabilities_to_labels(probabilities, 0.5, min_size=1, object_diameter=20, separation="peaks")
    assert labels.dtype == np.int32 and labels.max() == 2
    assert match_counts(truth, labels, (0.5,)).tp[0] == 2  # each disc is itself, parted at the neck
    # Without the diameter, the separated parts' size stands for it.
    assert probabilities_to_labels(probabilities, 0.5, min_size=1, separation="peaks").max() == 2
    # A tensor's labels come back as a tensor, the same.
    on_tensor = probabilities_to_labels(torch.from_numpy(probabilities), 0.5, min_size=1, object_diameter=20,
                                        separation="peaks")
    assert isinstance(on_tensor, torch.Tensor) and np.array_equal(on_tensor.numpy(), labels)
    with pytest.raises(ValueError, match="separation"):
        probabilities_to_labels(probabilities, separation="flood")


def test_choosing_the_separation_takes_peaks_where_they_are_clearly_better():
    probabilities, truth = _necked_pair()
    chosen = choose_postprocessing(*_enough((probabilities, truth)), current=0.5, min_size=1, object_diameter=20)
    assert chosen == (0.5, "peaks")  # no threshold parts them with seeds
    # Where seeds do as well, they stay.
    probabilities, labels = _bridged_pairs(bridge=0.3)
    assert choose_postprocessing(*_enough((probabilities, labels)), current=0.55, min_size=1)[1] == "seeds"


def test_choosing_finds_the_best_threshold_of_another_separation():
    # A necked pair that only peaks part, beside a faint object whose interior only
    # thresholds under 0.45 find: the best is peaks at a lower threshold, which neither
    # the seeds' best threshold nor peaks at the current one reaches.
    necked, truth = _necked_pair()
    probabilities = np.concatenate([necked, np.zeros((3, 40, 30), np.float32)], axis=2)
    truth = np.concatenate([truth, np.zeros((40, 30), np.int32)], axis=1)
    yy, xx = np.mgrid[:40, :90]
    faint = (yy - 20) ** 2 + (xx - 72) ** 2 <= 64
    core = ndimage.binary_erosion(faint, iterations=2)
    truth[faint] = 3
    probabilities[1][faint] = np.where(core[faint], 0.42, 0.05)
    probabilities[2][faint] = np.where(core[faint], 0.45, 0.9)
    probabilities[0] = 1.0 - probabilities[1:].sum(axis=0)
    threshold, separation = choose_postprocessing(*_enough((probabilities, truth)), current=0.5, min_size=1,
                                                  object_diameter=20)
    assert separation == "peaks" and threshold < 0.42
    found = probabilities_to_labels(probabilities, threshold, min_size=1, object_diameter=20, separation=separation)
    assert match_counts(truth, found, (0.5,)).tp[0] == 3


def test_empty_prediction_gives_empty_labels():
    probabilities = np.zeros((2, 12, 14), np.float32)
    probabilities[0] = 1.0
    result = probabilities_to_labels(probabilities)
    assert result.dtype == np.int32
    assert result.shape == (12, 14)
    assert not result.any()


def test_foreground_probability():
    probabilities = np.array([[[0.7, 0.1]], [[0.2, 0.3]], [[0.1, 0.6]]])
    np.testing.assert_allclose(foreground_probability(probabilities), [[0.3, 0.9]])


@pytest.mark.parametrize("num_classes", [2, 3])
def test_generated_nuclei_are_recovered_from_their_targets(nuclei, num_classes):
    _, labels = nuclei
    target = class_targets(labels, num_classes)
    result = probabilities_to_labels(probabilities_from_target(target, num_classes))
    counts = match_counts(labels, result, thresholds=(0.5,))
    assert counts.average_precision[0] >= 0.9
    assert result.dtype == np.int32
    np.testing.assert_array_equal(np.unique(result), np.arange(result.max() + 1))


@pytest.mark.parametrize("distance", [1, 2, 3])
def test_growing_labels_finds_the_nearest_object_like_skimage(distance):
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    from napari_unet.core.postprocess import _nearest_labels

    rng = np.random.default_rng(distance)
    seeds = ndimage.label(ndimage.gaussian_filter(rng.random((80, 90)), 2) > 0.52)[0].astype(np.int32)
    pixels = (seeds == 0) & (rng.random(seeds.shape) < 0.7)
    ours = _nearest_labels(seeds, np.flatnonzero(pixels), distance)
    theirs = expand_labels(seeds, distance)[pixels]
    np.testing.assert_array_equal(ours > 0, theirs > 0)
    # Where two objects are equally near either may be chosen; elsewhere the same one.
    ys, xs = np.nonzero(pixels)
    for index in np.flatnonzero(ours != theirs):
        nearest = {}
        for label in (ours[index], theirs[index]):
            oy, ox = np.nonzero(seeds == label)
            nearest[label] = np.min(np.hypot(oy - ys[index], ox - xs[index]))
        assert nearest[ours[index]] == pytest.approx(nearest[theirs[index]])
    assert (ours > 0).sum() > 100  # the case is not empty


@pytest.mark.parametrize("num_classes", [2, 3])
def test_probabilities_brought_back_from_a_smaller_grid_grow_over_wider_boundaries(num_classes):
    # A plane shrunk 4x for the network: its boundaries come back 4x wider.
    labels = touching_squares()
    probabilities = probabilities_from_target(class_targets(labels, num_classes=num_classes), num_classes)
    large_probabilities = probabilities.repeat(4, axis=1).repeat(4, axis=2)
    large_labels = labels.repeat(4, axis=0).repeat(4, axis=1)
    scaled = probabilities_to_labels(large_probabilities, min_size=1, pixel_scale=4)
    unscaled = probabilities_to_labels(large_probabilities, min_size=1)
    assert scaled.max() == unscaled.max() == 2
    missing_scaled = np.count_nonzero((large_labels > 0) & (scaled == 0))
    missing_unscaled = np.count_nonzero((large_labels > 0) & (unscaled == 0))
    assert missing_scaled < missing_unscaled / 2
    assert missing_scaled <= 0.05 * np.count_nonzero(large_labels)


@pytest.mark.parametrize("shape", [(40, 53), (1, 30), (30, 1), (3, 3)])
def test_window_extremes_equal_scipys_filters(shape):
    from scipy import ndimage

    from napari_unet.core.postprocess import _window_extreme

    values = np.random.default_rng(sum(shape)).integers(0, 50, shape).astype(np.int32)
    for size in (1, 3, 5, 9, 13, 17):  # the gap windows 4 * gap + 1, and sizes between
        np.testing.assert_array_equal(_window_extreme(values, size, 0, np.maximum),
                                      ndimage.maximum_filter(values, size=size, mode="constant", cval=0))
        np.testing.assert_array_equal(_window_extreme(values, size, 99, np.minimum),
                                      ndimage.minimum_filter(values, size=size, mode="constant", cval=99))


# --- the same labels from tensors, as on the GPU that predicted them -----------------


def _masks_to_label() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    serpentine = np.zeros((21, 30), bool)  # one component, 300 pixels long: many passes without jumps
    serpentine[::2] = True
    serpentine[1::4, -1] = serpentine[3::4, 0] = True
    corners = np.zeros((6, 6), bool)
    corners[[1, 2, 3], [1, 2, 3]] = True  # touching by corners only: three components
    return {
        "random": rng.random((61, 83)) < 0.55,  # near percolation: branching, holes, many sizes
        "blobs": ndimage.gaussian_filter(rng.random((70, 64)), 2) > 0.5,
        "serpentine": serpentine,
        "corners": corners,
        "empty": np.zeros((9, 11), bool),
        "full": np.ones((9, 11), bool),
        "row": rng.random((1, 40)) < 0.6,
        "column": rng.random((40, 1)) < 0.6,
        "pixel": np.ones((1, 1), bool),
    }


@pytest.mark.parametrize("name", list(_masks_to_label()))
@pytest.mark.parametrize("min_size", [1, 4])
def test_components_of_a_tensor_are_numbered_as_scipy_numbers_them(name, min_size):
    from napari_unet.core.postprocess import _seeds

    mask = _masks_to_label()[name]
    expected = _seeds(mask, min_size)
    result = _seeds(torch.from_numpy(mask), min_size)
    assert result.dtype == torch.int32
    np.testing.assert_array_equal(result.numpy(), expected)
    if name == "corners":
        assert expected.max() == (3 if min_size == 1 else 0)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize(("pixel_scale", "object_diameter"), [(1.0, None), (2.5, None), (1.0, 40.0)])
def test_labels_of_a_tensor_equal_those_of_an_array(nuclei, num_classes, pixel_scale, object_diameter):
    _, labels = nuclei
    probabilities = probabilities_from_target(class_targets(labels, num_classes), num_classes)
    # Blur, so that thresholds cut the objects at different places.
    probabilities = ndimage.gaussian_filter(probabilities, (0, 1.5, 1.5)).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        expected = probabilities_to_labels(probabilities, threshold, 10, 1, pixel_scale, object_diameter)
        result = probabilities_to_labels(torch.from_numpy(probabilities), threshold, 10, 1, pixel_scale, object_diameter)
        np.testing.assert_array_equal(result.numpy(), expected)
    assert expected.max() >= 5


def test_labels_of_a_tensor_that_is_a_view_equal_those_of_its_array(nuclei):
    _, labels = nuclei
    probabilities = ndimage.gaussian_filter(probabilities_from_target(class_targets(labels, 3), 3), (0, 1, 1))
    turned = torch.from_numpy(probabilities).transpose(1, 2)  # not contiguous
    expected = probabilities_to_labels(np.ascontiguousarray(probabilities.transpose(0, 2, 1)), 0.5, 10, 1, 3.0)
    np.testing.assert_array_equal(probabilities_to_labels(turned, 0.5, 10, 1, 3.0).numpy(), expected)
    assert expected.max() >= 5


def test_labels_of_real_probabilities_are_the_same_from_a_tensor(shared_data):
    import tifffile

    from napari_unet.core.predict import predict_probabilities
    from napari_unet.core.progress import run_to_end
    from napari_unet.core.registry import load_model

    cases = [("nuclei", tifffile.imread(shared_data / "dsb2018" / "images" / name))
             for name in sorted(p.name for p in (shared_data / "dsb2018" / "images").glob("*.tif"))[:2]]
    cases.append(("em-neurites", tifffile.imread(shared_data / "isbi2012" / "volume.tif")[0, :256, :256]))
    for model_name, image in cases:
        model = load_model(model_name)
        planes = model.normalization(image.reshape(-1, *image.shape[-2:])[:1])
        probabilities = run_to_end(predict_probabilities(model.network, planes, device="cpu"))
        for threshold in (0.2, model.threshold, 0.7):
            for gap in (model.gap, 2):
                expected = probabilities_to_labels(probabilities, threshold, 10, gap)
                result = probabilities_to_labels(torch.from_numpy(probabilities), threshold, 10, gap)
                np.testing.assert_array_equal(result.numpy(), expected, err_msg=f"{model_name} {threshold} {gap}")
        assert expected.max() >= 10, model_name


def test_gaps_are_found_alike_with_labels_beyond_16_bits():
    from napari_unet.core.postprocess import _gap_pixels

    seeds = ndimage.label(ndimage.gaussian_filter(np.random.default_rng(3).random((90, 80)), 2) > 0.5)[0]
    seeds = seeds.astype(np.int32)
    many = np.where(seeds > 0, seeds + 70_000, 0).astype(np.int32)  # as on a plane of more than 65535 objects
    gaps = _gap_pixels(seeds, 1)
    np.testing.assert_array_equal(_gap_pixels(many, 1), gaps)
    np.testing.assert_array_equal(_gap_pixels(torch.from_numpy(many), 1).numpy(), gaps)
    assert gaps.sum() > 20 and seeds.max() > 5


def test_choosing_the_threshold_holds_the_outputs_of_one_plane_at_a_time():
    import gc
    import weakref

    probabilities, labels = _bridged_pairs(bridge=0.6)
    planes, truths = _enough((probabilities, labels))
    given = []

    def one_by_one():
        for plane in planes:
            gc.collect()
            # The plane before this one may still be the loop's; none before it.
            assert all(ref() is None for ref in given[:-1])
            copy = plane.copy()
            given.append(weakref.ref(copy))
            yield copy

    chosen = choose_postprocessing(one_by_one(), truths, current=0.5, min_size=1)
    assert len(given) == len(planes) >= 3
    assert chosen == choose_postprocessing(planes, truths, current=0.5, min_size=1) and 0.6 <= chosen[0] < 0.9


@pytest.mark.parametrize("shape", [(40, 50), (12, 30, 34)])
def test_h_maxima_finds_the_peaks_scikit_image_finds(shape):
    from skimage.morphology import h_maxima as scikit_h_maxima

    from napari_unet.core.peaks import h_maxima

    rng = np.random.default_rng(len(shape))
    # Smoothed noise, with plateaus (rounded) and a flat region, as a distance map has.
    image = np.round(ndimage.gaussian_filter(rng.random(shape).astype(np.float32) * 20, 2), 1)
    image[: shape[0] // 4] = 0
    for height in (0.3, 1.0, 2.5):
        expected = scikit_h_maxima(image, np.float32(height))
        assert expected.any()
        np.testing.assert_array_equal(h_maxima(image, height), expected)
    assert not h_maxima(image, 1e6).any()
