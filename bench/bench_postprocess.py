"""Post-processing to labels: napari_unet's against the straightforward scikit-image version.

Both turn the same probabilities of a generated 2048x2048 image of touching nuclei into
instance labels. Three classes (background, interior, boundary; as the ``nuclei`` model
gives, threshold 0.65): seeds are the connected components of the interior above the
threshold, seeds under ``min_size`` pixels are removed, and the rest grow by up to 2
pixels over the boundary pixels whose foreground probability passes the threshold. Two
classes (``--classes 2``; as ``em-neurites``, threshold 0.1, gap 1): seeds need 0.5, and
grow by up to 2 pixels over the gaps between two objects (background with two objects
within 2 pixels) and over the pixels above the threshold. The peer does it with
``skimage.measure.label``, ``skimage.morphology.remove_small_objects``,
``skimage.segmentation.expand_labels`` (a distance transform of the whole plane) and,
for the gaps, scipy's maximum and minimum filters, which is how one would write it;
napari_unet's ``probabilities_to_labels`` looks up the nearest seed only at the pixels
that grow. The probabilities are the one-hot targets of the ground truth, blurred so
that they fall off like a network's. Headline:
``speedup = peer_seconds / seconds``; ``differing_pixels`` counts the pixels whose labels
differ (only where two seeds are equally near may they choose differently).

The same function also takes the probabilities as a torch tensor, as prediction on a
GPU hands them over: ``tensor_seconds`` times that, on ``--device``, from probabilities
on the device to labels in main memory, and ``tensor_speedup`` is ``seconds /
tensor_seconds`` (on a CPU the tensor version is the slower one, which is why prediction
uses it only on a GPU); ``tensor_labels_equal`` says whether its labels are the array
version's. Prints one JSON object.

    python bench/bench_postprocess.py                 # 2048x2048, about 2000 nuclei, three classes
    python bench/bench_postprocess.py --classes 2     # two classes
    python bench/bench_postprocess.py --device cuda   # the tensor version on the GPU
    python bench/bench_postprocess.py --quick         # 512x512
"""

from __future__ import annotations

import inspect
import platform
import statistics
import time

import numpy as np
import torch
from _common import report, synchronize, torch_device, torch_parser
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import remove_small_objects
from skimage.segmentation import expand_labels, relabel_sequential

from napari_unet.core.postprocess import foreground_probability, probabilities_to_labels
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.targets import class_targets

THRESHOLDS = {3: 0.65, 2: 0.1}  # the nuclei and em-neurites models'
MIN_SIZE = 10
GAP = 1
GROWTH = 2 * GAP  # pixels a seed grows


def network_like_probabilities(labels: np.ndarray, classes: int) -> np.ndarray:
    """Probabilities that fall off across borders as a network's do."""
    one_hot = np.eye(classes, dtype=np.float32)[class_targets(labels, classes, gap=GAP)].transpose(2, 0, 1)
    blurred = np.stack([ndimage.gaussian_filter(channel, 1.0) for channel in one_hot])
    return blurred / blurred.sum(axis=0, keepdims=True)


def _without_small(seeds: np.ndarray) -> np.ndarray:
    # scikit-image 0.26 renamed the size limit (max_size: the largest size removed).
    if "max_size" in inspect.signature(remove_small_objects).parameters:
        return remove_small_objects(seeds, max_size=MIN_SIZE - 1)
    return remove_small_objects(seeds, min_size=MIN_SIZE)


def _gaps(seeds: np.ndarray) -> np.ndarray:
    """Background pixels with two different objects within the growth distance."""
    size = 2 * GROWTH + 1
    highest = ndimage.maximum_filter(seeds, size=size, mode="constant", cval=0)
    above = int(seeds.max()) + 1
    lowest = ndimage.minimum_filter(np.where(seeds == 0, above, seeds), size=size, mode="constant", cval=above)
    return (seeds == 0) & (highest > 0) & (lowest < highest)


def straightforward_labels(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The same post-processing written with scikit-image's functions."""
    two_classes = probabilities.shape[0] == 2
    seed_level = max(threshold, 0.5) if two_classes else threshold
    seeds = _without_small(label(probabilities[1] > seed_level, connectivity=1))
    seeds = relabel_sequential(seeds)[0].astype(np.int32)
    if two_classes:
        grow = _gaps(seeds) | ((seeds == 0) & (probabilities[1] > threshold))
    else:
        grow = (seeds == 0) & (foreground_probability(probabilities) > threshold)
    labels = seeds.copy()
    labels[grow] = expand_labels(seeds, GROWTH)[grow]
    return labels


def main() -> dict:
    parser = torch_parser(__doc__, "512x512, for smoke tests")
    parser.add_argument("--size", type=int, default=None, help="image edge (default 2048)")
    parser.add_argument("--classes", type=int, choices=(2, 3), default=3, help="classes of the network (default 3)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each (default 7)")
    args = parser.parse_args()
    device = torch_device(parser, args)
    size = args.size or (512 if args.quick else 2048)
    _, truth = synthetic_nuclei((size, size), count=max(4, round(505 * size * size / 1024**2)), seed=0)
    probabilities = network_like_probabilities(truth, args.classes)
    threshold = THRESHOLDS[args.classes]

    on_device = torch.from_numpy(probabilities).to(device)

    def from_tensor() -> np.ndarray:
        labels = probabilities_to_labels(on_device, threshold, MIN_SIZE, gap=GAP).cpu().numpy()
        synchronize(device)
        return labels

    ours = probabilities_to_labels(probabilities, threshold, MIN_SIZE, gap=GAP)  # warm-up, and the result
    peer = straightforward_labels(probabilities, threshold)
    tensor_labels = from_tensor()
    seconds, peer_seconds, tensor_seconds = [], [], []
    for _ in range(args.repeats):  # interleaved, so that a change of load hits all three
        start = time.perf_counter()
        probabilities_to_labels(probabilities, threshold, MIN_SIZE, gap=GAP)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        straightforward_labels(probabilities, threshold)
        peer_seconds.append(time.perf_counter() - start)
        synchronize(device)
        start = time.perf_counter()
        from_tensor()
        tensor_seconds.append(time.perf_counter() - start)

    ours_s, peer_s, tensor_s = (statistics.median(times) for times in (seconds, peer_seconds, tensor_seconds))
    return report({
        "benchmark": "postprocess",
        "speedup": round(peer_s / ours_s, 2),
        "seconds": round(ours_s, 4),
        "peer_seconds": round(peer_s, 4),
        "tensor_device": str(device),
        "tensor_speedup": round(ours_s / tensor_s, 2),
        "tensor_seconds": round(tensor_s, 4),
        "tensor_labels_equal": bool(np.array_equal(tensor_labels, ours)),
        "megapixels_per_s": round(size * size / 1e6 / ours_s, 1),
        "objects": int(ours.max()),
        "peer_objects": int(peer.max()),
        "differing_pixels": int((ours != peer).sum()),
        "classes": args.classes,
        "threshold": threshold,
        "shape": [size, size],
        "seconds_all": [round(s, 4) for s in seconds],
        "peer_seconds_all": [round(s, 4) for s in peer_seconds],
        "tensor_seconds_all": [round(s, 4) for s in tensor_seconds],
        "python": platform.python_version(),
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
