"""Post-processing to labels: napari_unet's against the straightforward scikit-image version.

Both turn the same three-class probabilities (background, interior, boundary; as the
``nuclei`` model gives) of a generated 2048x2048 image of touching nuclei into instance
labels: seeds are the connected components of the interior above the threshold, seeds
under ``min_size`` pixels are removed, and the rest grow by up to 2 pixels over the
boundary pixels whose foreground probability passes the threshold. The peer does it with
``skimage.measure.label``, ``skimage.morphology.remove_small_objects`` and
``skimage.segmentation.expand_labels`` (a distance transform of the whole plane), which is
how one would write it; napari_unet's ``probabilities_to_labels`` looks up the nearest
seed only at the pixels that grow. The probabilities are the one-hot targets of the
ground truth, blurred so that they fall off like a network's. Headline:
``speedup = peer_seconds / seconds``; ``differing_pixels`` counts the pixels whose labels
differ (only where two seeds are equally near may they choose differently). Prints one
JSON object.

    python bench/bench_postprocess.py            # 2048x2048, about 2000 nuclei
    python bench/bench_postprocess.py --quick    # 512x512
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import time

import numpy as np
from _common import report
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import remove_small_objects
from skimage.segmentation import expand_labels, relabel_sequential

from napari_unet.core.postprocess import foreground_probability, probabilities_to_labels
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.targets import class_targets

THRESHOLD = 0.65  # the nuclei model's
MIN_SIZE = 10
GROWTH = 2  # pixels a three-class seed grows over its boundary (gap 1)


def network_like_probabilities(labels: np.ndarray) -> np.ndarray:
    """Three-class probabilities that fall off across borders as a network's do."""
    one_hot = np.eye(3, dtype=np.float32)[class_targets(labels, 3)].transpose(2, 0, 1)
    blurred = np.stack([ndimage.gaussian_filter(channel, 1.0) for channel in one_hot])
    return blurred / blurred.sum(axis=0, keepdims=True)


def _without_small(seeds: np.ndarray) -> np.ndarray:
    # scikit-image 0.26 renamed the size limit (max_size: the largest size removed).
    if "max_size" in inspect.signature(remove_small_objects).parameters:
        return remove_small_objects(seeds, max_size=MIN_SIZE - 1)
    return remove_small_objects(seeds, min_size=MIN_SIZE)


def straightforward_labels(probabilities: np.ndarray) -> np.ndarray:
    """The same post-processing written with scikit-image's functions."""
    seeds = _without_small(label(probabilities[1] > THRESHOLD, connectivity=1))
    seeds = relabel_sequential(seeds)[0].astype(np.int32)
    grow = (seeds == 0) & (foreground_probability(probabilities) > THRESHOLD)
    labels = seeds.copy()
    labels[grow] = expand_labels(seeds, GROWTH)[grow]
    return labels


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="image edge (default 2048)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each (default 7)")
    parser.add_argument("--quick", action="store_true", help="512x512, for smoke tests")
    args = parser.parse_args()
    size = args.size or (512 if args.quick else 2048)
    _, truth = synthetic_nuclei((size, size), count=max(4, round(505 * size * size / 1024**2)), seed=0)
    probabilities = network_like_probabilities(truth)

    ours = probabilities_to_labels(probabilities, THRESHOLD, MIN_SIZE, gap=1)  # warm-up, and the result
    peer = straightforward_labels(probabilities)
    seconds, peer_seconds = [], []
    for _ in range(args.repeats):  # interleaved, so that a change of load hits both
        start = time.perf_counter()
        probabilities_to_labels(probabilities, THRESHOLD, MIN_SIZE, gap=1)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        straightforward_labels(probabilities)
        peer_seconds.append(time.perf_counter() - start)

    ours_s, peer_s = statistics.median(seconds), statistics.median(peer_seconds)
    return report({
        "benchmark": "postprocess",
        "speedup": round(peer_s / ours_s, 2),
        "seconds": round(ours_s, 4),
        "peer_seconds": round(peer_s, 4),
        "megapixels_per_s": round(size * size / 1e6 / ours_s, 1),
        "objects": int(ours.max()),
        "peer_objects": int(peer.max()),
        "differing_pixels": int((ours != peer).sum()),
        "shape": [size, size],
        "seconds_all": [round(s, 4) for s in seconds],
        "peer_seconds_all": [round(s, 4) for s in peer_seconds],
        "python": platform.python_version(),
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
