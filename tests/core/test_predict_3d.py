"""Prediction of z-stacks as volumes: the Python API, batches of files and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.batch import predict_files
from napari_unet.core.errors import ImageWarning, InputError, InputWarning
from napari_unet.core.io import read_tiff
from napari_unet.core.metrics import match_counts
from napari_unet.core.predict import predict
from napari_unet.core.registry import load_model
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.tiffstream import written_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _column(depth: int = 6, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A z-stack of nuclei that run through its planes, every other one starting at the second plane.

    Returns:
        The stack, and the 2D labels of its nuclei (where each lies in the planes it is in).
    """
    image, truth = synthetic_nuclei((96, 96), count=10, seed=seed)
    background = np.median(image[truth == 0]).astype(image.dtype)
    first_plane = image.copy()
    first_plane[(truth % 2 == 1)] = background  # odd nuclei start at the second plane
    return np.stack([first_plane] + [image] * (depth - 1)), truth


def _one_label_per_object_through_the_planes(labels: np.ndarray, truth: np.ndarray) -> None:
    """Each nucleus has one label in all the planes it is in, and no two share one.

    Labelling each plane alone numbers them by their place in the plane, which differs
    where a nucleus starts: the second plane holds nuclei the first has not.
    """
    found = {}
    for nucleus in range(1, truth.max() + 1):
        ids = {int(np.bincount(plane[truth == nucleus]).argmax()) for plane in labels[nucleus % 2:]}
        if ids != {0}:
            assert len(ids) == 1, f"nucleus {nucleus} has labels {ids} in the planes it spans"
            found[nucleus] = ids.pop()
    assert len(found) >= 4 and len(set(found.values())) == len(found)


def _two_layers() -> np.ndarray:
    """Two layers of nuclei, each through 12 planes, in a 40-plane stack.

    At a z step of 4 pixels a chunk's halo is 5 planes and its smallest window 20.
    """
    upper, _ = _column(depth=12, seed=3)
    lower, _ = _column(depth=12, seed=8)
    empty = np.full((4, *upper.shape[1:]), np.median(upper), upper.dtype)
    return np.concatenate([empty, upper, empty, empty, lower, empty, empty])


def _zstack_folder(tmp_path, stack: np.ndarray):
    """A folder holding ``stack`` as an ImageJ z-stack, ``zstack.tif``."""
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "zstack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    return folder


@pytest.fixture(scope="module")
def nuclei_model():
    return load_model("nuclei")


def test_a_volume_gives_each_object_one_label_through_its_planes(nuclei_model):
    stack, truth = _column()
    by_plane = predict(nuclei_model, stack, device="cpu")
    # Plane by plane, each plane numbers its own objects: the check below tells them apart.
    with pytest.raises(AssertionError, match="has labels"):
        _one_label_per_object_through_the_planes(by_plane.labels, truth)
    volume = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=2.0)
    assert volume.labels.shape == stack.shape and volume.labels.dtype == np.int32
    _one_label_per_object_through_the_planes(volume.labels, truth)
    # The foreground probability is each plane's, of one intensity range for the whole stack.
    stack_range = nuclei_model.normalization.range_of(stack)
    np.testing.assert_array_equal(volume.probability,
                                  predict(nuclei_model, stack, device="cpu", intensity_range=stack_range).probability)


def test_a_volume_labelled_whole_is_seen_from_the_side_too_and_in_chunks_through_its_planes(nuclei_model,
                                                                                             monkeypatch):
    from napari_unet.core import predict as predict_module
    from napari_unet.core.progress import run_to_end

    stack, truth = _column()
    sides = []
    real = predict_module.side_view_probabilities
    monkeypatch.setattr(predict_module, "side_view_probabilities",
                        lambda volume, *args: sides.append(volume.shape) or (yield from real(volume, *args)))
    progress = []
    seen = run_to_end(predict_module.predict_iter(nuclei_model, stack, volume=True, z_scale=2.0, device="cpu"),
                      progress.append)
    assert sides == [stack.shape]  # views "auto": the volume, labelled whole, seen from the side
    _one_label_per_object_through_the_planes(seen.labels, truth)
    # The side planes are counted on the last plane: one for each row and each column.
    side_steps = [item for item in progress if item.plane == len(stack) - 1 and item.total == sum(stack.shape[1:])]
    assert [item.done for item in side_steps] == list(range(1, sum(stack.shape[1:]) + 1))
    # Other views than the planes' change the labels; "xy" is the planes alone.
    planes_alone = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=2.0, views="xy").labels
    assert len(sides) == 1 and not np.array_equal(planes_alone, seen.labels)
    _one_label_per_object_through_the_planes(planes_alone, truth)
    # Where the volume is not labelled whole, "auto" sees it through its planes; "xyz" is refused, with what it needs.
    monkeypatch.setattr(predict_module, "available_memory", lambda: 20 * 2**20)
    chunked = predict(nuclei_model, _two_layers(), device="cpu", volume=True, z_scale=4.0,
                      diameter=nuclei_model.object_diameter)
    assert len(sides) == 1 and chunked.labels.max() > 0
    with pytest.raises(InputError, match=r"side views of a z-stack need it whole, about 0\.\d GB .*views 'xy' or 'auto'"):
        predict(nuclei_model, _two_layers(), device="cpu", volume=True, z_scale=4.0,
                diameter=nuclei_model.object_diameter, views="xyz")


def test_side_views_are_the_xz_and_yz_planes_in_their_place_at_the_stacks_proportions():
    from napari_unet.core.progress import run_to_end
    from napari_unet.core.views import combined_views, side_view_probabilities

    z, y, x = np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 20), np.linspace(0, 1, 30), indexing="ij")
    volume = (0.2 + 0.3 * z + 0.2 * y + 0.1 * x).astype(np.float32)  # smooth, different along each axis
    shapes = []

    def two_classes(plane):  # a "network" whose foreground is the intensity it reads
        shapes.append(plane.shape)
        yield 1, 1
        return np.concatenate([1 - plane, plane])

    progress = []
    sides = run_to_end(side_view_probabilities(volume, 1.0, 1.0, two_classes), progress.append)
    assert sides.shape == (6, 2, 20, 30) and progress[-1] == (50, 50)
    np.testing.assert_allclose(sides[:, 1], volume, atol=1e-6)  # each XZ and YZ plane back in its place
    shapes.clear()
    stretched = run_to_end(side_view_probabilities(volume, 2.5, 0.5, two_classes))
    # A z step of 2.5 pixels, at half scale: 6 planes are 7.5 network pixels deep, 30 pixels 15 wide.
    assert shapes[0] == (1, 8, 15) and shapes[-1] == (1, 8, 10)
    np.testing.assert_allclose(stretched[:, 1], volume, atol=0.03)
    planes = np.stack([1 - volume, volume], axis=1).astype(np.float16)
    averaged = combined_views(planes, np.zeros_like(sides))
    np.testing.assert_allclose(averaged[:, 1], 0.5 * volume, atol=1e-3)  # the planes' half of the average


def test_each_time_point_of_a_tzyx_stack_is_a_volume_of_its_own(nuclei_model):
    (first, first_truth), (second, second_truth) = _column(seed=3), _column(seed=1)
    labels = predict(nuclei_model, np.stack([first, second]), device="cpu", volume=True, z_scale=2.0).labels
    assert labels.shape == (2, *first.shape)
    for volume, truth in zip(labels, (first_truth, second_truth)):
        _one_label_per_object_through_the_planes(volume, truth)
        assert np.array_equal(np.unique(volume), np.arange(volume.max() + 1))  # numbered from 1 in each


def test_a_3d_batch_writes_each_time_point_of_a_hyperstack_as_a_volume(nuclei_model, tmp_path):
    (first, _), (second, _) = _column(seed=3), _column(seed=1)
    hyperstack = np.stack([first, second])
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "tzyx.tif", hyperstack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZYX", "unit": "um", "spacing": 0.5})
    result = predict_files(nuclei_model, folder, tmp_path / "out", volume=True, device="cpu")
    (done,) = result.files
    expected = predict(nuclei_model, hyperstack, device="cpu", volume=True, z_scale=2.0).labels
    labels, info = read_tiff(done.output)
    assert info.axes == "TZYX" and info.z_step == 0.5
    np.testing.assert_array_equal(labels, expected)  # the same labels, written a volume at a time
    assert done.objects == expected[0].max() + expected[1].max()


def test_a_volume_of_unknown_z_step_is_taken_as_isotropic_with_a_warning(nuclei_model):
    stack, truth = _column(12)
    with pytest.warns(ImageWarning, match="z step of the stack is not known"):
        labels = predict(nuclei_model, stack, device="cpu", volume=True).labels
    _one_label_per_object_through_the_planes(labels, truth)


@pytest.mark.parametrize(("image", "z_scale", "said"), [
    (np.zeros((1, 32, 32), np.uint8), 1.0, "one plane"),
    (np.zeros((32, 32), np.uint8), 1.0, "one plane"),
    (np.zeros((4, 32, 32), np.uint8), 0.0, "positive number"),
    (np.zeros((4, 32, 32), np.uint8), -2.0, "positive number"),
    (np.zeros((4, 32, 32), np.uint8), float("nan"), "positive number"),
    (np.zeros((4, 32, 32), np.uint8), "deep", "number of pixels"),
    (np.zeros((4, 32, 32, 3), np.uint8), 1.0, "colour"),
])
def test_what_cannot_be_labelled_in_3d_is_said_before_any_work(nuclei_model, image, z_scale, said):
    with pytest.raises(InputError, match=said):
        predict(nuclei_model, image, device="cpu", volume=True, z_scale=z_scale)


# -- files -------------------------------------------------------------------------------


def test_a_batch_labels_z_stacks_in_3d_with_their_voxel_size(nuclei_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    stack, truth = _column()
    tifffile.imwrite(folder / "zstack.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.5})
    result = predict_files(nuclei_model, folder, tmp_path / "out", volume=True, device="cpu")
    (done,) = result.files
    assert done.error is None and done.planes == len(stack)
    labels, info = read_tiff(done.output)
    _one_label_per_object_through_the_planes(labels, truth)
    assert done.objects == labels.max()  # counted once, not once per plane
    # The output keeps the voxel size, so that it lies over its image.
    assert (info.axes, info.pixel_size, info.unit, info.z_step) == ("ZYX", (0.25, 0.25), "um", 0.5)
    # Done files are kept on a second run, which says when they were made with other settings.
    assert json.loads(written_settings(done.output))["settings"]["volume"] is True
    with pytest.warns(InputWarning, match="made with other settings.*threshold"):
        again = predict_files(nuclei_model, folder, tmp_path / "out", volume=True, device="cpu", threshold=0.9)
    assert again.files[0].skipped


def test_without_collecting_the_3d_labels_come_with_the_progress_chunk_by_chunk(nuclei_model, monkeypatch):
    import threading

    from napari_unet.core import predict as predict_module
    from napari_unet.core.progress import run_to_end

    stack = _two_layers()
    size = nuclei_model.object_diameter  # the memory plan below is for planes not resized
    # Chunked, a volume is seen through its planes alone (views "auto"), as here.
    collected = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=4.0, diameter=size, views="xy").labels
    # Room for chunks of 26 planes' labelling beside a plane's prediction, and none taken by a stack of results.
    monkeypatch.setattr(predict_module, "available_memory", lambda: 20 * 2**20)
    given = np.full(stack.shape, -1, np.int32)
    parts = []

    def keep(progress):
        if progress.volume_labels is not None:
            first, labels = progress.volume_labels
            given[first:first + len(labels)] = labels
            parts.append(len(labels))

    threads = []
    real_label = predict_module.VolumeLabeller.label
    monkeypatch.setattr(predict_module.VolumeLabeller, "label", lambda labeller, chunk: threads.append(
        threading.current_thread()) or real_label(labeller, chunk))
    prediction = run_to_end(predict_module.predict_iter(nuclei_model, stack, volume=True, z_scale=4.0, device="cpu",
                                                        diameter=size, collect=False), keep)
    assert prediction.labels is None and prediction.probability is None
    assert len(parts) > 1 and sum(parts) == len(stack)  # in chunks, each plane once
    # Each chunk labelled beside the network, in a thread of its own.
    assert len(threads) == len(parts) and threading.main_thread() not in threads
    assert match_counts(collected, given, (0.95,)).tp[0] == collected.max() == given.max()


def test_chunks_in_blocks_are_as_deep_as_label_the_fewest_voxels_again_within_the_memory():
    from napari_unet.core.predict import _chunks_in_blocks
    from napari_unet.core.volume import BYTES_PER_VOXEL, HELD_BYTES_PER_VOXEL, SMALLEST_CHUNK_HALOS

    plane, halo, margin, free = 2048 * 2048, 6, 10, 1_450_000_000  # a 100 x 2048 x 2048 stack under 3 GB

    def labelled_per_given(window: int, tile: int) -> float:  # the voxels labelled for each voxel given
        return window / (window - 2 * halo) * ((tile + 2 * margin) / tile) ** 2

    def held(window: int, tile: int) -> int:
        return window * (plane * HELD_BYTES_PER_VOXEL + (tile + 2 * margin) ** 2 * BYTES_PER_VOXEL)

    window, tile = _chunks_in_blocks(free, plane, 100, halo, margin)
    smallest = SMALLEST_CHUNK_HALOS * halo
    smallest_tile = _chunks_in_blocks(free, plane, smallest, halo, margin)[1]  # the widest blocks of the smallest
    assert held(window, tile) <= free and held(smallest, smallest_tile) <= free
    assert window > smallest and labelled_per_given(window, tile) < 0.8 * labelled_per_given(smallest, smallest_tile)
    assert _chunks_in_blocks(free, plane, 10, halo, margin)[0] == 10  # a shallow volume: whole, in blocks
    assert _chunks_in_blocks(50 * 2**20, plane, 100, halo, margin) is None  # not even the smallest chunks fit


@pytest.mark.parametrize(("memory", "tile", "labelled"), [
    (64 * 2**30, 2048, "whole"),  # room for all: one tile a plane, the volume labelled whole
    (3.2e9, 2048, "blocks"),  # one tile a plane, chunks labelled in blocks beside it
    (2.0e9, 1248, "blocks"),  # one tile would leave no room to label: 2 x 2 tiles
])
def test_the_network_tiles_and_the_labelling_of_a_volume_are_planned_together(nuclei_model, monkeypatch, memory, tile,
                                                                               labelled):
    from napari_unet.core import predict as predict_module
    from napari_unet.core.prediction_settings import PredictionSettings

    monkeypatch.setattr(predict_module, "available_memory", lambda: int(memory))
    settings = predict_module.settled_for(nuclei_model, PredictionSettings(device="cpu"))
    planned, labeller, side_views = predict_module._volume_plan(nuclei_model, settings, (100,), 2048, 2048, 1.0, 2.0,
                                                                False)
    assert planned.tile_size == tile  # kept for every plane, so that the plan holds
    assert (labeller.tile is not None) == (labelled == "blocks") and (labeller.core == 100) == (labelled == "whole")
    assert side_views == (labelled == "whole")  # views "auto": seen from the side where labelled whole
    given, _, _ = predict_module._volume_plan(nuclei_model, settings.replace(tile_size=512), (100,), 2048, 2048, 1.0,
                                           2.0, False)
    assert given.tile_size == 512  # a tile size given is kept


def test_a_3d_batch_writes_as_it_goes_and_labels_what_would_not_fit_beside_a_stack_of_results(
        nuclei_model, tmp_path, monkeypatch):
    from napari_unet.core import predict as predict_module

    stack = _two_layers()
    folder = _zstack_folder(tmp_path, stack)
    size = nuclei_model.object_diameter  # the memory plan below is for planes not resized
    # Chunked, a volume is seen through its planes alone (views "auto"), as here.
    whole = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=4.0, diameter=size, views="xy").labels
    # Room beside a plane's prediction for chunks of 18 planes held in blocks of 55 x 55 pixels (a margin of 10
    # around a middle of 35), and no stack of labels and probability beside them.
    monkeypatch.setattr(predict_module, "available_memory", lambda: 9 * 2**20)
    with pytest.raises(InputError, match="needs about"):
        predict(nuclei_model, stack, device="cpu", volume=True, z_scale=4.0, diameter=size)
    tiles, real = [], predict_module.VolumeLabeller  # the blocks of each labeller made
    monkeypatch.setattr(predict_module, "VolumeLabeller", lambda *args, tile=None, **kwargs:
                        tiles.append(tile) or real(*args, tile=tile, **kwargs))
    result = predict_files(nuclei_model, folder, tmp_path / "out", volume=True, z_scale=4.0, diameter=size,
                           device="cpu")
    assert tiles[-1] is not None and tiles[-1] < stack.shape[-1]
    (done,) = result.files
    assert done.error is None and done.objects == whole.max()
    labels = tifffile.imread(done.output)
    assert labels.dtype == np.uint16 and match_counts(whole, labels, (0.95,)).tp[0] == whole.max()


def test_a_3d_batch_reads_a_stack_a_plane_at_a_time_with_the_labels_of_the_whole(
        nuclei_model, tmp_path, monkeypatch):
    from napari_unet.core import batch as batch_module
    from napari_unet.core.tiffstream import TiffPlanes

    stack = _two_layers()
    folder = _zstack_folder(tmp_path, stack)
    # A deconvolved stack: floating point, its values no longer whole numbers.
    deconvolved = stack.astype(np.float32) * np.float32(0.37)
    tifffile.imwrite(folder / "zfloat.tif", deconvolved, imagej=True, metadata={"axes": "ZYX"})
    whole = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=4.0).labels
    whole_float = predict(nuclei_model, deconvolved, device="cpu", volume=True, z_scale=4.0).labels
    read_whole, real_read = [], batch_module.read_tiff
    monkeypatch.setattr(batch_module, "read_tiff", lambda path: read_whole.append(path.name) or real_read(path))
    given = []
    real_predict_iter = batch_module.predict_iter
    monkeypatch.setattr(batch_module, "predict_iter", lambda model, image, *args, **kwargs: given.append(
        type(image)) or real_predict_iter(model, image, *args, **kwargs))
    result = predict_files(nuclei_model, folder, tmp_path / "out", volume=True, z_scale=4.0, device="cpu")
    assert read_whole == [] and given == [TiffPlanes, TiffPlanes]  # neither stack read whole
    for done, expected in zip(result.files, (whole_float, whole)):  # zfloat.tif, then zstack.tif
        assert done.error is None
        np.testing.assert_array_equal(tifffile.imread(done.output), expected)


def test_a_3d_batch_stopped_in_a_file_leaves_no_output_of_it(nuclei_model, tmp_path):
    import threading

    from napari_unet.core.batch import predict_files_iter

    folder = _zstack_folder(tmp_path, _column()[0])
    stop = threading.Event()
    run = predict_files_iter(nuclei_model, folder, tmp_path / "out", probability=True, volume=True, z_scale=1.0,
                             stop=stop, device="cpu")
    for update in run:
        if update.plane.labels is not None and update.plane.plane == 2:  # planes predicted, none written yet
            stop.set()
    assert not list((tmp_path / "out").iterdir())  # no label file, no probability file, nothing partial


def test_a_time_lapse_stays_plane_by_plane_and_a_file_with_channels_fails_alone(nuclei_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    stack, truth = _column(3)
    tifffile.imwrite(folder / "timelapse.tif", stack, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(folder / "channels.tif", np.stack([stack] * 2, axis=1), imagej=True,
                     metadata={"axes": "ZCYX"})
    with pytest.warns(ImageWarning, match="time-lapse"):
        result = predict_files(nuclei_model, folder, tmp_path / "out", volume=True, z_scale=1.0, device="cpu")
    channels, timelapse = result.files
    assert "channels" in channels.error and not (tmp_path / "out" / "channels.tif").exists()
    labels, _ = read_tiff(timelapse.output)
    # Each time point numbers its own objects: objects are never followed through time.
    with pytest.raises(AssertionError, match="has labels"):
        _one_label_per_object_through_the_planes(labels, truth)
    assert labels[0].max() < labels[1].max() == labels[2].max()  # the first plane lacks the odd nuclei


def test_a_cluster_is_refused_for_3d(nuclei_model, tmp_path):
    class Cluster:
        def predict_units(self, *args):
            raise AssertionError("no plane goes to a cluster in 3D")

    tifffile.imwrite(tmp_path / "zstack.tif", _column(2)[0], photometric="minisblack")
    with pytest.raises(InputError, match="cluster"):
        predict_files(nuclei_model, tmp_path / "zstack.tif", tmp_path / "out", volume=True, executor=Cluster())


def test_the_command_line_labels_in_3d_with_the_voxel_size_given(tmp_path, capsys):
    stack, truth = _column()
    tifffile.imwrite(tmp_path / "zstack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["predict", "--model", "nuclei", str(tmp_path / "zstack.tif"), "--out", str(out), "--3d",
                 "--voxel-size", "1.0", "0.5", "0.5", "--device", "cpu"]) == 0  # z step: 2 pixels
    _one_label_per_object_through_the_planes(tifffile.imread(out / "zstack.tif"), truth)
    # A voxel size is for 3D only: said in one line, nothing written.
    capsys.readouterr()
    assert main(["predict", "--model", "nuclei", str(tmp_path / "zstack.tif"), "--out", str(tmp_path / "other"),
                 "--voxel-size", "1.0", "0.5", "0.5"]) != 0
    assert "add --3d" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert main(["predict", "--model", "nuclei", str(tmp_path / "zstack.tif"), "--out", str(tmp_path / "other"),
                 "--views", "xy"]) != 0  # so are the views
    assert "add --3d" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # Through its planes alone, as predict(views="xy") labels it.
    assert main(["predict", "--model", "nuclei", str(tmp_path / "zstack.tif"), "--out", str(tmp_path / "planes"),
                 "--3d", "--views", "xy", "--voxel-size", "1.0", "0.5", "0.5", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "planes" / "zstack.tif"), predict(
        "nuclei", stack, device="cpu", volume=True, z_scale=2.0, views="xy").labels)
    with pytest.raises(SystemExit) as exit_code:  # a usage error, as argparse says it
        main(["predict", "--model", "nuclei", str(tmp_path / "zstack.tif"), "--out", str(tmp_path / "other"),
              "--3d", "--voxel-size", "0", "0.5", "0.5"])
    assert exit_code.value.code == 2 and "positive number" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_stack_unlike_the_models_images_is_said_so_once_not_once_a_plane(nuclei_model, shared_data):
    import warnings

    slices = tifffile.imread(shared_data / "isbi2012" / "volume.tif")[:3, :256, :256]  # EM, to a nuclei model
    for volume in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predict(nuclei_model, slices, device="cpu", volume=volume, z_scale=1.0)
        said = [str(warning.message) for warning in caught if "looks unlike" in str(warning.message)]
        assert len(said) == 1, said


def test_a_volume_too_large_for_the_memory_is_refused_before_any_work(nuclei_model, monkeypatch):
    from napari_unet.core import predict as predict_module

    monkeypatch.setattr(predict_module, "available_memory", lambda: 50 * 2**20)  # 50 MB free
    stack = np.zeros((40, 512, 512), np.uint8)  # 10.5 million voxels: about 1.1 GB to label
    with pytest.raises(InputError, match=r"needs about \d\.\d GB .* 0\.0 GB are free: crop it"):
        predict(nuclei_model, stack, device="cpu", volume=True, z_scale=1.0)
    predict(nuclei_model, stack[:2, :64, :64], device="cpu", volume=True, z_scale=1.0)  # a small one fits


def test_a_deep_volume_too_large_to_label_whole_is_labelled_in_chunks_into_the_same_objects(nuclei_model, monkeypatch):
    from napari_unet.core import predict as predict_module
    from napari_unet.core.metrics import match_counts

    stack = _two_layers()
    # Chunked, a volume is seen through its planes alone (views "auto"), as here.
    whole = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=4.0, views="xy").labels
    # Room for about 28 planes' labelling beside the stack of results: not the 44 planes at once.
    monkeypatch.setattr(predict_module, "available_memory", lambda: 23 * 2**20)
    windows, real = [], predict_module.VolumeLabeller  # the chunk window of each labeller made
    monkeypatch.setattr(predict_module, "VolumeLabeller", lambda *args, window=None, **kwargs:
                        windows.append(window) or real(*args, window=window, **kwargs))
    chunked = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=4.0).labels
    assert windows and 20 <= windows[-1] < len(stack)
    assert chunked.max() == whole.max() >= 15 and len(np.unique(chunked)) == chunked.max() + 1
    assert match_counts(whole, chunked, (0.95,)).tp[0] == whole.max()


def test_large_objects_are_labelled_on_the_networks_grid_and_given_on_the_images(nuclei_model, monkeypatch):
    from scipy import ndimage

    from napari_unet.core import predict as predict_module
    from napari_unet.core import volume as volume_module

    stack, truth = _column()
    # Nuclei 2.5 times as large: shrunk to the model's size for the network (factor about 0.4).
    large = ndimage.zoom(stack, (1, 2.5, 2.5), order=1)
    large_truth = ndimage.zoom(truth, 2.5, order=0)
    grids = []
    real = volume_module._volume_labels_of_masks
    monkeypatch.setattr(volume_module, "_volume_labels_of_masks", lambda separated, *args:
                        grids.append(separated.shape) or real(separated, *args))
    diameter = 2.5 * predict_module.object_diameter(truth)
    labels = predict(nuclei_model, large, device="cpu", volume=True, z_scale=5.0, diameter=diameter).labels
    assert labels.shape == large.shape
    (grid,) = grids
    assert grid[-2:] == predict_module.scaled_shape(large.shape[-2:], nuclei_model.object_diameter / diameter)
    _one_label_per_object_through_the_planes(labels, large_truth)


def test_a_volumes_diameter_is_estimated_in_3d_by_default_not_on_its_first_plane(nuclei_model):
    from scipy import ndimage

    from napari_unet.core.predict import estimate_diameter

    stack, truth = _column()
    # Nuclei twice the model's size, and a first plane of haze alone, as at a z-stack's end.
    stack, truth = ndimage.zoom(stack, (1, 2, 2), order=1), ndimage.zoom(truth, 2, order=0)
    stack[0] = np.median(stack[1][truth == 0])
    with pytest.warns(ImageWarning, match="no objects of a size"):
        assert predict(nuclei_model, stack, device="cpu", diameter="auto").scale == 1.0  # plane by plane: none
    true_diameter = 2 * np.sqrt(np.bincount(truth.ravel())[1:].mean() / np.pi)
    estimated = estimate_diameter(nuclei_model, stack, device="cpu", volume=True, z_scale=2.0)
    assert estimated == pytest.approx(true_diameter, rel=0.25)
    by_default = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=2.0)  # no diameter given
    assert by_default.diameter == estimated and by_default.scale < 0.75
    _one_label_per_object_through_the_planes(by_default.labels[1:], truth)  # the first plane is haze
    assert predict(nuclei_model, stack, device="cpu", diameter="auto", volume=True, z_scale=2.0).diameter == estimated


def test_the_shared_plant_nuclei_are_sized_and_labelled_in_3d_without_a_diameter(nuclei_model, shared_data):
    from napari_unet.core.metrics import average_precision

    folder = shared_data / "nuclei3d"
    stack, truth = (tifffile.imread(folder / kind / "1135_mini.tif") for kind in ("images", "labels"))
    # Nuclei 21.6 pixels wide at their widest plane, a third more than the model's 16.7; z step 2.2 pixels.
    prediction = predict(nuclei_model, stack, device="cpu", volume=True, z_scale=0.284 / 0.127)
    assert prediction.diameter == pytest.approx(21.6, rel=0.25)
    # At the model's own size the nuclei split in z: 3D AP50 0.21; sized, 0.67.
    assert average_precision(truth, prediction.labels, (0.5,), volumes=True)["ap_pooled"][0] > 0.6


def test_a_batch_in_3d_names_the_file_a_warning_is_about(nuclei_model, shared_data, tmp_path):
    import warnings

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "em.tif", tifffile.imread(shared_data / "isbi2012" / "volume.tif")[:3, :128, :128],
                     imagej=True, metadata={"axes": "ZYX"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_files(nuclei_model, folder, tmp_path / "out", volume=True, z_scale=1.0, device="cpu")
    said = [str(warning.message) for warning in caught if "looks unlike" in str(warning.message)]
    assert len(said) == 1 and said[0].startswith("em.tif: "), said


def test_evaluate_scores_z_stacks_in_3d_when_asked(tmp_path, capsys):
    import json

    truth = np.zeros((4, 16, 16), np.uint16)
    truth[:, 2:7, 2:7], truth[:, 9:14, 9:14] = 1, 2
    per_plane = truth.copy()
    per_plane[1:3] = np.where(truth[1:3] == 1, 2, np.where(truth[1:3] == 2, 1, 0))  # as planes number them
    for folder, labels in (("gt", truth), ("pred", per_plane)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "stack.tif", labels, imagej=True, metadata={"axes": "ZYX"})
    arguments = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main([*arguments, "--json", str(tmp_path / "planes.json")]) == 0
    assert main([*arguments, "--3d", "--json", str(tmp_path / "volumes.json")]) == 0
    planes, volumes = (json.loads((tmp_path / name).read_text()) for name in ("planes.json", "volumes.json"))
    assert planes["ap_pooled"][0] == 1.0 and volumes["ap_pooled"][0] == 0.0  # 3D sees the numbers change
    assert volumes["volumes"] == 1 and "1 volume(s), scored in 3D" in capsys.readouterr().out
    # A plane has no z axis to score in 3D: said in one line.
    tifffile.imwrite(tmp_path / "gt" / "stack.tif", truth[0])
    tifffile.imwrite(tmp_path / "pred" / "stack.tif", truth[0])
    assert main([*arguments, "--3d"]) != 0
    assert "--3d scores z-stacks" in capsys.readouterr().err


def test_measuring_a_volume_at_a_scale_that_enlarges_it_labels_a_narrower_block(nuclei_model, monkeypatch):
    from napari_unet.core import predict as predict_module
    from napari_unet.core.normalize import as_planes

    monkeypatch.setattr(predict_module, "SIZING_BLOCK", (6, 96))
    stack = np.random.default_rng(0).integers(0, 200, (10, 120, 120)).astype(np.uint8)
    planes, _ = as_planes(stack, 1)
    fed = []
    real = predict_module.predict_planes_iter
    monkeypatch.setattr(predict_module, "predict_planes_iter", lambda model, pairs, *args, **kwargs: real(
        model, ((fed.append((plane.shape[-2:], factor)) or plane, factor) for plane, factor in pairs), *args,
        **kwargs))
    monkeypatch.setattr(predict_module, "_confirmed_diameter",
                        lambda model, measure: [measure(factor) for factor in (8.0, 0.5)] and None)
    predict_module._estimate_volume_diameter(nuclei_model, planes, predict_module.settled_for(
        nuclei_model, predict_module.PredictionSettings(device="cpu")), 2.0)
    most_planes, most_pixels = predict_module.SIZING_BLOCK
    enlarged = [shape for shape, factor in fed if factor == 8.0]
    shrunk = [shape for shape, factor in fed if factor == 0.5]
    assert len(enlarged) == len(shrunk) == most_planes  # the central planes
    assert enlarged[0] == (most_pixels // 8, most_pixels // 8) and shrunk[0] == (most_pixels, most_pixels)
