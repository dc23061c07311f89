"""3D labels of z-stacks from per-plane probabilities: one label per object across its planes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core import volume as volume_module
from napari_unet.core.errors import InputError
from napari_unet.core.metrics import match_counts
from napari_unet.core.targets import class_targets
from napari_unet.core.volume import VolumeLabeller, chunk_halo, smallest_volume, trim_axial_blur, volume_labels

DIAMETER = 20  # XY pixels


def balls(shape: tuple[int, int, int], centres: list[tuple[float, float, float]], z_scale: float,
          radius: float = DIAMETER / 2) -> np.ndarray:
    """Labels of balls of ``radius`` XY pixels in a stack of planes ``z_scale`` pixels apart.

    Overlapping balls are split at the plane halfway between their centres: they touch.
    """
    z, y, x = np.indices(shape, dtype=np.float32)
    z = z * z_scale
    distances = np.stack([np.sqrt((z - cz * z_scale) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) for cz, cy, cx in centres])
    nearest = distances.argmin(0)
    return np.where(distances.min(0) <= radius, nearest + 1, 0).astype(np.int32)


def network_like(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    """``(Z, classes, Y, X)`` probabilities a 2D network might give for each plane: its one-hot classes, blurred in XY."""
    planes = []
    for plane in labels:
        one_hot = np.eye(classes, dtype=np.float32)[class_targets(plane, classes, gap=1)].transpose(2, 0, 1)
        blurred = np.stack([ndimage.gaussian_filter(channel, 1.0) for channel in one_hot])
        planes.append(blurred / blurred.sum(axis=0, keepdims=True))
    return np.stack(planes)


def matched(truth: np.ndarray, labels: np.ndarray, iou: float = 0.7) -> int:
    """Objects of ``truth`` found one-to-one in ``labels`` with at least ``iou``."""
    return int(match_counts(truth, labels, (iou,)).tp[0])


def test_each_ball_is_one_object_across_its_planes():
    truth = balls((24, 64, 64), [(6, 16, 16), (12, 16, 46), (16, 46, 20), (10, 46, 48)], z_scale=2.0)
    labels = volume_labels(network_like(truth), 2.0, threshold=0.5, object_diameter=DIAMETER)
    assert labels.max() == 4
    assert matched(truth, labels) == 4


def test_touching_objects_separated_by_the_boundary_class_stay_apart():
    truth = balls((20, 40, 64), [(10, 20, 22), (10, 20, 40)], z_scale=2.0)  # centres 18 px apart: they touch
    assert np.count_nonzero((truth[:, :, 1:] != truth[:, :, :-1]) & (truth[:, :, 1:] > 0) & (truth[:, :, :-1] > 0))
    labels = volume_labels(network_like(truth), 2.0, threshold=0.5, object_diameter=DIAMETER)
    assert labels.max() == 2
    assert matched(truth, labels) == 2


def test_objects_touching_across_planes_stay_apart_at_the_stacks_z_scale():
    # Two balls one above the other in a stack of planes 3 pixels apart: measured as if the
    # planes were 1 pixel apart they would be flat discs, of whose distance a diameter's
    # tenth is no peak.
    z_scale = 3.0
    truth = balls((14, 32, 32), [(3.6, 16, 16), (9.6, 16, 16)], z_scale)
    probabilities = network_like(truth)
    labels = volume_labels(probabilities, z_scale, threshold=0.5, object_diameter=DIAMETER)
    assert labels.max() == 2
    assert matched(truth, labels, 0.6) == 2
    assert volume_labels(probabilities, 1.0, threshold=0.5, object_diameter=DIAMETER).max() != 2


def test_min_size_is_an_area_in_a_plane_counted_as_a_ball():
    assert smallest_volume(10, 1.0) == 24  # a ball whose largest cross-section has 10 pixels
    assert smallest_volume(10, 2.2) == 11  # planes 2.2 pixels apart hold fewer voxels of it
    assert smallest_volume(0, 3.0) == 1
    truth = balls((16, 48, 48), [(8, 24, 16), (8, 24, 38)], 2.0, radius=DIAMETER / 2)
    truth[truth == 2] = 0
    small = balls((16, 48, 48), [(8, 24, 38)], 2.0, radius=5) * 2  # about 260 voxels
    truth = np.where(small > 0, small, truth)
    probabilities = network_like(truth)
    kept = volume_labels(probabilities, 2.0, threshold=0.5, min_size=10, object_diameter=DIAMETER)
    assert kept.max() == 2
    # 100 pixels: the cross-section of a ball of 11.3 pixels, 376 voxels at this z step.
    removed = volume_labels(probabilities, 2.0, threshold=0.5, min_size=100, object_diameter=DIAMETER)
    assert removed.max() == 1
    assert matched(truth == 1, removed) == 1


def test_two_classes_separate_touching_objects_and_give_back_the_gap():
    truth = balls((20, 40, 64), [(10, 20, 22), (10, 20, 40)], z_scale=2.0)
    probabilities = network_like(truth, classes=2)
    labels = volume_labels(probabilities, 2.0, threshold=0.5, gap=1, object_diameter=DIAMETER)
    assert labels.max() == 2
    assert matched(truth, labels, 0.8) == 2
    # The gap voxels between them belong to objects again: the two meet.
    meeting = (labels[:, :, 1:] != labels[:, :, :-1]) & (labels[:, :, 1:] > 0) & (labels[:, :, :-1] > 0)
    assert meeting.any()


def test_labels_are_int32_and_consecutive_without_a_diameter():
    truth = balls((24, 64, 64), [(6, 16, 16), (12, 16, 46), (16, 46, 20), (10, 46, 48)], z_scale=2.0)
    labels = volume_labels(network_like(truth), 2.0, threshold=0.5)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert matched(truth, labels) == 4


def test_nothing_to_label_gives_background():
    probabilities = np.zeros((3, 3, 16, 16), np.float32)
    probabilities[:, 0] = 1.0
    labels = volume_labels(probabilities, 2.0)
    assert labels.dtype == np.int32 and not labels.any()


@pytest.mark.parametrize("shape, z_scale", [((3, 16, 16), 1.0), ((2, 4, 16, 16), 1.0), ((2, 3, 16, 16), 0.0)])
def test_refuses_what_is_not_a_stack_of_probabilities(shape, z_scale):
    with pytest.raises(InputError):
        volume_labels(np.full(shape, 0.25, np.float32), z_scale)


#: 3D AP50 of the ``nuclei`` model on 1135_mini at its true diameter (21.6 px), measured
#: by bench/bench_volume.py: 0.645 with volume_labels, 0 with its planes labelled alone.
MEASURED_AP50 = 0.645


@pytest.mark.slow
def test_nuclei_volume_beats_planes_labelled_alone(shared_data, one_torch_thread):
    import tifffile

    from napari_unet.core.normalize import IntensityRange, as_planes
    from napari_unet.core.postprocess import probabilities_to_labels
    from napari_unet.core.predict import predict_probabilities
    from napari_unet.core.progress import run_to_end
    from napari_unet.core.registry import load_model
    from napari_unet.core.scale import resize_plane, scale_factor, scaled_shape

    folder = shared_data / "nuclei3d"
    image = tifffile.imread(folder / "images" / "1135_mini.tif")
    truth = tifffile.imread(folder / "labels" / "1135_mini.tif")
    model = load_model("nuclei")
    factor = scale_factor(model, 21.6)
    planes, _ = as_planes(image, 1)
    low, high = np.percentile(image, [1, 99.8])  # one range for the stack: its empty planes stay dark
    probabilities = np.stack([
        resize_plane(run_to_end(predict_probabilities(
            model.network, resize_plane(plane, scaled_shape(plane.shape[-2:], factor)), device="cpu", amp=False)),
            plane.shape[-2:])
        for plane in IntensityRange(float(low), float(high))(planes)])
    z_scale = 0.284 / 0.127

    labels = volume_labels(probabilities, z_scale, model.threshold, 10, model.gap, model.object_diameter / factor)
    planes_alone = np.stack([probabilities_to_labels(plane, model.threshold, 10, model.gap, 1 / factor,
                                                     model.object_diameter) for plane in probabilities])
    ap50 = float(match_counts(truth, labels, (0.5,)).average_precision[0])
    planes_ap50 = float(match_counts(truth, planes_alone, (0.5,)).average_precision[0])
    assert ap50 >= MEASURED_AP50 - 0.1
    assert ap50 >= planes_ap50 + 0.4


def _blurred_columns() -> tuple[np.ndarray, np.ndarray]:
    """Labels of three objects through all 11 planes, and intensities that fall off along z away from plane 5.

    Object 1 is bright, with its half maximum at 2 planes from its brightest; object 2
    the same but shifted to peak in plane 1; object 3 darker than the background.
    """
    labels = np.zeros((11, 12, 36), np.int32)
    labels[:, 2:10, 2:10], labels[:, 2:10, 14:22], labels[:, 2:10, 26:34] = 1, 2, 3
    profile = np.exp(-0.5 * ((np.arange(11) - 5) / 1.9) ** 2)  # half maximum 2.2 planes from the peak
    intensities = np.zeros(labels.shape, np.float32)
    intensities[:, 2:10, 2:10] = profile[:, None, None]
    intensities[:, 2:10, 14:22] = np.roll(profile, -4)[:, None, None]
    intensities[:, 2:10, 26:34] = -0.2
    return labels, intensities


def test_blur_above_and_below_an_object_is_trimmed_at_half_its_brightest_plane():
    labels, intensities = _blurred_columns()
    trim_axial_blur(labels, iter(intensities))
    planes_of = {label: np.flatnonzero((labels == label).any(axis=(1, 2))).tolist() for label in (1, 2, 3)}
    assert planes_of[1] == [3, 4, 5, 6, 7]
    assert planes_of[2] == [0, 1, 2, 3]
    assert planes_of[3] == list(range(11))  # darker than the background: left whole


def test_objects_that_go_on_beyond_a_chunk_are_left_whole():
    labels, intensities = _blurred_columns()
    labels[0][labels[0] == 1] = 0  # object 1 starts in the chunk
    trim_axial_blur(labels, iter(intensities), open_start=True)
    assert (labels == 2).any(axis=(1, 2)).all()  # it reaches the first plane, where the chunk is open
    assert np.flatnonzero((labels == 1).any(axis=(1, 2))).tolist() == [3, 4, 5, 6, 7]


def test_cells3d_nuclei_end_where_their_blur_begins(shared_data, one_torch_thread):
    import tifffile

    from napari_unet.core.metrics import average_precision
    from napari_unet.core.predict import predict
    from napari_unet.core.registry import load_model

    folder = shared_data / "nuclei3d"
    image, truth = (tifffile.imread(folder / kind / "cells3d_nuclei.tif") for kind in ("images", "labels"))
    labels = predict(load_model("nuclei"), image, device="cpu", volume=True, z_scale=0.29 / 0.26, diameter=47).labels
    # Untrimmed, the nuclei ran 39.5 planes deep against 29.5 annotated: AP75 0.33.
    ap50, ap75 = average_precision(truth, labels, (0.5, 0.75), volumes=True)["ap_pooled"]
    assert ap50 > 0.85 and ap75 > 0.7


def _labelled_by_chunks(probabilities: np.ndarray, z_scale: float, window: int | None, monkeypatch,
                        tile: int | None = None) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Labels of a volume fed plane by plane to a :class:`VolumeLabeller`, and the shape of each part it labelled."""
    depth = len(probabilities)
    parts = []
    real = volume_module._volume_labels_of_masks
    monkeypatch.setattr(volume_module, "_volume_labels_of_masks", lambda separated, *args: parts.append(separated.shape)
                        or real(separated, *args))
    labeller = VolumeLabeller(depth, probabilities.shape[-2:], 1.0, z_scale, 0.5, 10, 1, DIAMETER, window=window,
                              tile=tile)
    labels = np.full((depth, *probabilities.shape[-2:]), -1, np.int32)
    for index, plane in enumerate(probabilities):
        done = labeller.add(index, plane)
        if done is not None:
            first, part = done
            assert (labels[first:first + len(part)] == -1).all()  # each plane given once
            labels[first:first + len(part)] = part
    return labels, parts


def test_a_deep_volume_labelled_in_chunks_gives_the_objects_of_the_whole_volume(monkeypatch):
    # Columns of touching balls (18 pixels apart in z, 20 across) and a few alone, at every depth.
    centres = [(z, y, x) for z in range(4, 56, 9) for y, x in [(16, 16), (46, 46)]]
    centres += [(8, 16, 48), (21, 46, 15), (33, 14, 47), (47, 45, 16), (55, 16, 47)]
    truth = balls((60, 64, 64), centres, z_scale=2.0)
    probabilities = network_like(truth)
    whole = volume_labels(probabilities, 2.0, threshold=0.5, object_diameter=DIAMETER)
    halo = chunk_halo(DIAMETER, 2.0)
    window = 2 * halo + 6  # chunks of 6 planes: every ball (10 planes deep) meets a chunk's edge
    chunked, chunks = _labelled_by_chunks(probabilities, 2.0, window, monkeypatch)
    assert (chunked >= 0).all() and len(chunks) > 3 and max(depth for depth, _, _ in chunks) <= window
    assert chunked.max() == whole.max() == len(np.unique(chunked)) - 1  # numbered 1..N
    assert matched(whole, chunked, iou=0.95) == whole.max()
    assert matched(truth, chunked) == matched(truth, whole)


@pytest.mark.parametrize("chunked", [False, True])
def test_large_planes_labelled_in_blocks_give_the_objects_of_the_whole_volume(chunked, monkeypatch):
    # Touching balls across the blocks' edges (every 24 pixels) and corners, at every depth.
    centres = [(z, y, x) for z in (6, 15, 24) for y in (14, 34, 50, 70) for x in (22, 47, 72)]
    centres = [centre for number, centre in enumerate(centres) if number % 3]  # some room between them
    truth = balls((30, 96, 96), centres, z_scale=2.0)
    probabilities = network_like(truth)
    whole = volume_labels(probabilities, 2.0, threshold=0.5, object_diameter=DIAMETER)
    halo, margin = chunk_halo(DIAMETER, 2.0), chunk_halo(DIAMETER, 1.0)
    window = 2 * halo + 6 if chunked else None
    labels, parts = _labelled_by_chunks(probabilities, 2.0, window, monkeypatch, tile=24)
    assert max(height for _, height, _ in parts) <= 24 + 2 * margin and len(parts) >= 16
    assert labels.max() == whole.max() == len(np.unique(labels)) - 1  # numbered 1..N
    assert matched(whole, labels, iou=0.95) == whole.max()
    assert matched(truth, labels) == matched(truth, whole) >= len(centres) - 2
    with pytest.raises(ValueError, match="narrower than their margin"):
        VolumeLabeller(30, (96, 96), 1.0, 2.0, 0.5, 10, 1, DIAMETER, tile=margin - 1)


def test_a_volume_that_fits_is_labelled_whole_as_before(monkeypatch):
    truth = balls((24, 64, 64), [(6, 16, 16), (12, 16, 46), (16, 46, 20)], z_scale=2.0)
    probabilities = network_like(truth)
    labels, chunks = _labelled_by_chunks(probabilities, 2.0, None, monkeypatch)
    assert chunks == [truth.shape]
    np.testing.assert_array_equal(labels, volume_labels(probabilities, 2.0, threshold=0.5, object_diameter=DIAMETER))
