"""From class probabilities to an instance label image.

The network predicts objects shrunk away from their neighbours (two classes: the gap
between touching objects is background; three classes: the boundary is its own class).
Connected components of that separated foreground are the objects; they are then grown
back over the gaps (two classes) or over the predicted boundary (three classes) so that
objects regain their full extent.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects
from skimage.segmentation import expand_labels, relabel_sequential

__all__ = ["foreground_probability", "probabilities_to_labels"]


def foreground_probability(probabilities: np.ndarray) -> np.ndarray:
    """Probability that a pixel belongs to any object, from ``(classes, H, W)``."""
    return 1.0 - probabilities[0]


def _gap_pixels(seeds: np.ndarray, gap: int) -> np.ndarray:
    """Background pixels with two different objects within ``2 * gap`` pixels: the gaps."""
    size = 4 * gap + 1
    highest = ndimage.maximum_filter(seeds, size=size, mode="constant", cval=0)
    # Background must not count as an object for the minimum: lift it above every label
    # (a modest value: scipy's filters pass through float64, which large integers overflow).
    above = int(seeds.max(initial=0)) + 1
    lifted = np.where(seeds == 0, above, seeds)
    lowest = ndimage.minimum_filter(lifted, size=size, mode="constant", cval=above)
    return (seeds == 0) & (highest > 0) & (lowest < highest)


def probabilities_to_labels(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 10,
    gap: int = 1,
) -> np.ndarray:
    """Instance labels from the class probabilities of one plane.

    Args:
        probabilities: ``(classes, H, W)`` softmax output (2 or 3 classes).
        threshold: Probability above which a pixel is taken as separated foreground.
        min_size: Objects smaller than this many pixels are removed.
        gap: Gap radius the model was trained with (two classes).

    Returns:
        int32 labels, 0 = background, 1..N = objects (consecutive).
    """
    num_classes = probabilities.shape[0]
    seeds = ndimage.label(probabilities[1] > threshold)[0].astype(np.int32)
    if min_size > 1 and seeds.any():
        with warnings.catch_warnings():
            # skimage warns when there is a single object, which is a normal outcome here.
            warnings.simplefilter("ignore", UserWarning)
            seeds = remove_small_objects(seeds, max_size=min_size - 1)
    if num_classes == 3:
        grown = expand_labels(seeds, distance=max(2, 2 * gap))
        grown[foreground_probability(probabilities) <= threshold] = 0
        labels = np.where(seeds > 0, seeds, grown)
    else:
        grown = expand_labels(seeds, distance=2 * gap)
        labels = np.where(_gap_pixels(seeds, gap), grown, seeds)
    return relabel_sequential(labels)[0]
