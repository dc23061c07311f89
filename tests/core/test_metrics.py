"""Tests of the pixel and instance segmentation metrics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.metrics import (
    DEFAULT_THRESHOLDS,
    MatchCounts,
    average_precision,
    iou_matrix,
    isbi_scores,
    match_counts,
    pixel_scores,
)
from napari_unet.core.synthetic import synthetic_nuclei


def three_squares() -> np.ndarray:
    labels = np.zeros((30, 40), np.int32)
    labels[2:12, 2:12] = 1
    labels[2:12, 20:30] = 2
    labels[16:26, 5:15] = 3
    return labels


def counts_at(counts: MatchCounts, threshold: float) -> tuple[int, int, int]:
    index = counts.thresholds.index(threshold)
    return int(counts.tp[index]), int(counts.fp[index]), int(counts.fn[index])


# --- pixel_scores --------------------------------------------------------------------


def test_pixel_scores_known_counts():
    truth = np.zeros((4, 5), np.int32)
    truth[0, :] = 1
    truth[1, 0] = 2  # 6 foreground pixels
    prediction = np.zeros((4, 5), bool)
    prediction[0, :3] = True
    prediction[3, 4] = True  # 4 pixels, 3 of them correct
    scores = pixel_scores(prediction, truth)
    assert scores["iou"] == pytest.approx(3 / 7)
    assert scores["f1"] == pytest.approx(2 * 3 / (4 + 6))


def test_pixel_scores_with_mask_count_only_masked_pixels():
    truth = np.zeros((4, 5), np.int32)
    truth[0, :] = 1
    prediction = np.zeros((4, 5), np.int32)
    prediction[0, :2] = 5
    prediction[2, :] = 5  # false positives, outside the mask below
    mask = np.zeros((4, 5), bool)
    mask[:2] = True
    unmasked = pixel_scores(prediction, truth)
    masked = pixel_scores(prediction, truth, mask)
    assert masked["iou"] == pytest.approx(2 / 5)
    assert masked["f1"] == pytest.approx(4 / 7)
    assert unmasked["iou"] == pytest.approx(2 / 10)
    assert unmasked["f1"] == pytest.approx(4 / 12)


def test_pixel_scores_perfect_and_empty():
    truth = three_squares()
    assert pixel_scores(truth * 2, truth) == {"iou": 1.0, "f1": 1.0}
    empty = np.zeros_like(truth)
    assert pixel_scores(empty, empty) == {"iou": 1.0, "f1": 1.0}
    assert pixel_scores(empty, truth) == {"iou": 0.0, "f1": 0.0}
    assert pixel_scores(truth, empty) == {"iou": 0.0, "f1": 0.0}
    mask = np.zeros(truth.shape, bool)
    mask[28:, :] = True  # no foreground there
    assert pixel_scores(truth, empty, mask) == {"iou": 1.0, "f1": 1.0}


def test_pixel_scores_shape_mismatch_raises():
    with pytest.raises(ValueError):
        pixel_scores(np.zeros((4, 4)), np.zeros((4, 5)))


# --- iou_matrix ----------------------------------------------------------------------


def test_iou_matrix_perfect_match_with_other_ids():
    truth = three_squares()
    prediction = np.choose(truth, [0, 9, 4, 7])  # ids 9, 4, 7; columns in sorted order 4, 7, 9
    iou = iou_matrix(truth, prediction)
    expected = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    np.testing.assert_allclose(iou, expected)


def test_iou_matrix_shifted_squares():
    truth = np.zeros((20, 40), np.int32)
    truth[5:15, 5:15] = 1
    truth[5:15, 25:35] = 2
    prediction = np.zeros_like(truth)
    prediction[5:15, 7:17] = 1  # shifted by 2: 80 / 120
    prediction[5:15, 30:40] = 2  # shifted by 5: 50 / 150
    iou = iou_matrix(truth, prediction)
    np.testing.assert_allclose(iou, [[2 / 3, 0], [0, 1 / 3]])


def test_iou_matrix_of_overlapping_objects():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10] = 1
    truth[:, 10:] = 2
    prediction = np.zeros_like(truth)
    prediction[:, 5:15] = 1  # half of each truth object
    np.testing.assert_allclose(iou_matrix(truth, prediction), [[50 / 150], [50 / 150]])


def test_iou_matrix_empty_images():
    empty = np.zeros((8, 8), np.int32)
    some = np.zeros((8, 8), np.int32)
    some[1:3, 1:3] = 1
    some[5:7, 5:7] = 2
    assert iou_matrix(empty, empty).shape == (0, 0)
    assert iou_matrix(empty, some).shape == (0, 2)
    assert iou_matrix(some, empty).shape == (2, 0)


def test_iou_matrix_labels_without_background():
    truth = np.ones((4, 6), np.int32)
    truth[:, 3:] = 2
    prediction = np.full((4, 6), 3, np.int32)
    np.testing.assert_allclose(iou_matrix(truth, prediction), [[0.5], [0.5]])


def test_iou_matrix_shape_mismatch_raises():
    with pytest.raises(ValueError):
        iou_matrix(np.zeros((4, 4), int), np.zeros((5, 4), int))


# --- match_counts --------------------------------------------------------------------


def test_perfect_match():
    truth = three_squares()
    counts = match_counts(truth, np.choose(truth, [0, 3, 1, 2]))
    assert counts.thresholds == DEFAULT_THRESHOLDS
    np.testing.assert_array_equal(counts.tp, 3)
    np.testing.assert_array_equal(counts.fp, 0)
    np.testing.assert_array_equal(counts.fn, 0)
    np.testing.assert_array_equal(counts.average_precision, 1.0)


def test_one_missed_object():
    truth = three_squares()
    prediction = np.where(truth == 2, 0, truth)
    counts = match_counts(truth, prediction)
    np.testing.assert_array_equal(counts.tp, 2)
    np.testing.assert_array_equal(counts.fp, 0)
    np.testing.assert_array_equal(counts.fn, 1)
    np.testing.assert_allclose(counts.average_precision, 2 / 3)
    np.testing.assert_allclose(counts.precision, 1.0)
    np.testing.assert_allclose(counts.recall, 2 / 3)


def test_one_false_positive():
    truth = three_squares()
    prediction = truth.copy()
    prediction[27:30, 30:40] = 8
    counts = match_counts(truth, prediction)
    np.testing.assert_array_equal(counts.tp, 3)
    np.testing.assert_array_equal(counts.fp, 1)
    np.testing.assert_array_equal(counts.fn, 0)
    np.testing.assert_allclose(counts.average_precision, 3 / 4)
    np.testing.assert_allclose(counts.precision, 3 / 4)
    np.testing.assert_allclose(counts.recall, 1.0)


def test_split_object_matches_at_most_once():
    truth = np.zeros((12, 12), np.int32)
    truth[1:11, 1:11] = 1
    prediction = np.zeros_like(truth)
    prediction[1:11, 1:6] = 1
    prediction[1:11, 6:11] = 2  # each half has IoU exactly 0.5 with the truth
    counts = match_counts(truth, prediction, thresholds=(0.3, 0.5, 0.55))
    assert counts_at(counts, 0.3) == (1, 1, 0)
    assert counts_at(counts, 0.5) == (1, 1, 0)
    assert counts_at(counts, 0.55) == (0, 2, 1)


def test_merged_prediction_counts_once():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10] = 1
    truth[:, 10:] = 2
    prediction = (truth > 0).astype(np.int32)  # one object over both: IoU 0.5 with each
    counts = match_counts(truth, prediction, thresholds=(0.1, 0.5, 0.75))
    assert counts_at(counts, 0.1) == (1, 0, 1)
    assert counts_at(counts, 0.5) == (1, 0, 1)
    assert counts_at(counts, 0.75) == (0, 1, 2)


def test_matching_is_maximal_not_greedy():
    # A greedy match by highest IoU takes (A, P) and leaves B and Q unmatched;
    # the one-to-one maximum matching is (A, Q) and (B, P).
    truth = np.zeros((1, 20), np.int32)
    truth[0, :10] = 1  # A
    truth[0, 10:] = 2  # B
    prediction = np.zeros_like(truth)
    prediction[0, 0:2] = 2  # Q: IoU 0.2 with A
    prediction[0, 2:14] = 1  # P: IoU 8/14 with A, 4/18 with B
    iou = iou_matrix(truth, prediction)
    np.testing.assert_allclose(iou, [[8 / 14, 2 / 10], [4 / 18, 0]])
    counts = match_counts(truth, prediction, thresholds=(0.15, 0.5, 0.6))
    assert counts_at(counts, 0.15) == (2, 0, 0)
    assert counts_at(counts, 0.5) == (1, 1, 1)
    assert counts_at(counts, 0.6) == (0, 2, 2)


def test_shifted_objects_match_below_their_iou_only():
    truth = np.zeros((20, 40), np.int32)
    truth[5:15, 5:15] = 1
    truth[5:15, 25:35] = 2
    prediction = np.zeros_like(truth)
    prediction[5:15, 7:17] = 1  # IoU 2/3
    prediction[5:15, 26:36] = 2  # IoU 90/110 = 0.818
    counts = match_counts(truth, prediction)
    expected_tp = [(t <= 2 / 3) + (t <= 90 / 110) for t in DEFAULT_THRESHOLDS]
    np.testing.assert_array_equal(counts.tp, expected_tp)
    np.testing.assert_array_equal(counts.fp, 2 - np.array(expected_tp))
    np.testing.assert_array_equal(counts.fn, 2 - np.array(expected_tp))
    assert counts_at(counts, 0.65) == (2, 0, 0)
    assert counts_at(counts, 0.7) == (1, 1, 1)
    assert counts_at(counts, 0.85) == (0, 2, 2)


def test_empty_images():
    empty = np.zeros((10, 10), np.int32)
    some = np.zeros_like(empty)
    some[2:5, 2:5] = 1
    some[6:9, 6:9] = 2
    both_empty = match_counts(empty, empty)
    np.testing.assert_array_equal(both_empty.tp + both_empty.fp + both_empty.fn, 0)
    np.testing.assert_array_equal(both_empty.average_precision, 1.0)
    all_false = match_counts(empty, some)
    np.testing.assert_array_equal(all_false.fp, 2)
    np.testing.assert_array_equal(all_false.average_precision, 0.0)
    np.testing.assert_array_equal(all_false.recall, 1.0)  # nothing to find
    all_missed = match_counts(some, empty)
    np.testing.assert_array_equal(all_missed.fn, 2)
    np.testing.assert_array_equal(all_missed.average_precision, 0.0)
    np.testing.assert_array_equal(all_missed.precision, 1.0)  # nothing found


def test_match_counts_add_and_refuse_different_thresholds():
    a = MatchCounts((0.5, 0.7), np.array([2, 1]), np.array([0, 1]), np.array([1, 2]))
    b = MatchCounts((0.5, 0.7), np.array([1, 0]), np.array([1, 2]), np.array([0, 1]))
    total = a + b
    np.testing.assert_array_equal(total.tp, [3, 1])
    np.testing.assert_array_equal(total.fp, [1, 3])
    np.testing.assert_array_equal(total.fn, [1, 3])
    with pytest.raises(ValueError):
        a + MatchCounts((0.5, 0.75), a.tp, a.fp, a.fn)


# --- average_precision ---------------------------------------------------------------


def test_pooled_and_mean_average_precision_differ():
    perfect = three_squares()
    missed_truth = np.zeros((10, 10), np.int32)
    missed_truth[2:6, 2:6] = 1
    result = average_precision([perfect, missed_truth], [perfect, np.zeros_like(missed_truth)])
    assert result["thresholds"] == list(DEFAULT_THRESHOLDS)
    np.testing.assert_allclose(result["ap_pooled"], 3 / 4)  # 3 TP, 1 FN over both images
    np.testing.assert_allclose(result["ap_mean"], 0.5)  # mean of 1.0 and 0.0
    assert result["tp"] == [3] * len(DEFAULT_THRESHOLDS)
    assert result["fp"] == [0] * len(DEFAULT_THRESHOLDS)
    assert result["fn"] == [1] * len(DEFAULT_THRESHOLDS)


def test_empty_image_pair_changes_mean_but_not_pooled():
    truth = three_squares()
    prediction = np.where(truth == 3, 0, truth)
    empty = np.zeros((5, 5), np.int32)
    alone = average_precision([truth], [prediction], thresholds=(0.5,))
    with_empty = average_precision([truth, empty], [prediction, empty], thresholds=(0.5,))
    assert alone["ap_pooled"] == pytest.approx([2 / 3])
    assert with_empty["ap_pooled"] == pytest.approx([2 / 3])
    assert with_empty["ap_mean"] == pytest.approx([(2 / 3 + 1.0) / 2])


def test_average_precision_of_one_image():
    truth = three_squares()
    prediction = truth.copy()
    prediction[27:30, 30:40] = 8
    result = average_precision(truth, prediction, thresholds=[0.5, 0.9])
    assert result["thresholds"] == [0.5, 0.9]
    assert result["ap_pooled"] == pytest.approx([0.75, 0.75])
    assert result["ap_mean"] == pytest.approx([0.75, 0.75])
    assert result["fp"] == [1, 1]


def test_average_precision_rejects_mismatched_or_empty_input():
    truth = three_squares()
    with pytest.raises(ValueError):
        average_precision([truth, truth], [truth])
    with pytest.raises(ValueError):
        average_precision([], [])


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_isbi_scores_of_a_perfect_segmentation():
    truth = np.array([[1, 1, 0, 2, 2]])
    scores = isbi_scores(truth, truth * 7)  # other ids, same cells
    assert scores == {"pixel_error": 0.0, "v_rand": 1.0, "v_rand_split": 1.0, "v_rand_merge": 1.0}


def test_isbi_scores_of_a_merge():
    # Two cells merged across their boundary pixel: all pairs of the truth kept (split 1),
    # half of the predicted pairs join different cells (merge 8 / 16).
    scores = isbi_scores(np.array([[1, 1, 0, 2, 2]]), np.array([[5, 5, 5, 5, 5]]))
    assert scores["pixel_error"] == pytest.approx(1 / 5)
    assert scores["v_rand_split"] == pytest.approx(1.0)
    assert scores["v_rand_merge"] == pytest.approx(0.5)
    assert scores["v_rand"] == pytest.approx(2 / 3)


def test_isbi_scores_of_a_split_and_of_missed_pixels():
    split = isbi_scores(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 2]]))
    assert (split["v_rand_split"], split["v_rand_merge"], split["pixel_error"]) == pytest.approx((0.5, 1.0, 0.0))
    # Predicted background inside a cell: every such pixel is a segment of its own.
    missed = isbi_scores(np.array([[1, 1]]), np.array([[0, 0]]))
    assert (missed["v_rand_split"], missed["v_rand_merge"], missed["pixel_error"]) == pytest.approx((0.5, 1.0, 1.0))


def test_isbi_scores_pool_planes_and_refuse_mismatches():
    truth = np.array([[[1, 1, 1, 1]], [[1, 1, 0, 2]]])
    prediction = np.array([[[1, 1, 2, 2]], [[1, 1, 0, 2]]])
    # Pooled over both planes: joint 8 + 5, truth 16 + 5, prediction 8 + 5 (squared sizes).
    scores = isbi_scores(truth, prediction)
    assert scores["v_rand_split"] == pytest.approx(13 / 21)
    assert scores["v_rand_merge"] == pytest.approx(1.0)
    assert isbi_scores([truth[0], truth[1]], [prediction[0], prediction[1]]) == scores
    with pytest.raises(ValueError, match="shape"):
        isbi_scores(truth, prediction[:, :, :3])
    with pytest.raises(ValueError, match="planes"):
        isbi_scores(truth, prediction[:1])


def test_a_stack_is_scored_plane_by_plane_as_prediction_numbers_its_objects():
    # Prediction numbers objects per plane: object 1 of plane 0 is not object 1 of plane 1.
    planes = [synthetic_nuclei((64, 64), count=6, seed=seed)[1] for seed in (1, 2)]
    predicted = np.stack(planes)
    truth = predicted.copy()  # the same objects, numbered through the stack
    truth[1][truth[1] > 0] += truth[0].max()
    assert np.isin(predicted[1][predicted[1] > 0], predicted[0][predicted[0] > 0]).any()
    for scores in (average_precision(truth, predicted), average_precision([truth], [predicted])):
        assert scores["ap_pooled"][0] == 1.0 and scores["tp"][0] == sum(len(np.unique(p)) - 1 for p in planes)
    assert isbi_scores(truth, predicted)["v_rand"] == 1.0


def test_a_binary_mask_counts_its_connected_components_as_objects():
    labels = three_squares()
    mask = (labels > 0).astype(np.uint8) * 255
    assert average_precision(mask, labels)["ap_pooled"][0] == 1.0
    assert isbi_scores(mask, labels)["v_rand"] == 1.0
    with pytest.raises(InputError, match="shape"):
        average_precision(mask, labels[:-1])


def test_pixel_counts_of_planes_one_by_one_score_as_the_planes_together():
    from napari_unet.core.metrics import PixelCounts

    rng = np.random.default_rng(1)
    predictions = [rng.integers(0, 3, (20, 30)) for _ in range(3)]
    truths = [rng.integers(0, 4, (20, 30)) for _ in range(3)]
    masks = [rng.random((20, 30)) > 0.3 for _ in range(3)]
    counts = PixelCounts()
    for prediction, truth, mask in zip(predictions, truths, masks):
        counts.add(prediction, truth, mask)
    together = pixel_scores(np.concatenate([p[m] for p, m in zip(predictions, masks)]),
                            np.concatenate([t[m] for t, m in zip(truths, masks)]))
    assert counts.scores() == together
    assert PixelCounts().scores() == {"iou": 1.0, "f1": 1.0}


def test_volumes_are_scored_by_their_3d_objects():
    from napari_unet.core.metrics import label_volumes

    truth = np.zeros((4, 8, 8), np.int32)
    truth[:, 1:4, 1:4], truth[:, 5:8, 5:8] = 1, 2  # two objects through four planes
    # The same objects, numbered per plane (as 2D labels are): right in each plane, wrong in 3D.
    per_plane = truth.copy()
    per_plane[1:3] = np.where(truth[1:3] == 1, 2, np.where(truth[1:3] == 2, 1, 0))
    assert average_precision(truth, per_plane, thresholds=(0.5,))["ap_pooled"] == [1.0]
    in_3d = average_precision(truth, per_plane, thresholds=(0.5,), volumes=True)
    assert in_3d["tp"] == [0] and in_3d["fn"] == [2] and in_3d["fp"] == [2]
    assert average_precision([truth], [truth], thresholds=(0.5,), volumes=True)["tp"] == [2]
    # A TZYX stack gives a volume per time point; a binary mask, its 3D components.
    assert len(label_volumes(np.stack([truth, truth]))) == 2
    assert label_volumes(truth > 0)[0].max() == 2
    with pytest.raises(InputError, match="no z axis"):
        label_volumes(np.zeros((8, 8), np.int32))
