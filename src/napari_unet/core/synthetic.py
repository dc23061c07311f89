"""Generated fluorescence-like nuclei with ground truth, for demos, tests and benchmarks.

Nuclei are random ellipses, many of them placed against a neighbour so that they touch;
where two ellipses overlap, each pixel goes to the object whose center is relatively
nearer, which gives the straight shared borders of real touching nuclei. Like real
nuclei in a monolayer they press against each other but do not pile up: a nucleus that
would take more than a small part of one already placed is not placed. The image is
blurred like a widefield microscope and carries shot and camera noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["synthetic_nuclei"]

#: The largest share of an earlier nucleus that a new one may take over at their border.
MOST_TAKEN = 0.15


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256),
    count: int = 30,
    radius: tuple[float, float] = (7.0, 12.0),
    touching: float = 0.5,
    seed: int | None = 0,
    dtype=np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image of nuclei and its instance labels.

    Args:
        shape: Image height and width.
        count: Number of nuclei to try to place (fewer are placed where they would pile up).
        radius: Range of the ellipses' mean radius, in pixels.
        touching: Share of nuclei placed against an earlier one.
        seed: Random seed (None for a different image each call).
        dtype: uint8 or uint16 image.

    Returns:
        ``(image, labels)``: the image of ``dtype`` and int32 labels (0 = background).
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    nearest = np.full(shape, np.inf)
    labels = np.zeros(shape, np.int32)
    brightness = np.zeros(shape, np.float32)
    centers: list[tuple[float, float, float]] = []
    areas = np.zeros(count + 1, np.int64)  # pixels each nucleus holds so far
    for index in range(1, count + 1):
        mean_radius = rng.uniform(*radius)
        if centers and rng.random() < touching:
            # Against a neighbour: centers about one summed radius apart, so they overlap a little.
            cy, cx, other_radius = centers[rng.integers(len(centers))]
            angle = rng.uniform(0, 2 * np.pi)
            distance = 0.85 * (mean_radius + other_radius)
            cy, cx = cy + distance * np.sin(angle), cx + distance * np.cos(angle)
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if not (0 <= cy < height and 0 <= cx < width):
            continue
        ratio = rng.uniform(0.7, 1.0)
        ry, rx = mean_radius * ratio, mean_radius / ratio
        angle = rng.uniform(0, np.pi)
        reach = int(np.ceil(max(ry, rx))) + 1
        top, bottom = max(int(cy) - reach, 0), min(int(cy) + reach + 1, height)
        left, right = max(int(cx) - reach, 0), min(int(cx) + reach + 1, width)
        y, x = np.mgrid[top:bottom, left:right]
        dy, dx = y - cy, x - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        relative = np.sqrt((u / ry) ** 2 + (v / rx) ** 2)  # < 1 inside the ellipse
        window = (slice(top, bottom), slice(left, right))
        wins = (relative < 1.0) & (relative < nearest[window])
        if not wins.any():
            continue
        taken = np.bincount(labels[window][wins], minlength=count + 1)
        taken[0] = 0
        if np.any(taken > MOST_TAKEN * areas):
            continue
        areas -= taken
        areas[index] = wins.sum()
        nearest[window][wins] = relative[wins]
        labels[window][wins] = index
        # A widefield image sums the stain through the nucleus: a uniformly stained
        # ellipsoid is as bright as it is thick, sqrt(1 - r^2), fading to nothing at its rim
        # (which also darkens the line where two nuclei touch). Plus a texture, like chromatin.
        level = rng.uniform(0.5, 1.0)
        texture = 1.0 + 0.15 * rng.standard_normal(wins.sum())
        brightness[window][wins] = level * np.sqrt(1.0 - relative[wins] ** 2) * texture
        centers.append((cy, cx, mean_radius))
    labels = _relabel_connected(labels)
    blurred = ndimage.gaussian_filter(brightness, 1.5)
    peak = 200.0 if np.dtype(dtype) == np.uint8 else 3000.0
    background = 0.08 * peak
    photons = rng.poisson(np.clip(background + peak * blurred, 0, None))
    image = photons + rng.normal(0, 0.01 * peak, shape)
    limit = np.iinfo(dtype).max
    return np.clip(image, 0, limit).astype(dtype), labels


def _relabel_connected(labels: np.ndarray) -> np.ndarray:
    """Drop objects that were cut into pieces and number the rest 1..N."""
    out = np.zeros_like(labels)
    next_label = 1
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        piece = labels[box] == index
        components, n = ndimage.label(piece)
        if n == 0:
            continue
        if n > 1:  # keep the largest piece only
            sizes = np.bincount(components.ravel())[1:]
            piece = components == (np.argmax(sizes) + 1)
        if piece.sum() < 10:
            continue
        out[box][piece] = next_label
        next_label += 1
    return out
