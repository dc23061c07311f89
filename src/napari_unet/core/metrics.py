"""Pixel and instance metrics for segmentation results.

Instance average precision follows the convention of the StarDist and Cellpose papers and
the 2018 Data Science Bowl: predicted and ground-truth objects are matched one-to-one
(maximum matching among pairs with IoU >= threshold), and AP = TP / (TP + FP + FN).
:func:`isbi_scores` gives the measures of the ISBI 2012 EM segmentation challenge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import InputError
from .targets import as_instance_labels, consecutive_labels

__all__ = [
    "DEFAULT_THRESHOLDS",
    "pixel_scores",
    "PixelCounts",
    "iou_matrix",
    "MatchCounts",
    "match_counts",
    "label_volumes",
    "average_precision",
    "isbi_scores",
    "label_planes",
]

#: IoU thresholds 0.5, 0.55, ..., 0.95.
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2).tolist())


def pixel_scores(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Foreground IoU and F1 (= Dice) of two masks or label images (nonzero = foreground).

    Args:
        prediction: Predicted mask or labels.
        truth: Ground-truth mask or labels of the same shape.
        mask: Pixels to count; all when None.

    Returns:
        ``{"iou": ..., "f1": ...}``; both 1.0 when neither has foreground.
    """
    counts = PixelCounts()
    counts.add(prediction, truth, mask)
    return counts.scores()


@dataclass
class PixelCounts:
    """Foreground pixels of predictions and truths, summed plane by plane for :func:`pixel_scores`.

    Scores of many planes without holding them all: a validation stack of 2048x2048
    planes would otherwise keep every plane's labels until the end.
    """

    overlap: int = 0  # foreground in both
    extent: int = 0  # foreground in either
    total: int = 0  # foreground in the prediction plus foreground in the truth

    def add(self, prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Count one more pair of planes (see :func:`pixel_scores` for the arguments)."""
        pred = np.asarray(prediction) > 0
        true = np.asarray(truth) > 0
        if pred.shape != true.shape:
            raise InputError(f"prediction shape {pred.shape} differs from ground truth {true.shape}")
        if mask is not None:
            pred, true = pred[mask], true[mask]
        self.overlap += np.count_nonzero(pred & true)
        self.extent += np.count_nonzero(pred | true)
        self.total += np.count_nonzero(pred) + np.count_nonzero(true)

    def scores(self) -> dict:
        """``{"iou": ..., "f1": ...}`` of the planes counted; both 1.0 when neither has foreground."""
        return {
            "iou": self.overlap / self.extent if self.extent else 1.0,
            "f1": 2 * self.overlap / self.total if self.total else 1.0,
        }


def iou_matrix(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth object (rows) with every predicted object (columns)."""
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise InputError(f"prediction shape {prediction.shape} differs from ground truth {truth.shape}")
    true_ids, n_true = consecutive_labels(truth)
    pred_ids, n_pred = consecutive_labels(prediction)
    overlap = np.bincount(
        (true_ids * (n_pred + 1) + pred_ids).ravel(), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    true_area = overlap.sum(axis=1, keepdims=True)
    pred_area = overlap.sum(axis=0, keepdims=True)
    union = true_area + pred_area - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, overlap / union, 0.0)
    return iou[1:, 1:]


@dataclass
class MatchCounts:
    """True positives, false positives and false negatives at each IoU threshold."""

    thresholds: tuple[float, ...]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    def __add__(self, other: MatchCounts) -> MatchCounts:
        if self.thresholds != other.thresholds:
            raise ValueError("cannot add counts at different thresholds")
        return MatchCounts(self.thresholds, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def average_precision(self) -> np.ndarray:
        """TP / (TP + FP + FN) per threshold (1.0 where there is nothing to find or find)."""
        total = self.tp + self.fp + self.fn
        return np.where(total > 0, self.tp / np.maximum(total, 1), 1.0)

    @property
    def precision(self) -> np.ndarray:
        found = self.tp + self.fp
        return np.where(found > 0, self.tp / np.maximum(found, 1), 1.0)

    @property
    def recall(self) -> np.ndarray:
        present = self.tp + self.fn
        return np.where(present > 0, self.tp / np.maximum(present, 1), 1.0)


def match_counts(
    truth: np.ndarray, prediction: np.ndarray, thresholds=DEFAULT_THRESHOLDS
) -> MatchCounts:
    """Count one-to-one matches between objects of two label images.

    Args:
        truth: Ground-truth instance labels.
        prediction: Predicted instance labels of the same shape.
        thresholds: IoU thresholds; a pair matches when its IoU is at least the threshold.
    """
    thresholds = tuple(float(t) for t in thresholds)
    iou = iou_matrix(truth, prediction)
    n_true, n_pred = iou.shape
    tp = np.zeros(len(thresholds), np.int64)
    for index, threshold in enumerate(thresholds):
        if n_true and n_pred:
            eligible = iou >= threshold
            if threshold > 0.5:
                # Above 0.5 IoU each object can overlap that much with at most one other.
                tp[index] = int(eligible.sum())
            else:
                rows, cols = linear_sum_assignment(-(eligible + iou * 1e-3))
                tp[index] = int(eligible[rows, cols].sum())
    return MatchCounts(thresholds, tp, n_pred - tp, n_true - tp)


def average_precision(
    truths, predictions, thresholds=DEFAULT_THRESHOLDS, volumes: bool = False
) -> dict:
    """Instance AP of a set of images, pooled and as the per-image mean.

    Each plane is an image of its own: a stack (or a list of stacks) is scored plane by
    plane, as prediction numbers its objects per plane. A binary mask (one value for all
    objects) counts its connected components as objects, as training does.

    Args:
        truths: Ground-truth label images: one image, a stack, or a list of them.
        predictions: Predicted label images, in the same order and shapes.
        thresholds: IoU thresholds.
        volumes: Score z-stacks as volumes instead (:func:`label_volumes`): objects are
            matched by their 3D IoU, as 3D labels number them.

    Returns:
        ``{"thresholds", "ap_pooled", "ap_mean", "tp", "fp", "fn"}``; the APs are lists,
        one value per threshold. "Pooled" sums the counts over all images (the StarDist
        paper's figure); "mean" averages the per-image APs (the Data Science Bowl's score
        when averaged over the thresholds 0.5 to 0.95).
    """
    split = label_volumes if volumes else label_planes
    truths, predictions = split(truths), split(predictions)
    if len(truths) != len(predictions):
        raise InputError(f"{len(truths)} ground-truth {'volumes' if volumes else 'planes'} but {len(predictions)} "
                         "predictions")
    for truth, prediction in zip(truths, predictions):
        if truth.shape != prediction.shape:
            raise InputError(f"prediction shape {prediction.shape} differs from ground truth {truth.shape}")
    per_image = [match_counts(t, p, thresholds) for t, p in zip(truths, predictions)]
    if not per_image:
        raise InputError("no images to evaluate")
    pooled = per_image[0]
    for counts in per_image[1:]:
        pooled = pooled + counts
    mean = np.mean([counts.average_precision for counts in per_image], axis=0)
    return {
        "thresholds": list(pooled.thresholds),
        "ap_pooled": pooled.average_precision.tolist(),
        "ap_mean": mean.tolist(),
        "tp": pooled.tp.tolist(),
        "fp": pooled.fp.tolist(),
        "fn": pooled.fn.tolist(),
    }


def isbi_scores(truths, predictions) -> dict:
    """Pixel error and foreground-restricted Rand scores of the ISBI 2012 challenge.

    Cells are told apart by label (0 = boundary/background); each plane is a separate
    segmentation, and the scores pool all planes. The pixel error is the share of pixels
    whose foreground/background class differs. The Rand scores count pixel pairs over
    the ground truth's foreground only, where predicted background pixels count as
    single-pixel segments. With ``n_ij`` the pixels in predicted segment i and true
    segment j, ``V_split = sum n_ij^2 / sum_j t_j^2`` and ``V_merge = sum n_ij^2 /
    sum_i s_i^2`` (t, s the true and predicted segment sizes); ``V_rand`` is their
    harmonic mean (1 is perfect).

    Args:
        truths: Ground-truth label planes: one image, a stack, or a list of them.
        predictions: Predicted label planes in the same order and shapes.

    Returns:
        ``{"pixel_error", "v_rand", "v_rand_split", "v_rand_merge"}``.
    """
    truths, predictions = label_planes(truths), label_planes(predictions)
    if len(truths) != len(predictions):
        raise InputError(f"{len(truths)} ground-truth planes but {len(predictions)} predictions")
    wrong = pixels = 0
    joint = true_squares = predicted_squares = 0.0
    for truth, prediction in zip(truths, predictions):
        if truth.shape != prediction.shape:
            raise InputError(f"prediction shape {prediction.shape} differs from ground truth {truth.shape}")
        wrong += int(np.count_nonzero((truth > 0) != (prediction > 0)))
        pixels += truth.size
        foreground = truth > 0
        true_ids = truth[foreground].astype(np.int64)
        predicted = prediction[foreground].astype(np.int64)
        if true_ids.size == 0:
            continue
        # Predicted background pixels become singletons: negative ids of their own.
        predicted = np.where(predicted > 0, predicted, -1 - np.arange(predicted.size))
        joint += _sum_of_squares(np.unique(np.stack([predicted, true_ids]), axis=1, return_counts=True)[1])
        true_squares += _sum_of_squares(np.unique(true_ids, return_counts=True)[1])
        predicted_squares += _sum_of_squares(np.unique(predicted, return_counts=True)[1])
    split = joint / true_squares if true_squares else 1.0
    merge = joint / predicted_squares if predicted_squares else 1.0
    return {
        "pixel_error": wrong / pixels if pixels else 0.0,
        "v_rand": 2 * split * merge / (split + merge) if split + merge else 0.0,
        "v_rand_split": split,
        "v_rand_merge": merge,
    }


def label_planes(images) -> list[np.ndarray]:
    """The 2D instance label planes of one image, a stack, or a list of them, as the metrics score them.

    Binary masks (one value for all objects) become their connected components, plane by
    plane (see :func:`~napari_unet.core.targets.as_instance_labels`).
    """
    if isinstance(images, np.ndarray):
        images = [images]
    return [as_instance_labels(plane) for image in images
            for plane in np.asarray(image).reshape(-1, *np.shape(image)[-2:])]


def label_volumes(images) -> list[np.ndarray]:
    """The 3D instance label volumes of one z-stack, a TZYX stack or a list of them, as 3D scores take them.

    The last three axes are Z, Y and X; any axis before them (T) gives a volume each.
    Binary masks become their 3D connected components.

    Raises:
        InputError: If an image has fewer than three axes.
    """
    if isinstance(images, np.ndarray):
        images = [images]
    volumes = []
    for image in images:
        image = np.asarray(image)
        if image.ndim < 3:
            raise InputError(f"3D scores need z-stacks (Z, Y, X); an image of shape {image.shape} has no z axis")
        volumes += [as_instance_labels(volume) for volume in image.reshape(-1, *image.shape[-3:])]
    return volumes


def _sum_of_squares(counts: np.ndarray) -> float:
    return float(np.sum(counts.astype(np.float64) ** 2))
