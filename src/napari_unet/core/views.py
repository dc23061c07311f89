"""A z-stack seen from the side: a 2D network's XZ and YZ passes, averaged with its planes' own.

A 2D network reads each plane of a stack alone and never sees where an object ends in
z: the out-of-focus glow above and below a nucleus looks like more nucleus, and two
nuclei stacked in z look like one. Its passes over the stack's side views (every XZ
plane, and every YZ plane, stretched in z to the stack's real proportions and to the
network's scale) see the objects' ends, and the probabilities of the three views,
averaged, label the volume (as Cellpose's ``do_3D`` averages its flows).

Measured by ``python bench/bench_volume.py --threads 1`` (``nuclei``, the objects'
diameter measured by ``--3d``; 3D AP50 / AP75): planes alone, their blur trimmed in z,
against the three views (the planes weighted by :data:`PLANE_WEIGHT`, no trim: the side
views end the objects, and trimming them again cost the plant nuclei up to 0.12 AP50):

==============================  =====================  =====================
volume                          planes                 three views
==============================  =====================  =====================
1135_mini (plant, z 2.2 px)     0.67 / 0.17            0.75 / 0.38
1136_mini (plant, z 2.2 px)     0.47 / 0.02            0.56 / 0.10
cells3d_nuclei (z 1.1 px)       0.91 / 0.82            0.86 / 0.77
==============================  =====================  =====================

The side views cost the network about ``2 * z_scale`` times the planes' own work, and
need the volume whole: :func:`~napari_unet.core.predict.predict_iter` takes them where
the volume is labelled whole (``views="auto"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .progress import run_to_end
from .scale import resize_plane

__all__ = ["PLANE_WEIGHT", "SIDE_VIEW_BYTES_PER_VOXEL", "combined_views", "side_view_probabilities"]

#: The planes' share of the averaged probabilities; the XZ and YZ views share the rest.
#: The side views are stretched in z, blurrier than the planes: weighted alike (a third
#: each), the plant nuclei scored 0.70 / 0.58 AP50, against 0.75 / 0.56 at a half.
PLANE_WEIGHT = 0.5

#: Memory the side views take beside labelling a volume whole, in bytes per voxel of the
#: labelling grid: the planes' classes held in float16 (3 x 2), the side views' sum in
#: float32 (3 x 4) and the volume's intensities in float32 (4).
SIDE_VIEW_BYTES_PER_VOXEL = 22

PlanePredictor = Callable[[np.ndarray], Iterator]


def side_view_probabilities(volume: np.ndarray, z_scale: float, scale: float, predict_plane: PlanePredictor
                            ) -> Iterator[tuple[int, int] | np.ndarray]:
    """The mean class probabilities of a volume's XZ and YZ views, on its grid.

    A generator: yields ``(done, total)`` side planes, then returns the ``(Z, classes,
    Y, X)`` float32 probabilities.

    Args:
        volume: ``(Z, Y, X)`` normalized intensities of one volume.
        z_scale: Its z step over its pixel width.
        scale: The network's pixels per pixel of ``volume`` across a plane (its scale
            factor for the objects' diameter).
        predict_plane: A normalized ``(1, H, W)`` plane -> a generator that yields
            progress and returns its ``(classes, H, W)`` probabilities (array or tensor).
    """
    depth, height, width = volume.shape
    total, done = height + width, 0
    summed = None
    for axis, count in ((1, height), (2, width)):
        for index in range(count):
            side = volume[:, index, :] if axis == 1 else volume[:, :, index]
            shape = (max(1, round(depth * z_scale * scale)), max(1, round(side.shape[1] * scale)))
            probabilities = run_to_end(predict_plane(resize_plane(side[np.newaxis], shape)))
            if not isinstance(probabilities, np.ndarray):
                probabilities = probabilities.cpu().numpy()
            probabilities = resize_plane(probabilities, side.shape)  # (classes, Z, Y or X)
            if summed is None:
                summed = np.zeros((depth, probabilities.shape[0], height, width), np.float32)
            if axis == 1:
                summed[:, :, index, :] += probabilities.swapaxes(0, 1)
            else:
                summed[:, :, :, index] += probabilities.swapaxes(0, 1)
            done += 1
            yield done, total
    summed /= 2
    return summed


def combined_views(planes: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """The planes' class probabilities averaged with their side views', in place in ``sides``.

    Args:
        planes: ``(Z, classes, Y, X)`` of the planes (float16, as a volume holds them).
        sides: ``(Z, classes, Y, X)`` float32 of :func:`side_view_probabilities`.
    """
    for side, plane in zip(sides, planes):  # a plane at a time: no float32 copy of the volume's planes
        side *= 1 - PLANE_WEIGHT
        side += PLANE_WEIGHT * plane.astype(np.float32)
    return sides
