"""From class probabilities to an instance label image.

The network predicts objects shrunk away from their neighbours (two classes: the gap
between touching objects is background; three classes: the boundary is its own class).
Connected components of that separated foreground are the objects; they are then grown
back over the gaps (two classes) or over the predicted boundary (three classes) so that
objects regain their full extent. A threshold under 0.5 extends two-class objects over
their faint rims but never joins them: their seeds need a probability of at least 0.5.

Probabilities given as a torch tensor are post-processed where they lie, into the same
labels: on the GPU that predicted them, which then need not wait for the CPU's tenth of
a second per 2048x2048 plane.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .defaults import MIN_OBJECT_SIZE
from .metrics import PixelCounts, average_precision
from .peaks import peak_labels, separated_diameter

__all__ = ["FEWEST_OBJECTS_TO_CHOOSE", "GROWTH_PER_DIAMETER", "SEPARATIONS", "THRESHOLD_CHOICES", "choose_postprocessing",
           "enough_to_choose", "foreground_probability", "growth_distance", "masks_parted_at_peaks", "parted_at_peaks",
           "probabilities_to_labels", "separated_and_extent"]

#: How touching objects are told apart. ``"seeds"``: each connected part of the
#: separated foreground is an object, grown back over its boundary (fast, and best where
#: the network separates objects cleanly: nuclei). ``"peaks"``: each peak of the smoothed
#: distance from the separated foreground's edge is one, parted from its neighbours at
#: the necks between them (:mod:`~napari_unet.core.peaks`; large cells that the network
#: leaves joined by a neck: held-out phase-contrast AP50 0.89 against 0.80).
SEPARATIONS = ("seeds", "peaks")

#: The thresholds :func:`choose_postprocessing` tries, by number of classes. Higher ones shrink
#: and lose faint objects. Lower ones merge touching objects of three classes, so those
#: start at 0.3; two-class objects they only widen (their seeds need 0.5), which thick
#: boundaries such as EM membranes call for, so those start at 0.1.
THRESHOLD_CHOICES = {
    2: tuple(np.round(np.arange(0.1, 0.81, 0.05), 2).tolist()),
    3: tuple(np.round(np.arange(0.3, 0.81, 0.05), 2).tolist()),
}

#: Fewest annotated objects on which :func:`choose_postprocessing` moves the threshold. On a
#: few dozen (a stripe held out of a few images, as when fine-tuning on 5) neighbouring
#: thresholds differ by an object or two, which is noise, not a better threshold.
FEWEST_OBJECTS_TO_CHOOSE = 200

#: How far three-class seeds grow back over their boundary, as a share of the object
#: diameter the model was trained on (never under the boundary's own width). The interior
#: probability of a large object reaches the threshold further inside its outline than a
#: small one's: phase-contrast cells of 55 px, grown 2 px, lost their rims (held-out AP75
#: 0.18); grown an eighth of their diameter they keep them (AP75 0.55), while nuclei of
#: 17 px still grow the 2 px that suit them.
GROWTH_PER_DIAMETER = 1 / 8


def foreground_probability(probabilities: np.ndarray) -> np.ndarray:
    """Probability that a pixel belongs to any object, from ``(classes, H, W)``."""
    return 1.0 - probabilities[0]


def separated_and_extent(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Where objects start (the separated foreground) and the extent they grow over, as ``"peaks"`` reads them.

    Args:
        probabilities: ``(classes, ...)`` softmax outputs of a plane or a stack of planes.
        threshold: As for :func:`probabilities_to_labels`.
    """
    if probabilities.shape[0] == 3:
        # The interior separates; the boundary class belongs to the objects' extent.
        return probabilities[1] > threshold, foreground_probability(probabilities) > threshold
    # Two classes: separation needs the object more likely than not (the gap between
    # touching objects is faint); a lower threshold only widens them.
    return probabilities[1] > max(threshold, 0.5), probabilities[1] > threshold


def _seeds(mask: np.ndarray | torch.Tensor, min_size: int) -> np.ndarray | torch.Tensor:
    """int32 connected components of ``mask`` of at least ``min_size`` pixels, numbered 1..N in order.

    Components touch by an edge, not a corner (scipy's default), and are numbered in the
    order of their first pixel, row by row.
    """
    if isinstance(mask, torch.Tensor):
        return _tensor_seeds(mask, min_size)
    seeds = ndimage.label(mask)[0].astype(np.int32, copy=False)
    # Only the objects' pixels are counted and renumbered, not the whole plane: they are
    # about a tenth of a plane of nuclei.
    inside = np.flatnonzero(mask)
    values = seeds.ravel()[inside]
    keep = np.bincount(values) >= max(min_size, 1)
    if keep[1:].all():  # nothing to remove, so already numbered 1..N
        return seeds
    keep[0] = False
    renumber = (np.cumsum(keep) * keep).astype(np.int32)
    seeds.ravel()[inside] = renumber[values]
    return seeds


def _offsets_by_distance(distance: float) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` within ``distance`` of a pixel (itself excluded), nearest first."""
    reach = int(distance)
    return sorted(
        ((dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
         if 0 < dy * dy + dx * dx <= distance * distance),
        key=lambda offset: offset[0] ** 2 + offset[1] ** 2,
    )


def _grown(seeds: np.ndarray | torch.Tensor, grow: np.ndarray | torch.Tensor, distance: float
           ) -> np.ndarray | torch.Tensor:
    """``seeds`` with each pixel of ``grow`` given the nearest object within ``distance`` (else 0)."""
    if isinstance(seeds, torch.Tensor):
        return _tensor_grown(seeds, grow, distance)
    labels = seeds.copy()
    growing = np.flatnonzero(grow)
    labels.ravel()[growing] = _nearest_labels(seeds, growing, distance)
    return labels


def _nearest_labels(seeds: np.ndarray, pixels: np.ndarray, distance: float) -> np.ndarray:
    """For each pixel (``pixels``: flat indices into ``seeds``), the nearest object within ``distance`` (else 0).

    What skimage's ``expand_labels`` gives there (up to the choice between equally near
    objects), but looked up only at the pixels that need it: a Euclidean distance
    transform of the whole plane took three quarters of the post-processing time. The
    lookups go into a copy of ``seeds`` with a border of zeros as wide as ``distance``,
    by flat index, so that no neighbour needs a bounds check.
    """
    reach = int(distance)
    bordered = np.pad(seeds, reach)
    row = bordered.shape[1]
    flat_seeds = bordered.ravel()
    # Flat positions in the bordered copy of the pixels without an object yet.
    searching = pixels + (pixels // seeds.shape[1]) * (2 * reach) + reach * (row + 1)
    where = np.arange(len(pixels))  # their places in the result
    found = np.zeros(len(pixels), np.int32)
    for dy, dx in _offsets_by_distance(distance):  # nearest first: a pixel keeps the first object it finds
        if searching.size == 0:
            break
        neighbour = flat_seeds[searching + (dy * row + dx)]
        hit = neighbour > 0
        found[where[hit]] = neighbour[hit]
        missed = ~hit
        searching, where = searching[missed], where[missed]
    return found


def _window_extreme(array: np.ndarray, size: int, outside: int, extreme) -> np.ndarray:
    """``extreme`` (``np.maximum`` or ``np.minimum``) over each ``size`` x ``size`` window.

    What scipy's maximum/minimum filters give with ``mode="constant", cval=outside`` (odd
    ``size``), computed from shifted views: windows of 1, 2, 4, ... pixels are combined
    from the previous ones, so a window of ``size`` takes about ``log2(size) + 1``
    element-wise operations per axis. For the small windows of post-processing that is
    several times faster than scipy's filters.
    """
    radius = size // 2
    result = np.pad(array, radius, mode="constant", constant_values=outside)
    for axis in (0, 1):

        def part(values, start, stop, axis=axis):  # a view of rows or columns start..stop
            return values[start:stop] if axis == 0 else values[:, start:stop]

        length = result.shape[axis]
        span, covered = result, 1  # span[i]: extreme of the ``covered`` values from i on
        while 2 * covered <= size:
            span = extreme(part(span, 0, length - 2 * covered + 1), part(span, covered, length - covered + 1))
            covered *= 2
        # Two spans of ``covered``, overlapping, make up each window.
        rest, count = size - covered, length - size + 1
        result = extreme(part(span, 0, count), part(span, rest, rest + count))
    return result


def _gap_pixels(seeds: np.ndarray | torch.Tensor, gap: int) -> np.ndarray | torch.Tensor:
    """Background pixels with two different objects within ``2 * gap`` pixels: the gaps."""
    size = 4 * gap + 1
    if isinstance(seeds, torch.Tensor):
        return _tensor_gap_pixels(seeds, size)
    # Background must not count as an object for the minimum: lift it above every label.
    above = int(seeds.max(initial=0)) + 1
    if above <= np.iinfo(np.uint16).max:  # half the memory traffic of int32: about twice as fast
        seeds = seeds.astype(np.uint16)
    background = seeds == 0
    highest = _window_extreme(seeds, size, 0, np.maximum)
    lowest = _window_extreme(np.where(background, np.asarray(above, seeds.dtype), seeds), size, above, np.minimum)
    return background & (highest > 0) & (lowest < highest)


def growth_distance(gap: int, object_diameter: float | None) -> float:
    """How far three-class seeds grow over the boundary class, in the network's pixels.

    Args:
        gap: Gap radius the model was trained with.
        object_diameter: Median object diameter of the model's training data, in pixels,
            if known.
    """
    return max(2.0 * gap, 2.0, GROWTH_PER_DIAMETER * (object_diameter or 0.0))


def probabilities_to_labels(
    probabilities: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    min_size: int = MIN_OBJECT_SIZE,
    gap: int = 1,
    pixel_scale: float = 1.0,
    object_diameter: float | None = None,
    separation: str = "seeds",
) -> np.ndarray | torch.Tensor:
    """Instance labels from the class probabilities of one plane.

    Args:
        probabilities: ``(classes, H, W)`` softmax output (2 or 3 classes): an array, or
            a tensor, whose labels are then made on its device and returned as a tensor
            there (the same labels).
        threshold: Probability above which a pixel is taken as separated foreground
            (three classes: the interior seeds and the extent of objects; two classes:
            the extent of objects, whose seeds need at least 0.5).
        min_size: Objects smaller than this many pixels are removed.
        gap: Gap radius the model was trained with (two classes).
        pixel_scale: Pixels of ``probabilities`` per pixel of the network's output (the
            probabilities of a plane that was shrunk for the network and brought back are
            larger): the gaps and boundaries to grow over are that much wider.
        object_diameter: Median object diameter of the model's training data, in the
            network's pixels (``Model.object_diameter``): three-class objects grow over
            their boundary by :func:`growth_distance`, and ``"peaks"`` sizes its peaks
            by it (without it, by the separated parts' size).
        separation: How touching objects are told apart, one of :data:`SEPARATIONS`
            (``Model.separation``). ``"peaks"`` runs on the CPU, whatever the device of
            ``probabilities``; its labels come back there.

    Returns:
        int32 labels, 0 = background, 1..N = objects (consecutive).
    """
    if separation not in SEPARATIONS:
        raise ValueError(f"separation must be one of {', '.join(SEPARATIONS)}, not {separation!r}")
    if separation == "peaks":
        on_device = probabilities.device if isinstance(probabilities, torch.Tensor) else None
        labels = parted_at_peaks(probabilities.cpu().numpy() if on_device else probabilities, threshold, min_size,
                                 gap * pixel_scale, object_diameter * pixel_scale if object_diameter else None)
        return labels if on_device is None else torch.from_numpy(labels).to(on_device)
    num_classes = probabilities.shape[0]
    # With two classes one probability both separates objects and outlines them, and a
    # threshold under 0.5 would join neighbours through the faint boundary between them
    # (thin EM membranes): seeds come from where an object is more likely than not, and
    # the threshold only extends them. Three classes separate with their own class.
    seed_level = threshold if num_classes == 3 else max(threshold, 0.5)
    seeds = _seeds(probabilities[1] > seed_level, min_size)
    if num_classes == 3:
        grow = (seeds == 0) & (foreground_probability(probabilities) > threshold)
        distance = growth_distance(gap, object_diameter) * pixel_scale
    else:
        gap = max(1, round(gap * pixel_scale))
        grow = _gap_pixels(seeds, gap) | ((seeds == 0) & (probabilities[1] > threshold))
        distance = 2 * gap
    return _grown(seeds, grow, max(distance, 1.0))


def parted_at_peaks(probabilities: np.ndarray, threshold: float, min_size: int, gap: float,
                    diameter: float | None, sampling: Sequence[float] | None = None) -> np.ndarray:
    """Labels of a plane or a stack of planes, ``(classes, ...)``, told apart by the peaks of their distance map.

    The ``"peaks"`` separation (:mod:`~napari_unet.core.peaks`), for a plane and for a
    volume labelled in 3D.

    Args:
        probabilities: ``(classes, ...)`` softmax outputs, float16 or float32.
        threshold: As for :func:`probabilities_to_labels`.
        min_size: Smallest object kept, in pixels (voxels for a volume).
        gap: The gap the model was trained with, in these pixels (two classes): the gaps
            between touching objects go back to the nearest one, plane by plane, as the
            model was trained on planes.
        diameter: Typical object diameter in pixels of the last axis; None: the
            separated parts' size (:func:`~napari_unet.core.peaks.separated_diameter`).
        sampling: As for :func:`~napari_unet.core.peaks.peak_labels`.

    Returns:
        int32 labels, 0 = background, 1..N = objects (consecutive).
    """
    separated, extent = separated_and_extent(probabilities, threshold)
    return masks_parted_at_peaks(separated, extent, probabilities.shape[0], min_size, gap, diameter, sampling)


def masks_parted_at_peaks(separated: np.ndarray, extent: np.ndarray, classes: int, min_size: int, gap: float,
                          diameter: float | None, sampling: Sequence[float] | None = None) -> np.ndarray:
    """:func:`parted_at_peaks` from the masks :func:`separated_and_extent` made of ``classes`` class probabilities.

    A volume labelled in parts holds these two masks rather than its probabilities: all
    the labels need of them, in a third of the memory of float16 classes, or less packed.
    """
    labels = peak_labels(separated, extent, diameter or separated_diameter(separated, sampling), sampling)
    if classes == 2:
        gap = max(1, round(gap))
        for plane in labels.reshape(-1, *labels.shape[-2:]):
            plane[...] = _grown(plane, _gap_pixels(plane, gap), 2 * gap)
    return _without_small(labels, min_size)


def _without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """int32 ``labels`` without the objects under ``min_size`` pixels (or voxels), renumbered 1..N in order."""
    keep = np.bincount(labels.ravel()) >= max(min_size, 1)
    keep[0] = False
    renumber = (np.cumsum(keep) * keep).astype(np.int32)
    return renumber[labels]


# The same steps on torch tensors, for probabilities that lie on a GPU: what scipy does
# with one sequential pass over the plane (labelling components) takes a few passes
# here, each a handful of element-wise kernels over the whole plane, which is what a GPU
# does well.


def _component_roots(mask: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """For each pixel of ``mask``, the flat index of the first pixel of its component (elsewhere ``mask.numel()``).

    Label equivalence, as GPUs label components: every pixel starts as its own root;
    each pass, the root of every pixel is hooked under the smallest root next to the
    pixel, and pointers to roots are followed until each points at a root. A component
    settles in a few passes rather than as many as it is long. Every root is a pixel of
    its component, and hooks only ever lower it, so the last root is the smallest index.

    Args:
        mask: A boolean plane.
        inside: The flat indices of its true pixels.

    Returns:
        int64 roots, flat (one per pixel of ``mask``).
    """
    height, width = mask.shape
    outside = mask.numel()
    # The flat indices, one more for "outside", which points at itself.
    roots = torch.where(mask.reshape(-1), torch.arange(outside, device=mask.device), outside)
    roots = torch.cat([roots, roots.new_full((1,), outside)])
    while True:
        around = F.pad(roots[:-1].view(height, width), (1, 1, 1, 1), value=outside)
        lowest = torch.minimum(torch.minimum(around[:-2, 1:-1], around[2:, 1:-1]),
                               torch.minimum(around[1:-1, :-2], around[1:-1, 2:])).reshape(-1)[inside]
        own = roots[inside]
        if not bool((lowest < own).any()):
            return roots[:-1]
        roots.scatter_reduce_(0, own, lowest, "amin")  # hook each root under its lowest neighbour's
        while True:  # follow the pointers to roots
            pointed = roots[roots]
            if torch.equal(pointed, roots):
                break
            roots = pointed


def _tensor_seeds(mask: torch.Tensor, min_size: int) -> torch.Tensor:
    """:func:`_seeds` of a tensor: the same components, numbered alike."""
    inside = torch.nonzero(mask.reshape(-1)).squeeze(1)
    seeds = torch.zeros(mask.numel(), dtype=torch.int32, device=mask.device)
    if inside.numel():
        roots = _component_roots(mask, inside)
        # Ordered by their first pixel, as scipy numbers components.
        _, component, sizes = torch.unique(roots[inside], sorted=True, return_inverse=True, return_counts=True)
        keep = sizes >= max(min_size, 1)
        number = (torch.cumsum(keep, 0) * keep).to(torch.int32)
        seeds[inside] = number[component]
    return seeds.view(mask.shape)


def _tensor_grown(seeds: torch.Tensor, grow: torch.Tensor, distance: float) -> torch.Tensor:
    """:func:`_grown` of tensors: the same nearest object, offsets tried in the same order."""
    reach = int(distance)
    height, width = seeds.shape
    around = F.pad(seeds, (reach, reach, reach, reach))
    found = torch.zeros_like(seeds)
    for dy, dx in _offsets_by_distance(distance):
        neighbour = around[reach + dy : reach + dy + height, reach + dx : reach + dx + width]
        found = torch.where((found == 0) & (neighbour > 0), neighbour, found)
    return torch.where(grow, found, seeds)


def _tensor_gap_pixels(seeds: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`_gap_pixels` of a tensor, whose windows are max-pooled, a row then a column at a time.

    Pooled in float32, which holds every label exactly up to 2**24, and float64 beyond.
    """
    above = int(seeds.max()) + 1
    values = seeds.to(torch.float32 if above <= 2**24 else torch.float64)

    def highest_around(values: torch.Tensor) -> torch.Tensor:
        # Pooling pads with -inf, which never wins: as a constant border of 0 (below every
        # label), or, negated, of ``above`` (no label is above it).
        rows = F.max_pool2d(values[None, None], (1, size), stride=1, padding=(0, size // 2))
        return F.max_pool2d(rows, (size, 1), stride=1, padding=(size // 2, 0))[0, 0]

    background = seeds == 0
    highest = highest_around(values)
    lowest = -highest_around(-torch.where(background, above, values))
    return background & (highest > 0) & (lowest < highest)


def enough_to_choose(truths: list[np.ndarray]) -> bool:
    """Whether ``truths`` hold the :data:`FEWEST_OBJECTS_TO_CHOOSE` a threshold is chosen on."""
    return sum(len(np.unique(truth[truth > 0])) for truth in truths) >= FEWEST_OBJECTS_TO_CHOOSE


def choose_postprocessing(
    probabilities: Iterable[np.ndarray],
    truths: Sequence[np.ndarray],
    current: float = 0.5,
    min_size: int = MIN_OBJECT_SIZE,
    gap: int = 1,
    object_diameter: float | None = None,
    separation: str = "seeds",
) -> tuple[float, str]:
    """The threshold and separation of :func:`probabilities_to_labels` that segment annotated planes best.

    As StarDist does with its probability threshold: a network's probabilities are not
    calibrated to 0.5 (a 3-class network's interior probability, for instance, rises
    slowly away from the boundary), so the threshold that best separates touching
    objects is measured rather than assumed. So is the way touching objects are told
    apart, together with it: each of the :data:`SEPARATIONS` has its own best threshold
    (``cells`` on held-out phase contrast: seeds best at 0.8, AP50 0.820; peaks at 0.8
    0.893, at 0.6 0.938).

    Args:
        probabilities: ``(classes, H, W)`` network outputs of fully annotated planes, in
            the order of ``truths``. Read one plane at a time: given an iterator, only
            one plane's outputs need to be in memory (a validation stack of 300 planes of
            2048x2048 holds 15 GB of them).
        truths: Their ground-truth instance labels.
        current: The threshold used so far. It stays when the planes hold fewer than
            :data:`FEWEST_OBJECTS_TO_CHOOSE` objects or no other threshold scores
            strictly better; among equal scores the one nearest to it wins.
        min_size: Smallest object kept, in pixels.
        gap: Gap radius the model was trained with (two classes).
        object_diameter: Median object diameter of the model's training data, in pixels.
        separation: The separation used so far; it stays unless another scores strictly
            better.

    Returns:
        ``(threshold, separation)``: among ``current`` and the :data:`THRESHOLD_CHOICES`
        of the planes' number of classes, each with every separation, the one with the
        highest mean AP at IoU 0.5 over the planes; between equal APs, the higher pixel
        IoU of the objects' extent (as training ranks its checkpoints), and then the
        separation used so far and the threshold nearest to ``current``.
    """
    if not enough_to_choose(truths):
        return current, separation
    candidates: list[tuple[float, str]] = []
    plane_ap, pixels = [], []  # per plane and candidate; per candidate
    for plane, truth in zip(probabilities, truths):
        if not candidates:
            thresholds = {current, *THRESHOLD_CHOICES[plane.shape[0]]}
            candidates = sorted(((threshold, way) for threshold in thresholds for way in SEPARATIONS),
                                key=lambda candidate: (candidate[1] != separation, abs(candidate[0] - current)))
            pixels = [PixelCounts() for _ in candidates]
        predictions = [probabilities_to_labels(plane, threshold, min_size, gap, object_diameter=object_diameter,
                                               separation=way) for threshold, way in candidates]
        plane_ap.append([average_precision(truth, predicted, thresholds=(0.5,))["ap_mean"][0]
                         for predicted in predictions])
        for counts, predicted in zip(pixels, predictions):
            counts.add(predicted, truth)
    ap50 = np.mean(plane_ap, axis=0).tolist()
    scores = [(ap, counts.scores()["iou"]) for ap, counts in zip(ap50, pixels)]
    best = max(scores)
    return candidates[scores.index(best)]  # the first of equals: as separated so far, nearest to current
