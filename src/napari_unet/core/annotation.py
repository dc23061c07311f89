"""Which pixels a user has annotated, for training from sparse annotations.

A training sample may be annotated only in part: some planes of a stack, or some
rectangles of an image. Pixels outside the annotation mask carry no loss and no gradient,
so unlabeled objects there are never taught as background.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["labelled_planes_mask", "regions_mask"]


def labelled_planes_mask(labels: np.ndarray) -> np.ndarray:
    """Mark every plane that holds at least one label as annotated (the napari convention).

    Inside an annotated plane, unlabeled pixels are background; planes without any label
    are ignored.

    Args:
        labels: Instance labels with two or more axes (the last two are height, width).

    Returns:
        Boolean mask of the labels' shape.
    """
    labels = np.asarray(labels)
    planes = labels.reshape(-1, *labels.shape[-2:])
    annotated = planes.reshape(len(planes), -1).any(axis=1)
    mask = np.broadcast_to(annotated[:, None, None], planes.shape)
    return np.ascontiguousarray(mask).reshape(labels.shape)


def regions_mask(shape: Sequence[int], regions: Iterable[Sequence[Sequence[float]]]) -> np.ndarray:
    """Mark axis-aligned rectangles as annotated.

    Args:
        shape: Shape of the labels (the last two axes are height, width).
        regions: Rectangles, each given by corner points in data coordinates
            (``(..., y, x)`` rows as napari's Shapes layer stores them). Leading
            coordinates other than y and x select the plane; rectangles are clipped to
            the image.

    Returns:
        Boolean mask of ``shape``.
    """
    mask = np.zeros(tuple(shape), bool)
    height, width = mask.shape[-2:]
    for corners in regions:
        corners = np.asarray(corners, float)
        if corners.ndim != 2 or corners.shape[1] < 2:
            raise ValueError("a region needs corner points with at least (y, x) coordinates")
        top, left = np.floor(corners[:, -2:].min(axis=0)).astype(int)
        bottom, right = np.ceil(corners[:, -2:].max(axis=0)).astype(int)
        top, left = max(top, 0), max(left, 0)
        bottom, right = min(bottom, height), min(right, width)
        if bottom <= top or right <= left:
            continue
        plane = tuple(int(round(v)) for v in corners[0, : corners.shape[1] - 2])
        # Leading coordinates align with the last leading axes (as napari aligns layers);
        # axes without a coordinate are all annotated: a 2D rectangle over a stack marks
        # that region in every plane.
        leading = plane[len(plane) - min(len(plane), mask.ndim - 2) :]
        axes = mask.shape[mask.ndim - 2 - len(leading) : mask.ndim - 2]
        if any(not 0 <= index < size for index, size in zip(leading, axes)):
            continue  # drawn on a plane outside the image
        mask[(Ellipsis, *leading, slice(top, bottom), slice(left, right))] = True
    return mask
