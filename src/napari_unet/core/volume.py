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
stretched into nuclei. Through the planes alone, prediction then trims each object's
out-of-focus blur off its ends in z (:func:`trim_axial_blur`: cells3d AP75 0.33 -> 0.82);
where a volume is labelled whole it is seen from the side too (:mod:`~napari_unet.core.views`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .defaults import MIN_OBJECT_SIZE
from .errors import InputError
from .memory import give_back_freed_memory
from .postprocess import masks_parted_at_peaks, separated_and_extent
from .scale import resize_labels

__all__ = ["AXIAL_BLUR_FRACTION", "BYTES_PER_VOXEL", "COARSE_GRID_FACTOR", "HELD_BYTES_PER_VOXEL",
           "SMALLEST_BLOCK_HALOS", "SMALLEST_CHUNK_HALOS", "Chunk", "VolumeLabeller", "chunk_halo", "labelling_factor",
           "smallest_volume", "trim_axial_blur", "volume_labels"]

#: Memory that labelling a volume (or a chunk, or a block of one) takes at its peak, in
#: bytes per voxel: 49 measured (``tracemalloc``, 40 x 512 x 512 nuclei), most of it
#: scipy's distance transform, and room for the masks it reads and the labels it gives.
BYTES_PER_VOXEL = 60

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
#: bench/bench_volume.py``, ``volume_labels_in_chunks``) chunks of 4 halos scored 3D AP50
#: 0.619 and 0.463 against the whole volume's 0.645 and 0.452, in 1.4 times its time;
#: chunks of one middle plane lost up to 0.08 AP50 in 13 times its time.
SMALLEST_CHUNK_HALOS = 4

#: The narrowest block of a plane labelled alone, in margins (:attr:`VolumeLabeller.tile_halo`,
#: half an object's width and a pixel): a middle of two margins, as chunks have in z.
SMALLEST_BLOCK_HALOS = 2

#: Memory a chunk's planes take while they are held and labelled block by block, in bytes
#: per voxel: their two masks packed (a quarter of a byte), their int32 labels, a plane's
#: renumbering at a time, and the copy of the labels of its middle (half its planes or
#: fewer) that it gives.
HELD_BYTES_PER_VOXEL = 7


def chunk_halo(object_diameter: float | None, z_scale: float) -> int:
    """Planes of context on each side of a chunk labelled alone: half an object's depth and one more, at least 2.

    An object that reaches a chunk's middle has its centre, where its peak starts it,
    within half its depth of the middle, so the chunk sees where every object it gives
    labels to starts. On the shared plant nuclei, chunks of the same depth matched the
    whole volume's objects at IoU 0.95 as well as with halos of a whole object's depth,
    or better (1135_mini: 100 % of them against 92 %, 1136_mini: 90 % against 87 %), and
    give more planes each.

    Args:
        object_diameter: Typical object diameter in XY pixels of the labelling grid (None: 20).
        z_scale: Z step over the XY pixel size of that grid.
    """
    return max(2, math.ceil((object_diameter or 20.0) / z_scale / 2) + 1)


@dataclass
class Chunk:
    """What labelling one chunk of a volume needs (:meth:`VolumeLabeller.take`).

    Attributes:
        planes: The packed masks of its planes, from ``held_from`` on.
        held_from, core_from, core_end: Planes of the volume: where ``planes`` start, and
            the chunk's middle, whose labels it gives.
        first: The stack's plane of ``core_from``.
        last: Whether it ends its volume.
        classes, width: The planes' classes, and the grid's width that packing rounded up.
    """

    planes: list[tuple[np.ndarray, np.ndarray]]
    held_from: int
    core_from: int
    core_end: int
    first: int
    last: bool
    classes: int
    width: int


class VolumeLabeller:
    """Collects the planes of a stack's volumes and labels them in 3D as soon as it can.

    A volume is labelled whole once its last plane is in, or, given ``window``, in
    chunks of that many planes that overlap by ``halo`` planes on each side: each chunk
    keeps the labels of its middle planes, and an object that crosses into the next
    chunk keeps its label there when the two chunks' labels of their shared planes agree
    on it (IoU at least 0.5). Given ``tile``, a chunk (or the volume) is labelled in
    blocks of ``tile`` x ``tile`` pixels with a margin of :attr:`tile_halo` pixels
    around them, matched with their neighbours in the same way. The planes are held as
    the two masks labelling reads (:func:`~napari_unet.core.postprocess.separated_and_extent`),
    a bit a voxel each: a deep volume of large planes takes the memory of one chunk's
    labels and one block's labelling. Objects come out as the whole volume's would,
    numbered in the order they are first met.

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
        tile: Edge of the blocks, in pixels of the labelling grid (None: whole planes);
            at least :attr:`tile_halo`.
    """

    def __init__(self, depth: int, shape: tuple[int, int], factor: float, z_scale: float, threshold: float,
                 min_size: int, gap: int, object_diameter: float | None, window: int | None = None,
                 halo: int | None = None, tile: int | None = None):
        self.depth, self.shape = depth, shape
        self.scale = labelling_factor(factor)  # of the grid the classes come on, against the image's
        # On that grid: the z step, the smallest object, and the model's gap and diameter.
        self.settings = (z_scale * self.scale, threshold, max(1, round(min_size * self.scale**2)),
                         gap * self.scale / factor, object_diameter * self.scale / factor if object_diameter else None)
        self.halo = chunk_halo(self.settings[4], self.settings[0]) if halo is None else halo
        #: Pixels of context around a block: an object's width.
        self.tile_halo = chunk_halo(self.settings[4], 1.0)
        self.core = depth if window is None or window >= depth else window - 2 * self.halo
        if self.core < 1:
            raise ValueError(f"a window of {window} planes leaves no planes between halos of {self.halo}")
        if tile is not None and tile < self.tile_halo:
            raise ValueError(f"blocks of {tile} pixels are narrower than their margin of {self.tile_halo}")
        self.tile = tile
        self._classes, self._width = 3, 0  # of the planes' classes; the grid's width, which packed masks round up
        self._planes: list[tuple[np.ndarray, np.ndarray]] = []  # packed masks of the planes held, from _held_from on
        self._start_volume()

    def _start_volume(self) -> None:
        self._held_from = 0  # the volume's plane that _planes starts at
        self._core_from = 0  # the first plane of the next chunk's middle
        # Of the labelling, which follows chunk by chunk: the last chunk's labels (in the
        # volume's numbering) around the edge of its middle and where they start, and the
        # volume's next number.
        self._tail: tuple[int, np.ndarray] | None = None
        self._next_id = 1

    def add(self, index: int, classes: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Take plane ``index`` of the stack, ``(classes, *grid)``; the labels of the planes it completes.

        ``grid`` is the image's ``shape`` scaled by :func:`labelling_factor`.

        Returns:
            ``(first, labels)``: int32 ``(planes, *shape)`` labels of the stack's planes
            from ``first`` on, once a chunk (or the volume) is complete; else None.
        """
        chunk = self.take(index, classes)
        return None if chunk is None else self.label(chunk)

    def take(self, index: int, classes: np.ndarray) -> Chunk | None:
        """Take plane ``index`` of the stack, ``(classes, *grid)``; the chunk it completes, to :meth:`label`.

        Chunks are labelled in the order they are given, and may be labelled in another
        thread while this one takes the next planes: a chunk holds the planes it needs.
        """
        plane = index % self.depth
        classes = np.asarray(classes)
        self._classes, self._width = classes.shape[0], classes.shape[-1]
        masks = separated_and_extent(classes, self.settings[1])
        self._planes.append((np.packbits(masks[0], axis=-1), np.packbits(masks[1], axis=-1)))
        last = plane == self.depth - 1
        core_end = self._core_from + self.core
        if not last and plane < core_end + self.halo - 1:
            return None
        if last:
            core_end = self.depth
        chunk = Chunk(list(self._planes), self._held_from, self._core_from, core_end, index - plane + self._core_from,
                      last, self._classes, self._width)
        if last:
            self._planes.clear()
            self._held_from = self._core_from = 0
        else:
            # The next chunk starts its halo this far back.
            keep_from = max(core_end - self.halo, 0)
            del self._planes[:keep_from - self._held_from]
            self._held_from, self._core_from = keep_from, core_end
        return chunk

    def label(self, chunk: Chunk) -> tuple[int, np.ndarray]:
        """The labels of the planes a chunk from :meth:`take` completes: ``(first, labels)``, as :meth:`add` gives them."""
        give_back_freed_memory()  # what the planes' predictions freed: the plan counted on it
        labels = self._labelled(chunk)
        if self.core < self.depth:  # chunks: one numbering across them
            labels = self._stitched(chunk, labels)
        middle = labels[chunk.core_from - chunk.held_from:chunk.core_end - chunk.held_from]
        if len(middle) < len(labels):
            # A copy, not a view that would hold the whole chunk's labels (its halos too) for
            # as long as the caller holds its middle: 0.6 GB of a 2048 x 2048 volume's.
            middle = middle.copy()
        del labels
        if chunk.last:
            self._tail, self._next_id = None, 1
        if self.scale != 1.0:
            middle = np.stack([resize_labels(part, self.shape) for part in middle])
        return chunk.first, middle

    def _masks(self, chunk: Chunk, rows: slice, columns: slice) -> tuple[np.ndarray, np.ndarray]:
        """The separated foreground and the extent of a chunk's planes, in one block of the grid."""
        start, stop = columns.start, columns.stop
        packed = slice(start // 8, -(-stop // 8))  # the bytes that hold those columns
        offset = start % 8
        separated, extent = (np.stack([np.unpackbits(plane[which][rows, packed], axis=-1)[:, offset:offset + stop - start]
                                       for plane in chunk.planes]).view(bool) for which in (0, 1))
        return separated, extent

    def _block_labels(self, chunk: Chunk, rows: slice, columns: slice) -> np.ndarray:
        """int32 labels of a chunk's planes in one block of the grid, numbered 1..N."""
        z_scale, _, min_size, gap, diameter = self.settings
        return _volume_labels_of_masks(*self._masks(chunk, rows, columns), chunk.classes, z_scale, min_size, gap,
                                       diameter)

    def _labelled(self, chunk: Chunk) -> np.ndarray:
        """int32 labels of a chunk's planes, numbered 1..N (across blocks, in the order first met)."""
        height, width = chunk.planes[0][0].shape[0], chunk.width
        if self.tile is None or self.tile >= max(height, width):
            return self._block_labels(chunk, slice(0, height), slice(0, width))
        tile, margin = self.tile, self.tile_halo
        reach = max(1, margin // 2)  # where both blocks see half their margin or more on either side of an edge
        labels = np.zeros((len(chunk.planes), height, width), np.int32)
        same = _Unions()
        edges: dict[tuple[str, int, int], np.ndarray] = {}  # blocks' labels along their right and bottom edges
        numbered = 0
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                rows = slice(max(top - margin, 0), min(bottom + margin, height))
                columns = slice(max(left - margin, 0), min(right + margin, width))
                block = self._block_labels(chunk, rows, columns)
                block[block > 0] += numbered  # numbers of their own, after the blocks before
                numbered = max(numbered, int(block.max()))
                # The block's rows and columns, its own and around its edges, in its labels.
                own_rows = slice(top - rows.start, bottom - rows.start)
                own_columns = slice(left - columns.start, right - columns.start)

                def across(edge: int, start: int) -> slice:
                    return slice(edge - reach - start, edge + reach - start)

                if left:
                    same.join(_same_objects(block[:, own_rows, across(left, columns.start)],
                                            edges.pop(("right", top, left))))
                if top:
                    same.join(_same_objects(block[:, across(top, rows.start), own_columns],
                                            edges.pop(("bottom", top, left))))
                if right < width:
                    edges[("right", top, right)] = block[:, own_rows, across(right, columns.start)]
                if bottom < height:
                    edges[("bottom", bottom, left)] = block[:, across(bottom, rows.start), own_columns]
                labels[:, top:bottom, left:right] = block[:, own_rows, own_columns]
        return _renumbered(labels, same.roots(numbered))

    def _stitched(self, chunk: Chunk, labels: np.ndarray) -> np.ndarray:
        """A chunk's labels in the volume's numbering, objects that go on from the last chunk keeping theirs.

        Two chunks are matched on the planes around the edge between their middles,
        where each sees half its halo or more on either side: the planes at the far
        ends of a chunk, which it sees without what lies beyond, are labelled less well.
        An object this chunk holds only in its halos has no number of the volume's yet:
        it is kept negative, and never matched. ``labels`` is renumbered in place.
        """
        held_from, core_from, core_end = chunk.held_from, chunk.core_from, chunk.core_end
        numbering = np.zeros(int(labels.max()) + 1, np.int32)
        if self._tail is not None:
            tail_from, tail = self._tail
            shared = labels[tail_from - held_from:tail_from - held_from + len(tail)]
            for current, previous in _same_objects(shared, tail[:len(shared)]).items():
                numbering[current] = previous
        for label in _first_met(labels[core_from - held_from:core_end - held_from]):
            if not numbering[label]:
                numbering[label] = self._next_id
                self._next_id += 1
        unnumbered = (numbering == 0) & (np.arange(len(numbering)) > 0)
        numbering[unnumbered] = -np.flatnonzero(unnumbered)  # objects of the halo alone
        reach = max(1, self.halo // 2)
        matched_from = max(core_end - reach, core_from)
        self._tail = (matched_from, numbering[labels[matched_from - held_from:core_end + reach - held_from]])
        return _renumbered(labels, np.maximum(numbering, 0), consecutive=False)


class _Unions:
    """Which object numbers are one object: a union-find over the pairs joined."""

    def __init__(self):
        self._parent: dict[int, int] = {}

    def _root(self, label: int) -> int:
        while self._parent.get(label, label) != label:
            label = self._parent[label]
        return label

    def join(self, pairs: dict[int, int]) -> None:
        """Make each key of ``pairs`` one object with its value."""
        for first, second in pairs.items():
            first, second = self._root(first), self._root(second)
            if first != second:
                self._parent[max(first, second)] = min(first, second)

    def roots(self, largest: int) -> np.ndarray:
        """The object of each number 0..``largest``: the smallest number joined with it."""
        return np.array([0] + [self._root(label) for label in range(1, largest + 1)], np.int32)


def _first_met(labels: np.ndarray) -> list[int]:
    """The objects of ``labels``, in the order of their first pixel, plane after plane."""
    order: dict[int, None] = {}
    for plane in labels:  # a plane's sort at a time, not the whole chunk's
        found, first = np.unique(plane, return_index=True)
        order.update(dict.fromkeys(found[np.argsort(first)].tolist()))
    order.pop(0, None)
    return list(order)


def _renumbered(labels: np.ndarray, numbers: np.ndarray, consecutive: bool = True) -> np.ndarray:
    """``labels`` with each label replaced by its entry of ``numbers``, then numbered 1..N as first met; in place.

    Plane by plane: a chunk of 2048 x 2048 planes takes no second copy of its labels.
    """
    for plane in labels:
        plane[...] = numbers[plane]
    if consecutive:
        met = _first_met(labels)
        order = np.zeros(int(numbers.max(initial=0)) + 1, np.int32)
        order[met] = np.arange(1, len(met) + 1, dtype=np.int32)
        for plane in labels:
            plane[...] = order[plane]
    return labels


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


#: An object ends in z where its mean brightness, above the background, falls under this
#: fraction of its brightest plane's: the full width at half maximum of the microscope's
#: axial blur, which the 2D network takes for more of the object (:func:`trim_axial_blur`).
AXIAL_BLUR_FRACTION = 0.5


def trim_axial_blur(labels: np.ndarray, intensities: Iterable[np.ndarray], background: float = 0.0,
                    open_start: bool = False, open_end: bool = False, fraction: float = AXIAL_BLUR_FRACTION) -> None:
    """Cut the planes of out-of-focus blur off the ends in z of each object brighter than the background, in place.

    A microscope blurs along z several times as far as across the plane, and a 2D
    network sees a nucleus's blurred glow above and below it as more nucleus: objects
    run too long in z (on ``cells3d`` 39.5 planes against 29.5 annotated, 3D AP75
    0.33). Each object keeps the planes around its brightest one where its mean
    brightness above ``background`` is at least ``fraction`` of that plane's (there AP75
    0.82; on the plant nuclei AP50 0.67 -> 0.67 and 0.44 -> 0.47). A background taken
    from the voxels between the objects instead (brighter in dense, noisy volumes) cut
    the plant nuclei too short: AP50 0.52 and 0.40. Objects no brighter than the
    background (dark cells between bright membranes) are left as they are. Planes are
    read one at a time: the memory is a few numbers per object and plane.

    Args:
        labels: ``(Z, Y, X)`` 3D labels, changed in place.
        intensities: The planes' intensities as the network read them (normalized), one
            ``(Y, X)`` array per plane of ``labels``, in order.
        background: The intensity of no object: 0 for normalized planes, the low end of
            the stack's intensity range.
        open_start: The labels continue before their first plane (a chunk of a larger
            volume): objects in that plane are left whole, as their ends lie outside.
        open_end: Likewise after their last plane.
        fraction: Of the brightest plane's brightness, where an object ends.
    """
    depth, count = len(labels), int(labels.max(initial=0)) + 1
    if count == 1:
        return
    sums = np.zeros((depth, count))
    areas = np.zeros((depth, count), np.int64)
    for z, (plane, intensity) in enumerate(zip(labels, intensities)):
        areas[z] = np.bincount(plane.ravel(), minlength=count)
        sums[z] = np.bincount(plane.ravel(), np.asarray(intensity, np.float64).ravel(), minlength=count)
    brightness = np.where(areas > 0, sums / np.maximum(areas, 1) - background, -np.inf)
    brightest = brightness.argmax(axis=0)
    peak = brightness.max(axis=0)
    dim = brightness < fraction * peak
    planes = np.arange(depth)[:, np.newaxis]
    first = np.where(dim & (planes < brightest), planes, -1).max(axis=0) + 1
    last = np.where(dim & (planes > brightest), planes, depth).min(axis=0) - 1
    whole = peak <= 0
    whole[0] = True
    if open_start:
        whole |= areas[0] > 0
    if open_end:
        whole |= areas[-1] > 0
    first[whole], last[whole] = 0, depth - 1
    for z, plane in enumerate(labels):
        plane[(first[plane] > z) | (last[plane] < z)] = 0


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
    # (classes, Z, Y, X): read as a plane's probabilities are.
    separated, extent = separated_and_extent(probabilities.swapaxes(0, 1), threshold)
    return _volume_labels_of_masks(separated, extent, probabilities.shape[1], z_scale, min_size, gap, object_diameter)


def _volume_labels_of_masks(separated: np.ndarray, extent: np.ndarray, classes: int, z_scale: float, min_size: int,
                            gap: float, object_diameter: float | None) -> np.ndarray:
    """:func:`volume_labels` from the masks of its probabilities (:func:`~napari_unet.core.postprocess.separated_and_extent`)."""
    # Measured at the stack's proportions: a nucleus 20 pixels wide is a ball, not a cigar, at any z step.
    return masks_parted_at_peaks(separated, extent, classes, smallest_volume(min_size, z_scale), gap, object_diameter,
                                 (z_scale, 1.0, 1.0))
