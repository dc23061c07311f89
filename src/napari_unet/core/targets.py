"""Training targets and the border weight map of the U-Net paper, from instance labels.

Instance labels use 0 for background and 1..N for objects. The U-Net separates touching
objects by learning a thin background gap between them, and the weight map

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

makes those gaps count: ``w_c`` balances the class frequencies and ``d1``/``d2`` are the
distances to the nearest and second-nearest object. The border term is applied where the
target is background (the true background and the gaps), as in the paper's Fig. 3d.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .defaults import BORDER_SIGMA, BORDER_W0
from .errors import InputError

__all__ = [
    "as_instance_labels",
    "consecutive_labels",
    "intensity_image_warning",
    "touching_borders",
    "class_targets",
    "class_balance_weights",
    "nearest_object_distances",
    "border_weights",
    "BORDER_TERM_TOLERANCE",
]

#: The border term is left out (taken as 0) where it is below this value.
BORDER_TERM_TOLERANCE = 1e-6

#: Largest class-balancing weight, so that one tiny object cannot dominate an image.
MAX_CLASS_WEIGHT = 10.0


def consecutive_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels numbered 1..n in the order of their values (0 stays background), and n."""
    if labels.dtype.kind in "ui" and labels.size:
        low, high = labels.min(), labels.max()
        if low >= 0 and high <= 4 * labels.size:
            # A table from value to number: one pass over the pixels, where np.unique sorts
            # them (a fifth of a validation of 20 DSB2018 images went into sorting labels).
            present = np.zeros(int(high) + 1, bool)
            present[labels] = True
            present[0] = False
            numbers = np.cumsum(present)
            return numbers[labels], int(numbers[-1])
    values, inverse = np.unique(labels, return_inverse=True)
    objects = values != 0
    numbers = np.cumsum(objects) * objects  # of each distinct value; 0 for the background
    return numbers[inverse].reshape(labels.shape), int(objects.sum())


def intensity_image_warning(labels: np.ndarray) -> str | None:
    """What to tell a user whose label image looks like an intensity image given by mistake; None when it does not.

    Instance labels change value only where two objects touch: neighbouring object pixels
    differ in under 2 % of places in the DSB2018 and ISBI labels, and in 30 to 97 % in
    their images. Over a fifth is taken for an image.
    """
    labels = np.asarray(labels)
    left, right = labels[..., :-1], labels[..., 1:]
    both = (left != 0) & (right != 0)
    pairs = int(both.sum())
    differing = int((both & (left != right)).sum())
    if pairs < 100 or differing <= 0.2 * pairs:
        return None
    return (f"the labels look like an image, not labels: neighbouring object pixels have different numbers in "
            f"{differing / pairs:.0%} of places, where labels give all pixels of an object one number "
            "(0 = background); check that the label images are given as labels, not the images")


def as_instance_labels(labels: np.ndarray) -> np.ndarray:
    """Integer instance labels from integer, float or binary input.

    A binary mask (bool, or a single nonzero value such as 0/1 or 0/255) is split into
    connected components, one object each. Values far above the pixel count (napari
    allows any, such as 2**40) are numbered 1..n, so that tables indexed by label fit in
    memory.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return ndimage.label(labels)[0]
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError("labels must hold whole numbers (0 = background, 1..N = objects)")
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError("labels must not be negative (0 = background, 1..N = objects)")
    objects = labels[labels > 0]
    if objects.size and objects.min() == objects.max():
        # One value for all objects: a mask, whose touching objects could never be told apart.
        return ndimage.label(labels > 0)[0]
    if objects.size and objects.max() > labels.size:
        return consecutive_labels(labels)[0]
    return labels


def touching_borders(labels: np.ndarray, gap: int = 1) -> np.ndarray:
    """Object pixels that have a pixel of another object within ``gap`` pixels (chessboard).

    Args:
        labels: 2D instance labels.
        gap: Radius of the neighbourhood; the gap between two touching objects is
            ``2 * gap`` pixels wide.

    Returns:
        Boolean mask of the pixels that become background to separate touching objects.
    """
    labels = as_instance_labels(labels)
    size = 2 * gap + 1
    highest = ndimage.maximum_filter(labels, size=size, mode="nearest")
    # Background must not count as "another object" for the minimum: lift it above all labels.
    # (Not to the int64 maximum: scipy's rank filters lose it to a float round trip.)
    lifted = np.where(labels == 0, int(labels.max(initial=0)) + 1, labels.astype(np.int64))
    lowest = ndimage.minimum_filter(lifted, size=size, mode="nearest")
    return (labels > 0) & ((highest != labels) | (lowest != labels))


def class_targets(labels: np.ndarray, num_classes: int = 2, gap: int = 1) -> np.ndarray:
    """Per-pixel classes from instance labels.

    Args:
        labels: 2D instance labels (a boolean mask is split into connected components).
        num_classes: 2 gives background 0 and foreground 1 with a gap between touching
            objects; 3 gives background 0, object interior 1 and object boundary 2.
        gap: Gap radius for two classes (see :func:`touching_borders`).

    Returns:
        uint8 array of class indices.
    """
    labels = as_instance_labels(labels)
    target = np.zeros(labels.shape, np.uint8)
    if num_classes == 2:
        target[(labels > 0) & ~touching_borders(labels, gap)] = 1
    elif num_classes == 3:
        from skimage.segmentation import find_boundaries

        boundary = find_boundaries(labels, mode="inner") & (labels > 0)
        target[labels > 0] = 1
        target[boundary] = 2
    else:
        raise ValueError(f"num_classes must be 2 or 3, not {num_classes}")
    return target


def class_balance_weights(
    target: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """``w_c``: every class gets the same total weight over the annotated pixels.

    A class with ``n_k`` of ``n`` annotated pixels gets ``n / (num_classes * n_k)``,
    capped at :data:`MAX_CLASS_WEIGHT`; absent classes get weight 0 (no pixels anyway).

    Args:
        target: Class indices.
        num_classes: Number of classes.
        mask: Annotated pixels; all pixels when None.
    """
    counted = target if mask is None else target[mask]
    counts = np.bincount(counted.ravel(), minlength=num_classes).astype(np.float64)
    total = counts.sum()
    with np.errstate(divide="ignore"):
        per_class = np.where(counts > 0, total / (num_classes * counts), 0.0)
    per_class = np.minimum(per_class, MAX_CLASS_WEIGHT).astype(np.float32)
    return per_class[target]


def nearest_object_distances(
    labels: np.ndarray, max_distance: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, for every pixel.

    Each object's distance transform is computed only inside its bounding box grown by
    ``max_distance``, so the cost grows with the objects' area, not with the number of
    objects times the image size. Distances beyond ``max_distance`` are returned as inf.

    Args:
        labels: 2D instance labels.
        max_distance: Farthest distance of interest, in pixels.

    Returns:
        ``(d1, d2)`` float32 arrays; a pixel inside an object has distance 0 to it.
    """
    labels = as_instance_labels(labels)
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    reach = labels.shape if math.isinf(max_distance) else (int(math.ceil(max_distance)),) * 2
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(s.start - r, 0), min(s.stop + r, n))
            for s, r, n in zip(box, reach, labels.shape)
        )
        distance = ndimage.distance_transform_edt(labels[window] != index).astype(np.float32)
        near, second = d1[window], d2[window]
        # Insert this object's distance into the sorted pair (near <= second), in place.
        second[...] = np.minimum(second, np.maximum(near, distance))
        near[...] = np.minimum(near, distance)
    if not math.isinf(max_distance):
        d1[d1 > max_distance] = np.inf
        d2[d2 > max_distance] = np.inf
    return d1, d2


def border_weights(
    labels: np.ndarray,
    w0: float = BORDER_W0,
    sigma: float = BORDER_SIGMA,
    num_classes: int = 2,
    gap: int = 1,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The weight map of the U-Net paper (equation 2).

    Args:
        labels: 2D instance labels.
        w0: Height of the border term.
        sigma: Width of the border term, in pixels.
        num_classes: Target classes (see :func:`class_targets`).
        gap: Gap radius of the two-class target.
        mask: Annotated pixels, used for the class frequencies; all when None.

    Returns:
        float32 weight map of the labels' shape.
    """
    labels = as_instance_labels(labels)
    target = class_targets(labels, num_classes, gap)
    weights = class_balance_weights(target, num_classes, mask)
    if w0 <= 0 or labels.max(initial=0) < 2:
        return weights  # the border term needs two objects
    # Beyond this summed distance the border term is below BORDER_TERM_TOLERANCE.
    cutoff = sigma * math.sqrt(2.0 * math.log(w0 / BORDER_TERM_TOLERANCE))
    d1, d2 = nearest_object_distances(labels, max_distance=cutoff)
    background = target == 0
    total = d1[background] + d2[background]
    weights[background] += (w0 * np.exp(-(total**2) / (2.0 * sigma**2))).astype(np.float32)
    return weights
