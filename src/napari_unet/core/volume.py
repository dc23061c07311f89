"""3D instance labels of a z-stack from the class probabilities of its planes.

A 2D network sees each plane of a stack alone, and labelling each plane alone numbers
the cross-sections of one nucleus as many objects (3D AP50 0). Here the planes'
probabilities are stacked and read as one volume, at its real proportions (a z step of
``z_scale`` XY pixels), and parted into objects at the peaks of the distance from the
edge of the separated foreground (:mod:`~napari_unet.core.peaks`): connected parts alone
join nuclei that touch through a plane or two.

Measured by ``python bench/bench_volume.py --threads 1`` (3D IoU, one-to-one matching;
the ``nuclei`` model, planes resized to the ground truth's median XY diameter and
normalized with one intensity range for the whole stack; AP50 / AP75, objects found):

=========================  ===================  ===================  =========================
method                     1135_mini: 54 nuclei 1136_mini: 32 nuclei cells3d_nuclei: 20 nuclei
=========================  ===================  ===================  =========================
planes labelled alone      0.00 / 0.00, 13      0.00 / 0.00, 10      0.02 / 0.00, 25
2D labels stitched by IoU  0.29 / 0.09, 118     0.14 / 0.01, 127     0.37 / 0.20, 47
3D interior seeds, grown   0.41 / 0.12, 46      0.30 / 0.02, 54      0.76 / 0.29, 24
watershed of foreground    0.52 / 0.06, 49      0.37 / 0.00, 27      0.83 / 0.27, 22
this module                0.65 / 0.09, 48      0.45 / 0.00, 29      0.91 / 0.33, 20
=========================  ===================  ===================  =========================

(Mean AP50 0.67 against 0.57 for the next best.) The objects' diameter matters most:
unrescaled, this module scored 0.21 / 0.12 / 0.46. Per-plane percentiles instead of one
range for the stack: 0.62 / 0.35 / 0.60, the empty planes at the ends of cells3d
stretched into nuclei.
"""

from __future__ import annotations

import math

import numpy as np

from .defaults import MIN_OBJECT_SIZE
from .errors import InputError
from .postprocess import parted_at_peaks
from .scale import resize_labels

__all__ = ["BYTES_PER_VOXEL", "COARSE_GRID_FACTOR", "SMALLEST_CHUNK_HALOS", "VolumeLabeller", "chunk_halo",
           "labelling_factor", "smallest_volume", "volume_labels"]

#: Memory that labelling a volume takes at its peak, in bytes per voxel, its class
#: probabilities (float16) included: scipy's distance transform takes about 49 and the
#: morphological reconstruction of the peaks about 78 while it runs (85 in all, measured
#: on 40 x 512 x 512 nuclei), and prediction holds the planes' labels and foreground
#: probability beside them.
BYTES_PER_VOXEL = 100

#: A volume whose planes were shrunk for the network by this factor or more is labelled
#: on the network's grid, and its labels enlarged to the image's: objects there span the
#: model's own diameter, as many pixels as objects of its training data, whatever the
#: image's. On cells3d (shrunk by 0.35) that took 0.32 s instead of 2.0 s, with the same
#: 3D AP; on the plant nuclei (0.77, 0.85) it cost up to 0.03 AP50 for twice the speed,
#: so they stay on the image's grid.
COARSE_GRID_FACTOR = 0.5


def labelling_factor(factor: float) -> float:
    """The scale, against the image's XY grid, on which a volume predicted at ``factor`` is labelled."""
    return factor if factor <= COARSE_GRID_FACTOR else 1.0


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


#: The fewest planes a chunk labelled alone takes, in halos (:func:`chunk_halo`): a middle
#: of two halos between its own two. On the shared plant nuclei volumes (``python
#: bench/bench_volume.py``, ``volume_labels_in_chunks``) chunks of 4 halos gave the whole
#: volume's objects and AP (1135_mini AP50 0.645, 1136_mini 0.452) in about twice its
#: time; chunks of one middle plane lost up to 0.08 AP50 in 13 times its time.
SMALLEST_CHUNK_HALOS = 4


def chunk_halo(object_diameter: float | None, z_scale: float) -> int:
    """Planes of context on each side of a chunk labelled alone: an object's depth, at least 2.

    Args:
        object_diameter: Typical object diameter in XY pixels of the labelling grid (None: 20).
        z_scale: Z step over the XY pixel size of that grid.
    """
    return max(2, math.ceil((object_diameter or 20.0) / z_scale))


class VolumeLabeller:
    """Collects the planes of a stack's volumes and labels them in 3D as soon as it can.

    A volume is labelled whole once its last plane is in, or, given ``window``, in
    chunks of that many planes that overlap by ``halo`` planes on each side: each chunk
    keeps the labels of its middle planes, and an object that crosses into the next
    chunk keeps its label there when the two chunks' labels of their shared planes agree
    on it (IoU at least 0.5). Only a chunk's planes are held, so a deep volume takes the
    memory of a chunk; objects come out as the whole volume's would, numbered in the
    order they are first met.

    Args:
        depth: Planes of a volume (the stack's Z); a stack of several volumes (TZYX)
            gives their planes one volume after the other.
        shape: The image's ``(height, width)``, which the labels are given on.
        factor: How the planes were rescaled for the network
            (:func:`~napari_unet.core.scale.scale_factor`).
        z_scale: The z step over the image's pixel width.
        threshold, min_size: As for :func:`volume_labels`, ``min_size`` on the image's grid.
        gap: The model's gap, and ``object_diameter`` its object diameter, on the network's grid.
        window: Planes labelled at once, at least ``2 * halo + 1`` (None: the whole volume);
            :data:`SMALLEST_CHUNK_HALOS` halos or more give the whole volume's objects.
        halo: Planes of context on each side of a chunk (None: :func:`chunk_halo`).
    """

    def __init__(self, depth: int, shape: tuple[int, int], factor: float, z_scale: float, threshold: float,
                 min_size: int, gap: int, object_diameter: float | None, window: int | None = None,
                 halo: int | None = None):
        self.depth, self.shape = depth, shape
        self.scale = labelling_factor(factor)  # of the grid the classes come on, against the image's
        # On that grid: the z step, the smallest object, and the model's gap and diameter.
        self.settings = (z_scale * self.scale, threshold, max(1, round(min_size * self.scale**2)),
                         gap * self.scale / factor, object_diameter * self.scale / factor if object_diameter else None)
        self.halo = chunk_halo(self.settings[4], self.settings[0]) if halo is None else halo
        self.core = depth if window is None or window >= depth else window - 2 * self.halo
        if self.core < 1:
            raise ValueError(f"a window of {window} planes leaves no planes between halos of {self.halo}")
        self._planes: list[np.ndarray] = []  # the classes of the planes held, from _held_from on
        self._start_volume()

    def _start_volume(self) -> None:
        self._held_from = 0  # the volume's plane that _planes starts at
        self._core_from = 0  # the first plane of the next chunk's middle
        # The last chunk's labels (in the volume's numbering) around the edge of its middle, and where they start.
        self._tail: tuple[int, np.ndarray] | None = None
        self._next_id = 1

    def add(self, index: int, classes: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Take plane ``index`` of the stack, ``(classes, *grid)``; the labels of the planes it completes.

        ``grid`` is the image's ``shape`` scaled by :func:`labelling_factor`.

        Returns:
            ``(first, labels)``: int32 ``(planes, *shape)`` labels of the stack's planes
            from ``first`` on, once a chunk (or the volume) is complete; else None.
        """
        plane = index % self.depth
        self._planes.append(np.asarray(classes, np.float16))
        last = plane == self.depth - 1
        core_end = self._core_from + self.core
        if not last and plane < core_end + self.halo - 1:
            return None
        if last:
            core_end = self.depth
        labels = volume_labels(np.stack(self._planes), *self.settings)
        if self.core < self.depth:  # chunks: one numbering across them
            labels = self._stitched(labels, core_end)
        middle = labels[self._core_from - self._held_from:core_end - self._held_from]
        first = index - plane + self._core_from
        if last:
            self._planes.clear()
            self._start_volume()
        else:
            # The next chunk starts its halo this far back.
            keep_from = max(core_end - self.halo, 0)
            del self._planes[:keep_from - self._held_from]
            self._held_from, self._core_from = keep_from, core_end
        if self.scale != 1.0:
            middle = np.stack([resize_labels(part, self.shape) for part in middle])
        return first, middle

    def _stitched(self, labels: np.ndarray, core_end: int) -> np.ndarray:
        """A chunk's labels in the volume's numbering, objects that go on from the last chunk keeping theirs.

        Two chunks are matched on the planes around the edge between their middles,
        where each sees half its halo or more on either side: the planes at the far
        ends of a chunk, which it sees without what lies beyond, are labelled less well.
        An object this chunk holds only in its halos has no number of the volume's yet:
        it is kept negative, and never matched.
        """
        numbering = np.zeros(int(labels.max()) + 1, np.int64)
        if self._tail is not None:
            tail_from, tail = self._tail
            shared = labels[tail_from - self._held_from:tail_from - self._held_from + len(tail)]
            for current, previous in _same_objects(shared, tail[:len(shared)]).items():
                numbering[current] = previous
        middle = labels[self._core_from - self._held_from:core_end - self._held_from]
        found, first_met = np.unique(middle, return_index=True)
        for label in found[np.argsort(first_met)]:
            if label and not numbering[label]:
                numbering[label] = self._next_id
                self._next_id += 1
        unnumbered = (numbering == 0) & (np.arange(len(numbering)) > 0)
        numbering[unnumbered] = -np.flatnonzero(unnumbered)  # objects of the halo alone
        reach = max(1, self.halo // 2)
        matched_from = max(core_end - reach, self._core_from)
        self._tail = (matched_from, numbering[labels[matched_from - self._held_from:core_end + reach - self._held_from]])
        return np.where(numbering[labels] > 0, numbering[labels], 0).astype(np.int32)


def _same_objects(current: np.ndarray, previous: np.ndarray) -> dict[int, int]:
    """Labels of ``current`` that are objects of ``previous`` (positive numbers), by IoU of at least 0.5."""
    both = (current > 0) & (previous > 0)
    if not both.any():
        return {}
    pairs, overlap = np.unique(np.stack([current[both], previous[both]]), axis=1, return_counts=True)
    current_sizes = np.bincount(current[current > 0].ravel())
    previous_ids, previous_sizes = np.unique(previous[previous > 0], return_counts=True)
    sizes = dict(zip(previous_ids.tolist(), previous_sizes.tolist()))
    same = {}
    for (label, other), common in zip(pairs.T.tolist(), overlap.tolist()):
        if common / (current_sizes[label] + sizes[other] - common) >= 0.5:
            same[label] = other
    return same


def volume_labels(probabilities: np.ndarray, z_scale: float, threshold: float = 0.5, min_size: int = MIN_OBJECT_SIZE,
                  gap: int = 1, object_diameter: float | None = None) -> np.ndarray:
    """3D instance labels of a z-stack from the class probabilities of its planes.

    Args:
        probabilities: ``(Z, classes, Y, X)`` float16 or float32 softmax outputs of the 2D network,
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
    probabilities = np.asarray(probabilities)  # float16 as prediction keeps them: no float32 copy of a volume
    if probabilities.ndim != 4 or probabilities.shape[1] not in (2, 3):
        raise InputError(f"the probabilities of a stack are (Z, 2 or 3 classes, Y, X), not {probabilities.shape}")
    if not z_scale > 0:
        raise InputError(f"the z scale is the z step over the XY pixel size, a positive number, not {z_scale}")
    # (classes, Z, Y, X): read as a plane's probabilities are, and measured at the stack's
    # proportions: a nucleus 20 pixels wide is a ball, not a cigar, at any z step.
    return parted_at_peaks(probabilities.swapaxes(0, 1), threshold, smallest_volume(min_size, z_scale), gap,
                           object_diameter, (z_scale, 1.0, 1.0))
