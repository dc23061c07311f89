"""Border weight map: napari_unet's border_weights against the straightforward version.

The straightforward version (the peer) is the weight map exactly as the U-Net paper
writes it: one full-image Euclidean distance transform per object, the two smallest
distances per pixel, ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))`` on the
background of the two-class target, with the same class-balancing weights. Both run on
the same generated label image (touching nuclei) in the same process; the headline is
``speedup = peer_seconds / seconds``. Prints one JSON object.

    python bench/bench_weights.py            # 1024x1024, about 500 objects
    python bench/bench_weights.py --quick    # 512x512, about 125 objects
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
from scipy import ndimage

from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.targets import MAX_CLASS_WEIGHT, border_weights

W0 = 10.0
SIGMA = 5.0
GAP = 1


def straightforward_weights(labels: np.ndarray, w0: float = W0, sigma: float = SIGMA, gap: int = GAP) -> np.ndarray:
    """The paper's weight map, computed the plain way (two classes, every pixel annotated)."""
    height, width = labels.shape
    # Two-class target: object pixels, less those with another object within `gap`
    # pixels (chessboard neighbourhood, image edges replicated).
    padded = np.pad(labels, gap, mode="edge")
    touched = np.zeros(labels.shape, bool)
    for dy in range(-gap, gap + 1):
        for dx in range(-gap, gap + 1):
            shifted = padded[gap + dy : gap + dy + height, gap + dx : gap + dx + width]
            touched |= (shifted > 0) & (shifted != labels)
    target = ((labels > 0) & ~touched).astype(np.int64)

    # Class balance: every class gets the same total weight, capped.
    counts = np.bincount(target.ravel(), minlength=2).astype(np.float64)
    per_class = np.zeros(2)
    for k in range(2):
        if counts[k] > 0:
            per_class[k] = min(target.size / (2 * counts[k]), MAX_CLASS_WEIGHT)
    weights = per_class[target]

    # Distances to the nearest and second-nearest object: one full EDT per object.
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for index in range(1, int(labels.max()) + 1):
        distance = ndimage.distance_transform_edt(labels != index)
        d2 = np.minimum(d2, np.maximum(d1, distance))
        d1 = np.minimum(d1, distance)

    background = target == 0
    weights[background] += w0 * np.exp(-((d1[background] + d2[background]) ** 2) / (2.0 * sigma**2))
    return weights.astype(np.float32)


def seconds(function, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="image edge in pixels (default 1024; 512 with --quick)")
    parser.add_argument("--count", type=int, default=None, help="nuclei to place (default 505 -> 500 objects)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of border_weights (median reported)")
    parser.add_argument("--peer-repeats", type=int, default=1, help="timed runs of the straightforward version")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small image, for smoke tests")
    args = parser.parse_args(argv)
    size = args.size or (512 if args.quick else 1024)
    count = args.count or max(2, round(505 * size * size / 1024**2))

    _, labels = synthetic_nuclei((size, size), count=count, seed=args.seed)
    objects = int(labels.max())

    # Warm-up (imports, caches), then interleave: half of our runs, the peer, the other half.
    border_weights(labels, W0, SIGMA, 2, GAP)
    first, ours = seconds(lambda: border_weights(labels, W0, SIGMA, 2, GAP), (args.repeats + 1) // 2)
    peer_times, peer = seconds(lambda: straightforward_weights(labels), args.peer_repeats)
    second, _ = seconds(lambda: border_weights(labels, W0, SIGMA, 2, GAP), args.repeats // 2)
    our_times = first + second

    ours_s = statistics.median(our_times)
    peer_s = statistics.median(peer_times)
    difference = float(np.max(np.abs(ours.astype(np.float64) - peer.astype(np.float64))))
    result = {
        "benchmark": "border_weights",
        "speedup": round(peer_s / ours_s, 2),
        "seconds": round(ours_s, 4),
        "peer_seconds": round(peer_s, 3),
        "max_abs_difference": difference,
        "matches": difference <= 1e-5,
        "objects": objects,
        "shape": [size, size],
        "w0": W0,
        "sigma": SIGMA,
        "megapixels_per_s": round(size * size / 1e6 / ours_s, 2),
        "peer_ms_per_object": round(1000 * peer_s / objects, 2),
        "seconds_all": [round(t, 4) for t in our_times],
        "peer_seconds_all": [round(t, 3) for t in peer_times],
        "quick": args.quick,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["matches"] else 1)
