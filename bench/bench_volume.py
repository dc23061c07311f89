"""3D instance labels of z-stacks from a 2D model: planes labelled alone against 3D post-processing.

The embedded ``nuclei`` model predicts the class probabilities of every plane of the
shared 3D nuclei volumes (``../shared/data/nuclei3d``: ``1135_mini`` and ``1136_mini``,
voxel 0.284 x 0.127 x 0.127 um, and ``cells3d_nuclei``, 0.29 x 0.26 x 0.26 um), and
each method below turns the same probabilities into labels, scored in 3D (one-to-one
matching of 3D objects by their 3D IoU, ``metrics.match_counts``, which takes volumes
as they are) at IoU 0.5 and 0.75:

* ``planes_alone``: every plane labelled alone by ``probabilities_to_labels``, numbered
  1..N per plane, as prediction labels a stack today;
* ``stitched``: those plane labels joined to the object of the plane before them that
  they overlap most, when the IoU exceeds 0.25 (Cellpose's ``stitch_threshold``);
* ``seeds_grown``: 3D components of the interior above the threshold that span at least
  two planes, grown over the foreground by the 2D growth distance, measured in 3D at the
  stack's proportions;
* ``watershed_foreground``: a watershed of the whole foreground from the h-maxima
  (a fifth of the object diameter) of its anisotropic distance transform, unsmoothed;
* ``volume_labels``: ``napari_unet.core.volume.volume_labels``;
* ``volume_labels_in_chunks``: the same labels made by ``VolumeLabeller`` in the
  smallest chunks prediction uses (``SMALLEST_CHUNK_HALOS`` halos), as it labels a
  volume too large for the memory; ``peak_mb`` of each method is the most memory numpy
  held while it labelled (``tracemalloc``);
* ``predict_volume`` (true diameter only): the whole of ``predict(..., volume=True)``,
  as ``napari-unet predict --3d`` and the Predict widget's 3D run it (the volume seen
  from the side too, :mod:`napari_unet.core.views`), its seconds including the
  network's; ``volume_throughput_vs_planes`` is the seconds of the same stack predicted
  plane by plane over these; ``predict_volume_planes_alone`` the same through the
  planes alone (``views="xy"``), their blur trimmed in z.

Planes are resized by the objects' diameter, predicted, and their probabilities resized
back, as ``predict`` does (``diameter``): at the ground truth's median XY diameter (each
object's largest cross-section) and at what ``diameter="auto"`` gives (``estimate_diameter``
with ``volume=True``, from the objects' 3D labels, as ``predict(volume=True)`` estimates it
when no diameter is given; None means not rescaled). ``predict_volume_without_diameter``
is that end to end, its seconds including the estimate's (``_planes_alone``: ``views="xy"``). Intensities are
normalized with one range for the whole stack (the model's percentiles of all its voxels,
``IntensityRange``): per-plane percentiles stretch the empty planes at a stack's ends
until their haze looks like nuclei; ``volume_labels_per_plane_normalization`` shows that.
Headline: ``mean_ap50`` of each method over the volumes at the true diameter. Per volume
and method: ``ap50``, ``ap75``, ``objects`` found (``true_objects`` beside them) and the
post-processing ``seconds``; ``predict_seconds`` is the network's time for the stack.
``--fine-tune MINUTES`` also fine-tunes ``nuclei`` on three annotated planes of each
volume (at a quarter, half and three quarters of its depth, the rest unannotated, as a
user paints a few planes), at the true diameter, for that long, and scores the volume in
3D before and after (``fine_tuned``). Prints one JSON object.

    python bench/bench_volume.py --threads 1      # 2 to 3 minutes on a shared 2-core CPU
    python bench/bench_volume.py --fine-tune 3    # and 3 minutes of fine-tuning per volume
    python bench/bench_volume.py --quick          # 1135_mini only, true diameter only
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile
from _common import environment, report, torch_device, torch_parser
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from napari_unet.core.metrics import average_precision, match_counts
from napari_unet.core.normalize import IntensityRange, as_planes
from napari_unet.core.postprocess import foreground_probability, growth_distance, probabilities_to_labels
from napari_unet.core.predict import estimate_diameter, predict, predict_probabilities
from napari_unet.core.progress import run_to_end
from napari_unet.core.registry import load_model
from napari_unet.core.scale import circle_diameters, resize_plane, scale_factor, scaled_shape, widest_areas
from napari_unet.core.train import TrainingConfig, TrainingSample, train
from napari_unet.core.volume import SMALLEST_CHUNK_HALOS, VolumeLabeller, chunk_halo, smallest_volume, volume_labels

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei3d"
#: Voxel sizes (z, xy) in um, from the data's README: the TIFFs carry none.
VOXELS = {"1135_mini": (0.284, 0.127), "1136_mini": (0.284, 0.127), "cells3d_nuclei": (0.29, 0.26)}
MIN_SIZE = 10  # pixels in a plane, predict's default
STITCH_IOU = 0.25
SEED_PLANES = 2
WATERSHED_PEAK_PER_DIAMETER = 1 / 5


def true_diameter(truth: np.ndarray) -> float:
    """Median over the objects of the equivalent diameter of their largest XY cross-section, in pixels."""
    areas = widest_areas(truth)[1:]
    return float(np.median(circle_diameters(areas[areas > 0])))


def stack_probabilities(model, image: np.ndarray, diameter: float | None, device, per_plane: bool = False
                        ) -> tuple[np.ndarray, float, float]:
    """``(Z, classes, Y, X)`` probabilities of every plane on the image's grid, the scale factor, and seconds.

    What ``predict`` does for each plane (normalize, resize by the diameter, tiles, resize
    back), keeping the probabilities instead of labelling each plane.
    """
    planes, _ = as_planes(image, model.config.in_channels)
    if per_plane:
        normalized = model.normalization(planes)
    else:
        low, high = np.percentile(image, [model.normalization.low_percentile, model.normalization.high_percentile])
        normalized = IntensityRange(float(low), float(high), model.normalization.invert)(planes)
    factor = scale_factor(model, diameter)
    start = time.perf_counter()
    probabilities = np.stack([
        resize_plane(run_to_end(predict_probabilities(
            model.network, resize_plane(plane, scaled_shape(plane.shape[-2:], factor)), device=device)),
            plane.shape[-2:])
        for plane in normalized])
    return probabilities, factor, time.perf_counter() - start


def planes_alone(model, probabilities: np.ndarray, factor: float) -> np.ndarray:
    """Every plane labelled alone, numbered 1..N per plane, as ``predict`` labels a stack."""
    return np.stack([probabilities_to_labels(plane, model.threshold, MIN_SIZE, model.gap, 1 / factor,
                                             model.object_diameter) for plane in probabilities])


def stitched(model, probabilities: np.ndarray, factor: float) -> np.ndarray:
    """Plane labels joined to the most overlapping object of the plane before, above :data:`STITCH_IOU`."""
    planes = planes_alone(model, probabilities, factor)
    labels = np.zeros_like(planes)
    next_label = 1
    for z, plane in enumerate(planes):
        count = int(plane.max())
        lookup = np.zeros(count + 1, np.int32)
        if z and count and labels[z - 1].any():
            previous, inverse = np.unique(labels[z - 1], return_inverse=True)
            overlap = np.bincount((plane.ravel() * previous.size + inverse.ravel()),
                                  minlength=(count + 1) * previous.size).reshape(count + 1, previous.size)
            union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
            iou = overlap / np.maximum(union, 1)
            iou[0], iou[:, previous == 0] = 0, 0
            taken = set()
            for obj in np.argsort(-iou.max(1)):  # best overlaps first, each object of the plane before once
                best = int(np.argmax(iou[obj]))
                if obj and iou[obj, best] > STITCH_IOU and best not in taken:
                    lookup[obj] = previous[best]
                    taken.add(best)
        for obj in range(1, count + 1):
            if not lookup[obj]:
                lookup[obj], next_label = next_label, next_label + 1
        labels[z] = lookup[plane]
    return labels


def seeds_grown(model, probabilities: np.ndarray, factor: float, z_scale: float) -> np.ndarray:
    """3D interior components spanning :data:`SEED_PLANES` planes, grown over the foreground in 3D."""
    seeds, _ = ndimage.label(probabilities[:, 1] > model.threshold)
    sizes = np.bincount(seeds.ravel())
    spans = np.zeros(sizes.size, np.int64)
    for index, box in enumerate(ndimage.find_objects(seeds), start=1):
        spans[index] = box[0].stop - box[0].start
    keep = (sizes >= smallest_volume(MIN_SIZE, z_scale)) & (spans >= SEED_PLANES)
    keep[0] = False
    seeds = (np.cumsum(keep) * keep)[seeds].astype(np.int32)
    distance, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=(z_scale, 1, 1), return_indices=True)
    reach = growth_distance(model.gap, model.object_diameter / factor)
    grow = (foreground_probability(probabilities.swapaxes(0, 1)) > model.threshold) & (distance <= reach)
    return np.where(seeds > 0, seeds, np.where(grow, seeds[tuple(nearest)], 0))


def watershed_foreground(model, probabilities: np.ndarray, factor: float, z_scale: float) -> np.ndarray:
    """A watershed of the foreground from the h-maxima of its anisotropic distance transform."""
    foreground = foreground_probability(probabilities.swapaxes(0, 1)) > model.threshold
    depth = ndimage.distance_transform_edt(foreground, sampling=(z_scale, 1, 1))
    markers, _ = ndimage.label(h_maxima(depth, WATERSHED_PEAK_PER_DIAMETER * model.object_diameter / factor))
    labels = watershed(-depth, markers, mask=foreground)
    sizes = np.bincount(labels.ravel())
    return np.where(sizes[labels] >= smallest_volume(MIN_SIZE, z_scale), labels, 0)


def ours(model, probabilities: np.ndarray, factor: float, z_scale: float) -> np.ndarray:
    return volume_labels(probabilities, z_scale, model.threshold, MIN_SIZE, model.gap,
                         model.object_diameter / factor)


def in_chunks(model, probabilities: np.ndarray, factor: float, z_scale: float) -> np.ndarray:
    """:func:`ours` by a ``VolumeLabeller`` fed plane by plane, in the smallest chunks prediction uses."""
    diameter = model.object_diameter / factor
    window = SMALLEST_CHUNK_HALOS * chunk_halo(diameter, z_scale)
    labeller = VolumeLabeller(len(probabilities), probabilities.shape[-2:], 1.0, z_scale, model.threshold, MIN_SIZE,
                              model.gap, diameter, window=window)
    labels = np.zeros((len(probabilities), *probabilities.shape[-2:]), np.int32)
    for index, plane in enumerate(probabilities):
        done = labeller.add(index, plane)
        if done is not None:
            labels[done[0]:done[0] + len(done[1])] = done[1]
    return labels


METHODS = {
    "planes_alone": lambda model, probabilities, factor, z_scale: planes_alone(model, probabilities, factor),
    "stitched": lambda model, probabilities, factor, z_scale: stitched(model, probabilities, factor),
    "seeds_grown": seeds_grown,
    "watershed_foreground": watershed_foreground,
    "volume_labels": ours,
    "volume_labels_in_chunks": in_chunks,
}


def fine_tuned(model, image: np.ndarray, truth: np.ndarray, diameter: float, z_scale: float, minutes: float,
               device) -> dict:
    """3D scores of ``predict(volume=True)`` before and after fine-tuning on three annotated planes."""
    planes = np.linspace(0, len(image) - 1, 5)[1:4].round().astype(int)
    sparse = np.zeros_like(truth)
    sparse[planes] = truth[planes]
    start = time.perf_counter()
    before = predict(model, image, device=device, diameter=diameter, volume=True, z_scale=z_scale).labels
    before = scored(truth, before, time.perf_counter() - start)
    config = TrainingConfig(max_minutes=minutes, device=str(device))
    result = train([TrainingSample(image, sparse)], model=model, config=config, diameter=diameter)
    start = time.perf_counter()
    after = predict(result.model, image, device=device, diameter=diameter, volume=True, z_scale=z_scale).labels
    return {"annotated_planes": planes.tolist(), "minutes": minutes, "steps": result.model.training["steps"],
            "kept_the_starting_model": result.unchanged, "before": before,
            "after": scored(truth, after, time.perf_counter() - start)}


def scored(truth: np.ndarray, labels: np.ndarray, seconds: float) -> dict:
    counts = match_counts(truth, labels, (0.5, 0.75))
    ap50, ap75 = (round(float(value), 3) for value in counts.average_precision)
    return {"ap50": ap50, "ap75": ap75, "objects": int(len(np.unique(labels)) - 1), "seconds": round(seconds, 2)}


def main() -> None:
    parser = torch_parser(__doc__, "1135_mini only, at the true diameter only")
    parser.add_argument("--fine-tune", type=float, metavar="MINUTES",
                        help="also fine-tune on three annotated planes of each volume for this long")
    args = parser.parse_args()
    device = torch_device(parser, args)
    if not DATA.is_dir():
        parser.error(f"the real data folder {DATA} is missing")
    model = load_model("nuclei")
    names = ["1135_mini"] if args.quick else list(VOXELS)
    volumes = {}
    for name in names:
        image = tifffile.imread(DATA / "images" / f"{name}.tif")
        truth = tifffile.imread(DATA / "labels" / f"{name}.tif")
        z_step, xy_size = VOXELS[name]
        z_scale = z_step / xy_size
        diameters = {"true": true_diameter(truth)}
        if not args.quick:
            # As predict(volume=True) estimates it when no diameter is given: from the objects' 3D labels.
            start = time.perf_counter()
            diameters["auto"] = estimate_diameter(model, image, device=device, volume=True, z_scale=z_scale)
            estimate_seconds = time.perf_counter() - start
        result = {"true_objects": int(len(np.unique(truth)) - 1), "z_scale": round(z_scale, 3),
                  "true_diameter": round(diameters["true"], 1),
                  "auto_diameter": None if args.quick or diameters["auto"] is None else round(diameters["auto"], 1)}
        for which, diameter in diameters.items():
            probabilities, factor, predict_seconds = stack_probabilities(model, image, diameter, device)
            figures = {"scale_factor": round(factor, 3), "predict_seconds": round(predict_seconds, 2)}
            for method, function in METHODS.items():
                tracemalloc.start()
                start = time.perf_counter()
                labels = function(model, probabilities, factor, z_scale)
                figures[method] = scored(truth, labels, time.perf_counter() - start)
                figures[method]["peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
                tracemalloc.stop()
                if method == "planes_alone":  # for context: the same labels scored plane by plane in 2D
                    figures[method]["ap50_2d_per_plane"] = round(
                        average_precision(truth, labels, (0.5,))["ap_pooled"][0], 3)
            if which == "true":
                # The product end to end: predict(volume=True), as `predict --3d` and the Predict widget run it.
                start = time.perf_counter()
                labels = predict(model, image, device=device, diameter=diameter, volume=True, z_scale=z_scale).labels
                figures["predict_volume"] = scored(truth, labels, time.perf_counter() - start)
                start = time.perf_counter()
                labels = predict(model, image, device=device, diameter=diameter, volume=True, z_scale=z_scale,
                                 views="xy").labels
                figures["predict_volume_planes_alone"] = scored(truth, labels, time.perf_counter() - start)
                # Throughput against the same stack predicted plane by plane (the 0.6x).
                start = time.perf_counter()
                predict(model, image, device=device, diameter=diameter)
                planes_seconds = time.perf_counter() - start
                figures["predict_planes_seconds"] = round(planes_seconds, 2)
                figures["volume_throughput_vs_planes"] = round(planes_seconds / figures["predict_volume"]["seconds"], 3)
            else:
                # What a user gets who gives no diameter: the estimate, then the volume at that size.
                start = time.perf_counter()
                labels = predict(model, image, device=device, volume=True, z_scale=z_scale).labels
                figures["predict_volume_without_diameter"] = scored(truth, labels, time.perf_counter() - start)
                start = time.perf_counter()
                labels = predict(model, image, device=device, volume=True, z_scale=z_scale, views="xy").labels
                figures["predict_volume_without_diameter_planes_alone"] = scored(truth, labels,
                                                                                 time.perf_counter() - start)
                figures["estimate_seconds"] = round(estimate_seconds, 2)
            result[f"{which}_diameter_figures"] = figures
        if not args.quick:
            probabilities, factor, _ = stack_probabilities(model, image, diameters["true"], device, per_plane=True)
            start = time.perf_counter()
            labels = ours(model, probabilities, factor, z_scale)
            result["volume_labels_per_plane_normalization"] = scored(truth, labels, time.perf_counter() - start)
        if args.fine_tune:
            result["fine_tuned"] = fine_tuned(model, image, truth, diameters["true"], z_scale, args.fine_tune,
                                              device)
        volumes[name] = result
    mean_ap50 = {method: round(float(np.mean([volume["true_diameter_figures"][method]["ap50"]
                                              for volume in volumes.values()])), 3) for method in METHODS}
    report({"benchmark": "volume", "mean_ap50": mean_ap50, "volumes": volumes, "min_size": MIN_SIZE,
            "threshold": model.threshold, **environment(device, args.quick)})


if __name__ == "__main__":
    main()
