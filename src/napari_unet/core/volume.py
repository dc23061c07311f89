"""3D instance labels of a z-stack from the class probabilities of its planes.

A 2D network sees each plane of a stack alone, and labelling each plane alone numbers
the cross-sections of one nucleus as many objects (3D AP50 0). Here the planes'
probabilities are stacked and read as one volume, at its real proportions (a z step of
``z_scale`` XY pixels): the distance of every voxel of the separated foreground (the
interior class of three, the foreground of two) from its edge is measured in 3D,
smoothed, and each of its peaks that rises at least a tenth of an object diameter above
the saddles around it becomes an object; a watershed of that distance grows the objects
over the whole foreground, boundary class included, so that touching objects meet at
the narrowest place between them.

Measured by ``python bench/bench_volume.py --threads 1`` (3D IoU, one-to-one matching;
the ``nuclei`` model, planes resized to the ground truth's median XY diameter and
normalized with one intensity range for the whole stack; AP50 / AP75, objects found;
seconds of post-processing on a shared 2-core CPU):

=========================  =======================  =======================  =========================
method                     1135_mini: 54 nuclei     1136_mini: 32 nuclei     cells3d_nuclei: 20 nuclei
=========================  =======================  =======================  =========================
planes labelled alone      0.00 / 0.00, 13, 0.04 s  0.00 / 0.00, 10, 0.04 s  0.02 / 0.00, 25, 0.13 s
2D labels stitched by IoU  0.29 / 0.09, 118, 0.1 s  0.14 / 0.01, 127, 0.1 s  0.37 / 0.20, 47, 0.3 s
3D interior seeds, grown   0.41 / 0.12, 46, 0.2 s   0.30 / 0.02, 54, 0.1 s   0.76 / 0.29, 24, 1.2 s
watershed of foreground    0.52 / 0.06, 49, 0.8 s   0.37 / 0.00, 27, 0.6 s   0.83 / 0.27, 22, 7.3 s
this module                0.65 / 0.09, 48, 0.9 s   0.45 / 0.00, 29, 0.8 s   0.91 / 0.33, 20, 10.8 s
=========================  =======================  =======================  =========================

(Mean AP50 0.67 against 0.57 for the next best.) The objects' diameter matters most:
unrescaled (what ``diameter="auto"`` gives here, whose estimate on the first plane finds
nothing it trusts) this module scored 0.21 / 0.12 / 0.46. Per-plane percentiles instead
of one range for the stack: 0.62 / 0.35 / 0.60, the empty planes at the ends of
cells3d stretched into nuclei. Most of the time goes into the peaks' morphological
reconstruction (``h_maxima``), about 1 s per million voxels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .errors import InputError
from .postprocess import _gap_pixels, _grown, foreground_probability

__all__ = ["PEAK_HEIGHT_PER_DIAMETER", "SMOOTHING_PER_DIAMETER", "smallest_volume", "volume_labels"]

#: How far a peak of the distance from the foreground's edge must rise above the saddles
#: around it to start an object, as a share of the object diameter. Touching nuclei meet
#: in a neck much narrower than themselves; one nucleus's distance has only ripples. A
#: tenth gave the best mean 3D AP50 on the shared volumes (0.08: 0.62, 0.1: 0.67,
#: 0.12: 0.65, 0.2: 0.53, with the smoothing below). An object whose separated
#: foreground is too thin for such a peak (under about a third of the diameter across)
#: starts no object: it is taken for a speck.
PEAK_HEIGHT_PER_DIAMETER = 1 / 10

#: Gaussian smoothing of that distance, as a share of the object diameter (in XY; in z
#: that many XY pixels). The distance of a ragged foreground has a ridge along every bump
#: of its outline; smoothed, a nucleus keeps one peak (mean 3D AP50 0.44 without, 0.67 with).
SMOOTHING_PER_DIAMETER = 1 / 20


def smallest_volume(min_size: int, z_scale: float) -> int:
    """The smallest object kept, in voxels, for a smallest object of ``min_size`` pixels in a plane.

    ``min_size`` is an area, as users give it for single planes: the smallest object is
    taken to be a ball whose largest cross-section has that area, and the ball's volume
    is counted in voxels of ``z_scale`` XY pixels' depth (10 pixels: 24 voxels when
    isotropic, 11 at a z step of 2.2 pixels).

    Args:
        min_size: Smallest object area in a plane, in pixels.
        z_scale: Z step over XY pixel size.
    """
    diameter = math.sqrt(4 * min_size / math.pi)
    return max(1, round(math.pi / 6 * diameter**3 / z_scale))


def _separated_and_extent(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The separated foreground (where objects start) and the extent they grow over.

    Read as :func:`~napari_unet.core.postprocess.probabilities_to_labels` reads them in a plane.
    """
    classes = probabilities[:, 1]
    if probabilities.shape[1] == 3:
        # The interior separates; the boundary class belongs to the objects' extent.
        return classes > threshold, foreground_probability(probabilities.swapaxes(0, 1)) > threshold
    # Two classes: separation needs the object more likely than not (the gap between
    # touching objects is faint); a lower threshold only widens them.
    return classes > max(threshold, 0.5), classes > threshold


def _estimated_diameter(separated: np.ndarray, z_scale: float) -> float:
    """Diameter, in XY pixels, of a ball as large as the separated component that holds the median voxel.

    Weighted by voxels, not by components: specks and the caps of nuclei cut off by the
    stack's ends are many but small (their plain median was 2 to 3 pixels for nuclei of
    20 to 47). Touching objects joined in one component make it too large (31 to 33
    pixels for 20-pixel nuclei), which merges some of them: give the diameter when known.
    """
    components, count = ndimage.label(separated)
    if not count:
        return 1.0
    volumes = np.bincount(components.ravel())[1:]
    diameters = np.cbrt(6 * volumes * z_scale / math.pi)
    order = np.argsort(diameters)
    voxels = np.cumsum(volumes[order])
    return float(diameters[order][np.searchsorted(voxels, voxels[-1] / 2)])


def _without_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """int32 ``labels`` without the objects under ``min_voxels`` voxels, renumbered 1..N in order."""
    keep = np.bincount(labels.ravel()) >= min_voxels
    keep[0] = False
    renumber = (np.cumsum(keep) * keep).astype(np.int32)
    return renumber[labels]


def volume_labels(probabilities: np.ndarray, z_scale: float, threshold: float = 0.5, min_size: int = 10,
                  gap: int = 1, object_diameter: float | None = None) -> np.ndarray:
    """3D instance labels of a z-stack from the class probabilities of its planes.

    Args:
        probabilities: ``(Z, classes, Y, X)`` float32 softmax outputs of the 2D network,
            plane by plane, already on the image's XY grid; 2 or 3 classes, as for
            :func:`~napari_unet.core.postprocess.probabilities_to_labels` (3: background,
            interior, boundary; 2: background, foreground with gaps between touching
            objects).
        z_scale: Z step over XY pixel size (1: isotropic; typical confocal stacks 2 to 5).
        threshold: Probability above which a voxel is separated foreground (three
            classes: interior, where objects start, and also the foreground they grow
            over; two classes: the foreground, while objects start only where it is
            above 0.5).
        min_size: Smallest object's area in a plane, in pixels, as users give it for
            single planes; objects smaller than the ball of that cross-section
            (:func:`smallest_volume`) are removed.
        gap: Gap radius the model was trained with, in XY pixels of ``probabilities``
            (a rescaled prediction: the model's gap over its scale factor). Two classes:
            the gaps between touching objects are given back to them, plane by plane,
            as in a single plane.
        object_diameter: Typical object diameter in XY pixels of ``probabilities`` (a
            rescaled prediction: the model's diameter over its scale factor); the peaks
            that start objects and the smoothing are sized by it. None: estimated from
            the separated foreground's 3D components (:func:`_estimated_diameter`),
            which touching objects make too large.

    Returns:
        int32 ``(Z, Y, X)`` labels, 0 = background, 1..N = objects (consecutive).

    Raises:
        InputError: If the probabilities are not ``(Z, 2 or 3, Y, X)`` or ``z_scale`` is
            not positive.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 4 or probabilities.shape[1] not in (2, 3):
        raise InputError(f"the probabilities of a stack are (Z, 2 or 3 classes, Y, X), not {probabilities.shape}")
    if not z_scale > 0:
        raise InputError(f"the z scale is the z step over the XY pixel size, a positive number, not {z_scale}")
    separated, extent = _separated_and_extent(probabilities, threshold)
    diameter = object_diameter or _estimated_diameter(separated, z_scale)
    # Distances in XY pixels, whatever the z step: a nucleus 20 pixels wide is a ball, not
    # a cigar, in a stack whose planes lie 2.2 pixels apart.
    sampling = (z_scale, 1.0, 1.0)
    depth = ndimage.distance_transform_edt(separated, sampling=sampling).astype(np.float32)
    sigma = SMOOTHING_PER_DIAMETER * diameter
    depth = ndimage.gaussian_filter(depth, (sigma / z_scale, sigma, sigma))
    markers, _ = ndimage.label(h_maxima(depth, PEAK_HEIGHT_PER_DIAMETER * diameter))
    labels = watershed(-depth, markers, mask=extent).astype(np.int32, copy=False)
    if probabilities.shape[1] == 2:
        # As in a single plane: the gaps the model leaves between touching objects (in the
        # plane only: it was trained on planes) go back to the nearest object.
        gap = max(1, round(gap))
        for plane in labels:
            plane[...] = _grown(plane, _gap_pixels(plane, gap), 2 * gap)
    return _without_small(labels, smallest_volume(min_size, z_scale))
