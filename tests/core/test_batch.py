"""The streaming batch engine: TIFF stacks in, label stacks out, safely, locally and on Dask."""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core import batch
from napari_unet.core import predict as core_predict
from napari_unet.core.batch import output_paths, predict_array, predict_files, predict_files_iter
from napari_unet.core.bundle import Model
from napari_unet.core.errors import ImageWarning, InputError, InputWarning
from napari_unet.core.model import NetworkConfig
from napari_unet.core.predict import predict
from napari_unet.core.prediction_settings import PredictionSettings
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.tiffstream import partial_path

#: A random tiny network finds a dozen "objects" per plane at this threshold: enough to compare.
#: float32 also in Dask's worker processes, which the suite's patch of the CPU (conftest)
#: does not reach: on a CPU with AMX they would predict in bfloat16.
OPTIONS = {"device": "cpu", "threshold": 0.55, "min_size": 3, "amp": False}


@pytest.fixture
def model(one_torch_thread):
    return Model.new(NetworkConfig(depth=1, base_width=4))


def _planes(count, shape=(36, 28), dtype=np.uint16):
    """``count`` different generated nuclei planes (odd sizes on purpose)."""
    planes = [synthetic_nuclei(shape, count=4, seed=seed)[0] for seed in range(count)]
    stack = np.stack(planes).astype(np.float32)
    if dtype == np.uint8:
        stack = stack / stack.max() * 255
    return stack.astype(dtype)


def _expected(model, data, leading_axes=None):
    """Labels of every plane predicted on its own, as the engine promises."""
    flat = data.reshape(-1, *data.shape[-2:])
    labels = np.stack([predict(model, plane, **OPTIONS).labels for plane in flat])
    return labels.reshape(data.shape)


def _files_in(folder):
    """Every file in a folder, hidden partial files included."""
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


def _write(path, kind, dtype=np.uint16):
    """A test input of one kind; returns its pixels."""
    if kind == "multipage":
        data = _planes(3, dtype=dtype)
        tifffile.imwrite(path, data, photometric="minisblack", resolution=(4.0, 4.0), resolutionunit="CENTIMETER")
    elif kind == "hyperstack":
        data = _planes(8, dtype=dtype).reshape(2, 2, 2, 36, 28)
        tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                         metadata={"axes": "TZCYX", "unit": "um", "spacing": 1.5, "finterval": 2.0})
    elif kind == "ome":
        data = _planes(4, dtype=dtype).reshape(2, 2, 36, 28)
        tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                         metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 2.0})
    elif kind == "bigtiff":
        data = _planes(2, dtype=dtype)
        tifffile.imwrite(path, data, bigtiff=True, photometric="minisblack", compression="zlib")
    elif kind == "single":
        data = _planes(1, dtype=dtype)[0]
        tifffile.imwrite(path, data)
    return data


@pytest.mark.parametrize("kind, dtype, axes", [
    ("single", np.uint8, "YX"),
    ("multipage", np.uint8, "QYX"),
    ("hyperstack", np.uint16, "TZCYX"),
    ("ome", np.float32, "ZCYX"),
    ("bigtiff", np.uint16, "QYX"),
])
def test_each_output_matches_plane_by_plane_prediction_with_the_inputs_axes(tmp_path, model, kind, dtype, axes):
    data = _write(tmp_path / "in.tif", kind, dtype)
    result = predict_files(model, [tmp_path / "in.tif"], tmp_path / "out", **OPTIONS)
    assert not result.failed and result.files[0].planes == max(1, data.size // (36 * 28))
    with tifffile.TiffFile(tmp_path / "out" / "in.tif") as tif:
        series = tif.series[0]
        assert (series.axes, series.shape, series.dtype) == (axes, data.shape, np.uint16)
        labels = series.asarray()
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        if kind == "hyperstack":
            assert tif.is_imagej
            metadata = tif.imagej_metadata
            assert (metadata["unit"], metadata["spacing"], metadata["finterval"]) == ("um", 1.5, 2.0)
            assert tif.pages.first.tags["XResolution"].value == (4, 1)
        elif kind == "ome":
            assert tif.is_ome and 'PhysicalSizeX="0.3"' in tif.ome_metadata and 'PhysicalSizeZ="2.0"' in tif.ome_metadata
        elif kind == "multipage":
            assert tif.pages.first.tags["XResolution"].value == (4, 1)
            assert tif.pages.first.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
    np.testing.assert_array_equal(labels, _expected(model, data))
    assert result.files[0].objects == sum(int(plane.max()) for plane in labels.reshape(-1, 36, 28)) > 0


def test_a_multichannel_model_takes_the_channel_axis_of_a_hyperstack(tmp_path, one_torch_thread):
    model = Model.new(NetworkConfig(depth=1, base_width=4, in_channels=2))
    data = _planes(4).reshape(2, 2, 36, 28)  # TCYX
    tifffile.imwrite(tmp_path / "two.tif", data, imagej=True, metadata={"axes": "TCYX"})
    predict_files(model, [tmp_path / "two.tif"], tmp_path / "out", **OPTIONS)
    with tifffile.TiffFile(tmp_path / "out" / "two.tif") as tif:
        assert tif.series[0].axes == "TYX"
        labels = tif.series[0].asarray()
    expected = np.stack([predict(model, frame, channel_axis=0, **OPTIONS).labels for frame in data])
    np.testing.assert_array_equal(labels, expected)


def test_an_interrupted_run_leaves_no_finished_looking_output_and_the_rerun_completes_it(tmp_path, model, monkeypatch):
    _write(tmp_path / "a.tif", "multipage")
    data = _write(tmp_path / "b.tif", "hyperstack")
    files = [tmp_path / "a.tif", tmp_path / "b.tif"]
    real = batch._only_plane
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the second plane of b.tif
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_only_plane", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_files(model, files, tmp_path / "out", **OPTIONS)
    assert _files_in(tmp_path / "out") == ["a.tif"]  # no b.tif, and no partial file either

    monkeypatch.setattr(batch, "_only_plane", real)
    result = predict_files(model, files, tmp_path / "out", **OPTIONS)
    assert [(item.skipped, item.planes) for item in result.files] == [(True, 0), (False, 8)]
    assert _files_in(tmp_path / "out") == ["a.tif", "b.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "b.tif"), _expected(model, data))


def test_a_process_killed_mid_file_is_redone(tmp_path, model):
    data = _write(tmp_path / "a.tif", "multipage")
    out = tmp_path / "out"
    out.mkdir()
    partial_path(out / "a.tif").write_bytes(b"half a file from a killed run")
    result = predict_files(model, [tmp_path / "a.tif"], out, **OPTIONS)
    assert not result.files[0].skipped
    assert _files_in(out) == ["a.tif"]
    np.testing.assert_array_equal(tifffile.imread(out / "a.tif"), _expected(model, data))


def test_stopping_or_closing_the_batch_mid_file_discards_that_file_only(tmp_path, model):
    for name in ("a.tif", "b.tif"):
        _write(tmp_path / name, "multipage")
    files = [tmp_path / "a.tif", tmp_path / "b.tif"]
    stop = threading.Event()
    generator = predict_files_iter(model, files, tmp_path / "out", stop=stop, **OPTIONS)
    while next(generator).file == 0:
        pass
    stop.set()  # b.tif has started
    with pytest.raises(StopIteration) as finished:
        while True:
            next(generator)
    result = finished.value.value
    assert result.cancelled and [item.path.name for item in result.files] == ["a.tif"]
    assert _files_in(tmp_path / "out") == ["a.tif"]

    generator = predict_files_iter(model, files, tmp_path / "out", overwrite=True, **OPTIONS)
    next(generator)
    generator.close()
    assert _files_in(tmp_path / "out") == ["a.tif"]


def test_corrupt_inputs_are_reported_and_the_others_still_run(tmp_path, model):
    _write(tmp_path / "a_good.tif", "single")
    (tmp_path / "b_garbage.tif").write_bytes(b"II*\x00this is not a tiff")
    _write(tmp_path / "c_whole.tif", "hyperstack")
    content = (tmp_path / "c_whole.tif").read_bytes()
    (tmp_path / "c_truncated.tif").write_bytes(content[: len(content) * 2 // 3])
    (tmp_path / "c_whole.tif").unlink()
    _write(tmp_path / "d_good.tif", "multipage")
    files = sorted(tmp_path.glob("*.tif"))
    progress = []
    result = predict_files(model, files, tmp_path / "out", on_progress=progress.append, **OPTIONS)
    assert [item.path.name for item in result.failed] == ["b_garbage.tif", "c_truncated.tif"]
    assert all(item.path.name in item.error for item in result.failed)
    assert "truncated" in result.failed[1].error
    assert _files_in(tmp_path / "out") == ["a_good.tif", "d_good.tif"]
    # The failed inputs' planes leave the total, so the progress ends at 1.
    assert progress[-1].planes_done == progress[-1].planes_total == 4 and progress[-1].fraction == 1.0
    assert all(b.planes_done >= a.planes_done for a, b in zip(progress, progress[1:]))


def test_a_files_labels_are_made_while_the_next_file_goes_through_the_network(
        tmp_path, model, monkeypatch, first_labels_wait_for_the_network):
    # A folder of single-plane images gains from the overlap only if it runs across files.
    planes = _planes(3)
    for name, plane in zip("abc", planes):
        tifffile.imwrite(tmp_path / f"{name}.tif", plane)
    waited = first_labels_wait_for_the_network(model.network)
    result = predict_files(model, tmp_path / "*.tif", tmp_path / "out", **OPTIONS)
    assert waited == [True]
    assert [item.planes for item in result.files] == [1, 1, 1] and not result.failed
    monkeypatch.undo()
    for name, plane in zip("abc", planes):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tif"), _expected(model, plane))


def test_a_file_that_fails_in_the_network_fails_alone_and_the_files_around_it_are_finished(tmp_path, model):
    _write(tmp_path / "a.tif", "single")
    broken = _planes(3).astype(np.float32)
    broken[1] = np.nan  # "no finite pixel values", found only when the plane is normalized
    tifffile.imwrite(tmp_path / "b.tif", broken, photometric="minisblack")
    data = {"a": tifffile.imread(tmp_path / "a.tif"), "c": _write(tmp_path / "c.tif", "multipage"),
            "d": _write(tmp_path / "d.tif", "single")}
    progress = []
    result = predict_files(model, tmp_path, tmp_path / "out", on_progress=progress.append, **OPTIONS)
    assert [item.path.name for item in result.files] == ["a.tif", "b.tif", "c.tif", "d.tif"]
    assert [item.path.name for item in result.failed] == ["b.tif"] and "finite" in result.failed[0].error
    assert _files_in(tmp_path / "out") == ["a.tif", "c.tif", "d.tif"]  # no partial file of b.tif or any other
    for name, pixels in data.items():
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tif"), _expected(model, pixels))
    assert progress[-1].planes_done == progress[-1].planes_total == 5
    assert all(b.planes_done >= a.planes_done for a, b in zip(progress, progress[1:]))


def test_a_file_with_more_objects_than_uint16_can_number_is_redone_in_uint32(tmp_path, model, monkeypatch):
    data = _write(tmp_path / "a.tif", "multipage")
    other = synthetic_nuclei((40, 30), count=4, seed=9)[0].astype(np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", other)
    real = core_predict.probabilities_to_labels

    def crowded(probabilities, *args, **kwargs):  # a.tif's planes (36 x 28) get an object numbered 70000
        labels = real(probabilities, *args, **kwargs)
        if labels.shape == (36, 28):
            labels[0, 0] = 70000
        return labels

    monkeypatch.setattr(core_predict, "probabilities_to_labels", crowded)
    result = predict_files(model, [tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "out", **OPTIONS)
    assert not result.failed and [item.planes for item in result.files] == [3, 1]
    labels = tifffile.imread(tmp_path / "out" / "a.tif")
    assert labels.dtype == np.uint32 and (labels[:, 0, 0] == 70000).all()
    assert tifffile.imread(tmp_path / "out" / "b.tif").dtype == np.uint16
    monkeypatch.undo()
    expected = _expected(model, data)
    np.testing.assert_array_equal(labels[:, 1:], expected[:, 1:])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "b.tif"), _expected(model, other))
    assert _files_in(tmp_path / "out") == ["a.tif", "b.tif"]


def test_a_file_that_could_not_be_read_fails_once_when_a_file_before_it_is_redone(tmp_path, model, monkeypatch):
    from napari_unet.core import tiffstream

    tifffile.imwrite(tmp_path / "a.tif", _planes(1)[0])
    tifffile.imwrite(tmp_path / "b.tif", _planes(3, shape=(40, 30)), photometric="minisblack")
    tifffile.imwrite(tmp_path / "c.tif", _planes(1)[0])
    real_read, real_labels = tiffstream.TiffPageReader.read_page, core_predict.probabilities_to_labels
    reads_of_b = []

    def read_page(reader, index):
        if reader.path.name == "b.tif":
            reads_of_b.append(index)
            raise InputError(f"{reader.path}: page {index + 1} is damaged (simulated)")
        return real_read(reader, index)

    def crowded(probabilities, *args, **kwargs):  # a.tif (36 x 28) is redone in uint32, after b.tif was read
        labels = real_labels(probabilities, *args, **kwargs)
        if labels.shape == (36, 28) and not crowded.done:
            labels[0, 0], crowded.done = 70000, True
        return labels

    crowded.done = False
    monkeypatch.setattr(tiffstream.TiffPageReader, "read_page", read_page)
    monkeypatch.setattr(core_predict, "probabilities_to_labels", crowded)
    progress = []
    result = predict_files(model, tmp_path, tmp_path / "out", on_progress=progress.append, **OPTIONS)
    assert [(item.path.name, item.error is None) for item in result.files] == [("a.tif", True), ("b.tif", False),
                                                                              ("c.tif", True)]
    assert "damaged" in result.files[1].error and reads_of_b == [0]
    assert _files_in(tmp_path / "out") == ["a.tif", "c.tif"]  # no partial file of b.tif
    assert progress[-1].planes_done == progress[-1].planes_total == 2 and progress[-1].fraction == 1.0


def test_reruns_skip_finished_outputs_unless_overwrite(tmp_path, model, monkeypatch):
    _write(tmp_path / "a.tif", "single")
    predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", **OPTIONS)
    (tmp_path / "out" / "a.tif").write_bytes(b"kept")
    result = predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", **OPTIONS)
    assert result.skipped == result.files and (tmp_path / "out" / "a.tif").read_bytes() == b"kept"
    result = predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", overwrite=True, **OPTIONS)
    assert not result.skipped and tifffile.imread(tmp_path / "out" / "a.tif").shape == (36, 28)


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path, model):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder / "cells.tif", "single")
    before = (tmp_path / "x" / "cells.tif").read_bytes()
    with pytest.raises(InputError, match="overwrite an input"):
        predict_files(model, [tmp_path / "x" / "cells.tif"], tmp_path / "x", **OPTIONS)
    assert (tmp_path / "x" / "cells.tif").read_bytes() == before
    # The same name in two folders keeps the folders below their common one.
    paths = output_paths([tmp_path / "x" / "cells.tif", tmp_path / "y" / "cells.tif"], tmp_path / "out", True)
    assert paths == [(tmp_path / "out" / "x" / "cells.tif", tmp_path / "out" / "x" / "cells_probability.tif"),
                     (tmp_path / "out" / "y" / "cells.tif", tmp_path / "out" / "y" / "cells_probability.tif")]
    with pytest.raises(InputError, match="would both be written"):
        output_paths([tmp_path / "x" / "cells.tif", tmp_path / "x" / "cells.tiff"], tmp_path / "out")


def test_an_output_folder_that_cannot_be_made_fails_before_any_file(tmp_path, model):
    _write(tmp_path / "cells.tif", "single")
    (tmp_path / "out").write_text("a file where the folder should be")
    with pytest.raises(InputError, match=f"^cannot write into {tmp_path / 'out'}: it is a file, not a folder$"):
        predict_files(model, tmp_path / "cells.tif", tmp_path / "out", **OPTIONS)
    with pytest.raises(InputError, match=f"^cannot write into .*labels: {tmp_path / 'out'} is a file, not a folder$"):
        predict_files(model, tmp_path / "cells.tif", tmp_path / "out" / "labels", **OPTIONS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cells.tif", "out"]


def test_an_output_that_cannot_be_written_fails_its_own_file_and_the_batch_goes_on(tmp_path, model, monkeypatch):
    for name in ("a", "b", "c"):
        _write(tmp_path / f"{name}.tif", "single")  # one plane each: the next unit out is the next file's
    real = tifffile.TiffWriter.write

    def disk_full_for_b(writer, *args, **kwargs):
        if Path(writer._fh.path).name.startswith(".b.tif"):  # b's partial file
            raise OSError(28, "No space left on device")
        return real(writer, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", disk_full_for_b)
    result = predict_files(model, sorted(tmp_path.glob("*.tif")), tmp_path / "out", **OPTIONS)
    assert [(item.path.name, item.error) for item in result.failed] == [
        ("b.tif", f"cannot write {tmp_path / 'out' / 'b.tif'}: no space left on device")]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.tif", "c.tif"]  # no partial file left
    assert [item.path.name for item in result.files] == ["a.tif", "b.tif", "c.tif"]


def test_a_plane_the_cluster_lost_stops_the_batch_and_one_that_kept_killing_workers_fails_its_file(tmp_path, model):
    pytest.importorskip("distributed")
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    from napari_unet.core import distributed as dask_batch
    from napari_unet.core.errors import ClusterError, NapariUnetError

    class Lost:  # a future of the cluster, failed
        def __init__(self, error):
            self.error = error

        def result(self):
            raise self.error

    with pytest.raises(ClusterError, match="the Dask cluster lost a plane"):
        dask_batch._result(Lost(CancelledError()))
    with pytest.raises(NapariUnetError, match="died each time") as raised:
        dask_batch._result(Lost(KilledWorker("task", "worker", 3)))
    assert not isinstance(raised.value, ClusterError)

    class LosesTheSecondPlane(batch.LocalExecutor):
        def predict_units(self, *args):
            for number, event in enumerate(super().predict_units(*args)):
                if number == 1:
                    raise ClusterError("the Dask cluster lost a plane")
                yield event

    for name in ("a", "b", "c"):
        _write(tmp_path / f"{name}.tif", "single")
    # Not one file failed and the others tried on a cluster that is gone: the batch stops.
    with pytest.raises(ClusterError):
        predict_files(model, sorted(tmp_path.glob("*.tif")), tmp_path / "out", executor=LosesTheSecondPlane(),
                      **OPTIONS)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.tif"]


def test_a_file_without_objects_to_estimate_the_diameter_from_is_segmented_unscaled_with_a_warning(
        tmp_path, model, monkeypatch):
    model.object_diameter = 12.0
    _write(tmp_path / "empty_well.tif", "single")
    monkeypatch.setattr(batch, "estimate_diameter", lambda *args, **kwargs: None)
    with pytest.warns(InputWarning, match="empty_well.tif: no objects of a size the model can be rescaled to"):
        result = predict_files(model, tmp_path / "empty_well.tif", tmp_path / "out", diameter="auto", **OPTIONS)
    assert not result.failed and [(item.diameter, item.scale) for item in result.files] == [(None, 1.0)]


def _record_factors(monkeypatch, factors):
    """Note the scale at which each plane goes through the network."""
    real = batch.predict_planes_iter

    def recording(model, planes, **kwargs):
        return real(model, ((plane, factors.append(factor) or factor) for plane, factor in planes), **kwargs)

    monkeypatch.setattr(batch, "predict_planes_iter", recording)


def test_auto_diameter_is_estimated_once_per_file_and_used_for_all_its_planes(tmp_path, model, monkeypatch):
    model.object_diameter = 12.0
    _write(tmp_path / "a.tif", "multipage")
    _write(tmp_path / "b.tif", "single")
    estimates, factors = [], []
    monkeypatch.setattr(batch, "estimate_diameter",
                        lambda model, pixels, settings, **kwargs: estimates.append(settings) or 10.0)
    _record_factors(monkeypatch, factors)
    result = predict_files(model, [tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "out", diameter="auto", **OPTIONS)
    assert len(estimates) == 2 and estimates[0].threshold == OPTIONS["threshold"]
    assert factors == [pytest.approx(12.0 / 10.0)] * 4
    assert [(item.planes, item.diameter, item.scale) for item in result.files] == [(3, 10.0, 1.2), (1, 10.0, 1.2)]


@pytest.mark.parametrize(("model_unit", "expected"), [("um", 0.25), ("nm", 250.0), ("mm", 0.00025)])
def test_the_files_pixel_size_is_used_in_the_models_unit_when_the_model_records_one(
        tmp_path, model, monkeypatch, model_unit, expected):
    model.pixel_size, model.pixel_unit = (expected * 2, expected * 2), model_unit
    _write(tmp_path / "a.tif", "hyperstack")  # 0.25 um pixels
    factors = []
    _record_factors(monkeypatch, factors)
    predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", **OPTIONS)
    assert factors == [pytest.approx(0.5)] * 8  # the file's pixels are half the model's, once converted to its unit
    assert tifffile.imread(tmp_path / "out" / "a.tif").shape == (2, 2, 2, 36, 28)


def test_settings_the_model_cannot_use_are_refused_before_any_work(tmp_path, model):
    _write(tmp_path / "a.tif", "single")
    for options in ({"diameter": "auto"}, {"diameter": 20.0}, {"diameter": "big"}, {"tile_size": 0}):
        with pytest.raises(InputError):
            predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", **options, **OPTIONS)
    with pytest.raises(InputError, match="smallest object size"):
        predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", **{**OPTIONS, "min_size": -1})
    with pytest.raises(TypeError, match="unknown prediction option.*'diamter'"):
        predict_files(model, [tmp_path / "a.tif"], tmp_path / "out", diamter=20.0, **OPTIONS)
    assert not (tmp_path / "out").exists()


def test_arrays_numpy_zarr_dask_and_tiff_out(tmp_path, model):
    zarr = pytest.importorskip("zarr")
    dask_array = pytest.importorskip("dask.array")
    data = _planes(4).reshape(2, 2, 36, 28)
    expected = _expected(model, data)
    np.testing.assert_array_equal(predict_array(model, data, **OPTIONS), expected)

    source = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=data.shape, chunks=(1, 1, 36, 28), dtype=data.dtype)
    source[:] = data
    out = zarr.open_array(tmp_path / "out.zarr", mode="w", shape=data.shape, chunks=(1, 1, 36, 28), dtype=np.uint16)
    assert predict_array(model, source, out, **OPTIONS) is out
    np.testing.assert_array_equal(out[:], expected)

    lazy = dask_array.from_zarr(source)
    path = predict_array(model, lazy, tmp_path / "labels.tif", **OPTIONS)
    np.testing.assert_array_equal(tifffile.imread(path), expected)
    with pytest.raises(InputError, match="shape"):
        predict_array(model, data, np.zeros((3, 36, 28), np.int32), **OPTIONS)
    # Labels are whole numbers: a boolean or float array would hold them wrong, without a word.
    for dtype in (bool, np.float32):
        with pytest.raises(InputError, match=f"the labels array holds {np.dtype(dtype)}"):
            predict_array(model, data, np.zeros(data.shape, dtype), **OPTIONS)
    np.testing.assert_array_equal(predict_array(model, data.tolist(), **OPTIONS), expected)  # nested lists too
    with pytest.raises(InputError, match=r"^the array: channel axis 5 is not one of its axes before height and "
                                         r"width \(0 to 1\)$"):
        predict_array(model, data, channel_axis=5, **OPTIONS)


def test_stopping_an_array_prediction_returns_none(model):
    stop = threading.Event()
    stop.set()
    assert predict_array(model, _planes(2), stop=stop, **OPTIONS) is None


# --- Dask ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dask_cluster():
    """One local cluster of two worker processes for the module (it takes seconds to start)."""
    pytest.importorskip("distributed")
    from napari_unet.core.distributed import dask_executor

    with dask_executor(workers=2) as executor:
        yield executor


@pytest.mark.parametrize("on_dask", [False, True], ids=["here", "on Dask"])
def test_each_input_is_named_in_its_own_warning(tmp_path, model, on_dask, request):
    # Several single-plane files go into the network at once, locally as on Dask, and a
    # Dask worker's warnings come back with its result: each must still name its file.
    for name in ("r0", "r1", "r2"):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.stack([_planes(1, dtype=np.uint8)[0]] * 3, axis=-1),
                         photometric="rgb")
    executor = request.getfixturevalue("dask_cluster") if on_dask else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict_files(model, tmp_path, tmp_path / "out", executor=executor, **OPTIONS)
    assert not result.failed and len(result.files) == 3
    said = [str(warning.message) for warning in caught if issubclass(warning.category, InputWarning)]
    assert sorted(text.split(": ")[0] for text in said if "colour" in text) == ["r0.tif", "r1.tif", "r2.tif"], said


@pytest.mark.slow
def test_the_workers_of_a_local_cluster_ignore_ctrl_c_even_once_restarted():
    # A terminal's Ctrl-C reaches the workers too; the run, not they, decides what it stops.
    import signal

    pytest.importorskip("distributed")
    from napari_unet.core.distributed import dask_executor

    def workers_ignore_ctrl_c(client) -> list[bool]:
        return list(client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN).values())

    ours = signal.getsignal(signal.SIGINT)
    with dask_executor(workers=1) as executor:
        assert workers_ignore_ctrl_c(executor.client) == [True]
        executor.client.restart()  # as Dask does with a worker over its memory limit
        assert workers_ignore_ctrl_c(executor.client) == [True]
    assert signal.getsignal(signal.SIGINT) is ours


#: What a Dask worker is given for a plane: the model, the unit in parts, the settings, and
#: whether the probability is wanted (the tests replace the prediction itself).
PLANE_TASK = (None, np.zeros((8, 8), np.float32), None, {}, PredictionSettings(), False)


def test_a_worker_running_several_tasks_at_once_keeps_its_warnings(monkeypatch):
    # Recording warnings is the whole process's: with two tasks at once, one task's
    # warnings would go back with the other's result.
    from types import SimpleNamespace

    import distributed

    from napari_unet.core import distributed as core_distributed

    def warning_plane(*args):
        warnings.warn("the image has 3 colour channels", ImageWarning, stacklevel=2)
        return "labels", None

    monkeypatch.setattr(core_distributed, "predict_plane", warning_plane)
    for threads, expected in ((1, [("the image has 3 colour channels", ImageWarning)]), (2, [])):
        worker = SimpleNamespace(state=SimpleNamespace(nthreads=threads))
        monkeypatch.setattr(distributed, "get_worker", lambda worker=worker: worker)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert core_distributed._predict_plane_with_warnings(*PLANE_TASK) == (("labels", None), expected)


def test_a_plane_that_fails_on_a_worker_sends_its_warnings_back_with_the_error(monkeypatch):
    from types import SimpleNamespace

    import distributed

    from napari_unet.core import distributed as core_distributed

    def failing_plane(*args):
        warnings.warn("the image has 3 colour channels", ImageWarning, stacklevel=2)
        raise InputError("the CPU ran out of memory for a single tile")

    monkeypatch.setattr(core_distributed, "predict_plane", failing_plane)
    monkeypatch.setattr(distributed, "get_worker", lambda: SimpleNamespace(state=SimpleNamespace(nthreads=1)))
    with pytest.raises(InputError) as failed:
        core_distributed._predict_plane_with_warnings(*PLANE_TASK)
    assert getattr(failed.value, batch.PLANE_WARNINGS) == [("the image has 3 colour channels", ImageWarning)]


def test_the_warnings_of_a_plane_that_failed_elsewhere_name_its_file(tmp_path, model):
    class SecondPlaneFailsElsewhere(batch.LocalExecutor):
        """As a Dask executor whose worker warned about the first plane, and about the second before failing on it."""

        planes = 0  # predicted, over the streams (the batch starts another after a failure)

        def predict_units(self, model, units, options, probability):
            for event in super().predict_units(model, units, options, probability):
                if isinstance(event, batch.PlaneResult):
                    self.planes += 1
                    if self.planes == 1:
                        event = replace(event, warnings=(("the image holds NaN pixels", ImageWarning),))
                    if self.planes == 2:
                        error = InputError("the CPU ran out of memory for a single tile")
                        setattr(error, batch.PLANE_WARNINGS, [("the image has 3 colour channels", ImageWarning)])
                        raise error
                yield event

    for name in ("a", "b", "c"):
        tifffile.imwrite(tmp_path / f"{name}.tif", _planes(1)[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict_files(model, tmp_path, tmp_path / "out", executor=SecondPlaneFailsElsewhere(), **OPTIONS)
    assert [item.path.name for item in result.failed] == ["b.tif"] and "out of memory" in result.failed[0].error
    said = [str(warning.message) for warning in caught if issubclass(warning.category, ImageWarning)]
    # Each file's own: the first plane's warning is not given again with the failure.
    assert said == ["a.tif: the image holds NaN pixels", "b.tif: the image has 3 colour channels"]


@pytest.mark.slow
def test_a_two_worker_dask_cluster_gives_the_labels_of_one_process(tmp_path, model, dask_cluster, monkeypatch):
    _write(tmp_path / "a.tif", "hyperstack")
    _write(tmp_path / "b.tif", "ome", np.float32)
    files = [tmp_path / "a.tif", tmp_path / "b.tif"]
    predict_files(model, files, tmp_path / "local", probability=True, **OPTIONS)
    scattered = []  # for each scatter: how many workers held the model right after it
    client = dask_cluster.client
    real_scatter = client.scatter

    def scatter(*args, **kwargs):
        future = real_scatter(*args, **kwargs)
        scattered.append(len(client.who_has(future)[future.key]))
        return future

    tile_sizes = []  # of each plane sent: workers share a machine, so not the CPU's memory-sized default
    real_submit = client.submit

    def submit(function, model_future, pixels, channel_axis, scale, settings, *args, **kwargs):
        tile_sizes.append(settings.tile_size)
        return real_submit(function, model_future, pixels, channel_axis, scale, settings, *args, **kwargs)

    monkeypatch.setattr(client, "scatter", scatter)
    monkeypatch.setattr(client, "submit", submit)
    result = predict_files(model, files, tmp_path / "dask", probability=True, executor=dask_cluster, **OPTIONS)
    assert not result.failed and [item.planes for item in result.files] == [8, 4]
    assert tile_sizes == [1024] * 12
    for name in ("a.tif", "a_probability.tif", "b.tif", "b_probability.tif"):
        with tifffile.TiffFile(tmp_path / "local" / name) as local, tifffile.TiffFile(tmp_path / "dask" / name) as dask:
            assert local.series[0].axes == dask.series[0].axes
            np.testing.assert_array_equal(local.series[0].asarray(), dask.series[0].asarray())
    # The model went to the cluster once, to both workers, for all planes of both files.
    # (Checked right after sending: Dask's memory manager may later drop a replica that
    # no waiting task needs.)
    assert scattered == [2]

    data = _planes(3)
    np.testing.assert_array_equal(predict_array(model, data, executor=dask_cluster, **OPTIONS), _expected(model, data))


@pytest.mark.slow
def test_a_dask_cluster_works_on_several_single_plane_files_at_once(tmp_path, model, dask_cluster, monkeypatch):
    planes = _planes(3)
    for name, plane in zip("acd", planes):
        tifffile.imwrite(tmp_path / f"{name}.tif", plane)
    # Fails once c.tif and d.tif are already on the cluster: they must be done again, whole.
    tifffile.imwrite(tmp_path / "b_broken.tif", np.full((36, 28), np.nan, np.float32))
    client = dask_cluster.client
    submitted = []
    real_submit = client.submit
    monkeypatch.setattr(client, "submit", lambda *args, **kwargs: submitted.append(1) or real_submit(*args, **kwargs))
    generator = predict_files_iter(model, tmp_path, tmp_path / "out", executor=dask_cluster, **OPTIONS)
    next(generator)
    # Two workers, a window of four planes: every file's plane was sent before the first came back.
    assert len(submitted) == 4
    with pytest.raises(StopIteration) as finished:
        while True:
            next(generator)
    result = finished.value.value
    assert [item.path.name for item in result.failed] == ["b_broken.tif"] and "finite" in result.failed[0].error
    assert _files_in(tmp_path / "out") == ["a.tif", "c.tif", "d.tif"]
    for name, plane in zip("acd", planes):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tif"), _expected(model, plane))


def test_an_array_with_colours_last_is_refused_with_the_way_to_give_it(model):
    rgb = np.stack([_planes(1)[0]] * 3, axis=-1)
    with pytest.raises(InputError, match=r"last axis has 3 values.*np.moveaxis\(array, -1, 0\) and channel_axis=0"):
        predict_array(model, rgb, **OPTIONS)
    with pytest.warns(InputWarning, match="converted to gray"):
        labels = predict_array(model, np.moveaxis(rgb, -1, 0), channel_axis=0, **OPTIONS)
    np.testing.assert_array_equal(labels, _expected(model, _planes(1)[0]))


def test_an_array_out_path_must_name_a_tiff(tmp_path, model):
    with pytest.raises(InputError, match=r"must end in \.tif or \.tiff"):
        predict_array(model, _planes(2), tmp_path / "labels.npy", **OPTIONS)
    assert not list(tmp_path.iterdir())


def test_files_are_given_as_the_command_line_takes_them_and_models_by_name(tmp_path, model, monkeypatch):
    from napari_unet.core import registry

    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "a.tif", "single")
    _write(tmp_path / "in" / "b.tif", "multipage")
    expected = ["a.tif", "b.tif"]
    for spec in (tmp_path / "in", str(tmp_path / "in" / "*.tif"), [tmp_path / "in"]):
        result = predict_files(model, spec, tmp_path / "out", overwrite=True, **OPTIONS)
        assert sorted(item.path.name for item in result.files) == expected
    one = predict_files(model, tmp_path / "in" / "a.tif", tmp_path / "one", **OPTIONS)  # one file alone
    assert [item.path.name for item in one.files] == ["a.tif"] and not one.failed
    monkeypatch.setattr(registry, "load_model", lambda name: model if name == "mine" else None)
    named = predict_files("mine", tmp_path / "in" / "a.tif", tmp_path / "named", **OPTIONS)
    np.testing.assert_array_equal(tifffile.imread(named.files[0].output), tifffile.imread(one.files[0].output))
    with pytest.raises(InputError, match="a model is a Model"):
        predict_files(42, tmp_path / "in", tmp_path / "never", **OPTIONS)


def test_a_file_given_twice_is_segmented_once_and_the_output_folder_is_no_input(tmp_path, model):
    (tmp_path / "in" / "day1").mkdir(parents=True)
    _write(tmp_path / "in" / "day1" / "a.tif", "single")
    _write(tmp_path / "in" / "b.tif", "single")
    twice = [tmp_path / "in", str(tmp_path / "in" / "b.tif"), tmp_path / "in" / "." / "b.tif"]
    result = predict_files(model, twice, tmp_path / "out", **OPTIONS)
    assert [item.path.name for item in result.files] == ["b.tif"] and not result.failed
    # Outputs inside the inputs' tree, found again by a recursive pattern on the rerun.
    pattern, out = str(tmp_path / "in" / "**" / "*.tif"), tmp_path / "in" / "labels"
    start = time.monotonic()
    first = predict_files(model, pattern, out, **OPTIONS)
    elapsed = time.monotonic() - start
    assert sorted(item.path.name for item in first.files) == ["a.tif", "b.tif"]
    assert 0 < sum(item.seconds for item in first.files) <= elapsed  # files overlap: each counts its own share
    with pytest.warns(InputWarning, match="2 file.s. in the output folder .* are not taken as inputs"):
        again = predict_files(model, pattern, out, **OPTIONS)
    assert [item.skipped for item in again.files] == [True, True]
    assert _files_in(out) == ["a.tif", "b.tif"]


def test_one_channel_of_a_hyperstack_or_colour_file_can_be_chosen(tmp_path, model):
    data = _write(tmp_path / "hyper.tif", "hyperstack")  # TZCYX, 2 channels
    colour = np.stack([_planes(1)[0], _planes(2)[1], _planes(3)[2]], axis=-1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb")
    plain = _planes(1)[0]
    tifffile.imwrite(tmp_path / "plain.tif", plain)  # no channels: segmented as it is
    result = predict_files(model, tmp_path, tmp_path / "out", channel=1, **OPTIONS)
    assert not result.failed and [item.planes for item in result.files] == [4, 1, 1]
    with tifffile.TiffFile(tmp_path / "out" / "hyper.tif") as tif:
        assert tif.series[0].axes == "TZYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), _expected(model, data[:, :, 1]))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "rgb.tif"), _expected(model, colour[..., 1]))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "plain.tif"), _expected(model, plain))

    outside = predict_files(model, tmp_path / "hyper.tif", tmp_path / "out5", channel=5, **OPTIONS)
    assert "has 2 channels (0 to 1); channel 5 is not one of them" in outside.failed[0].error
    with pytest.raises(InputError, match="for a model that takes one"):
        predict_files(Model.new(NetworkConfig(depth=1, base_width=4, in_channels=2)), tmp_path / "hyper.tif",
                      tmp_path / "out2", channel=0, **OPTIONS)


def test_warnings_about_an_input_name_it_once(tmp_path, model):
    colour = np.stack([_planes(2)] * 3, axis=-1).astype(np.uint8)  # two RGB planes
    tifffile.imwrite(tmp_path / "a_colour.tif", colour, photometric="rgb")
    holes = _planes(1)[0].astype(np.float32)
    holes[:3] = np.nan
    tifffile.imwrite(tmp_path / "b_holes.tif", holes)
    _write(tmp_path / "c_plain.tif", "single")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict_files(model, tmp_path, tmp_path / "out", **OPTIONS)
    assert not result.failed
    said = [str(warning.message) for warning in caught if issubclass(warning.category, InputWarning)]
    assert len([text for text in said if text.startswith("a_colour.tif: ") and "colour" in text]) == 1
    assert len([text for text in said if text.startswith("b_holes.tif: ") and "NaN" in text]) == 1
    assert not [text for text in said if "c_plain" in text]
    assert all(text.split(": ")[0] in ("a_colour.tif", "b_holes.tif") for text in said), said


def test_label_files_say_how_they_were_made_and_a_rerun_with_other_settings_says_so(tmp_path, model):
    import json

    from napari_unet.core.tiffstream import written_settings

    _write(tmp_path / "a.tif", "multipage")
    predict_files(model, tmp_path / "a.tif", tmp_path / "out", **OPTIONS)
    made = json.loads(written_settings(tmp_path / "out" / "a.tif"))
    assert made["napari_unet"] and made["settings"]["threshold"] == OPTIONS["threshold"]
    assert made["settings"]["min_size"] == OPTIONS["min_size"] and made["settings"]["diameter"] is None
    with tifffile.TiffFile(tmp_path / "out" / "a.tif") as tif:  # the stack itself is as before
        assert tif.series[0].shape == (3, 36, 28) and len(tif.pages) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = predict_files(model, tmp_path / "a.tif", tmp_path / "out", **OPTIONS)  # the same: nothing to say
    assert again.skipped == again.files
    with pytest.warns(InputWarning, match=r"1 label file.s. kept in .* other settings \(threshold 0.55 then, 0.7 now\)"):
        other = predict_files(model, tmp_path / "a.tif", tmp_path / "out", **{**OPTIONS, "threshold": 0.7})
    assert other.skipped == other.files  # kept, as asked; the warning says how to redo them


def test_files_of_an_earlier_version_are_not_said_to_be_made_otherwise(tmp_path, model, monkeypatch):
    _write(tmp_path / "a.tif", "multipage")
    current = batch._batch_settings

    def earlier_version(*args):  # a version that did not record the intensity range yet
        return {key: value for key, value in current(*args).items() if key != "intensity_range"}

    monkeypatch.setattr(batch, "_batch_settings", earlier_version)
    predict_files(model, tmp_path / "a.tif", tmp_path / "out", **OPTIONS)
    monkeypatch.setattr(batch, "_batch_settings", current)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert predict_files(model, tmp_path / "a.tif", tmp_path / "out", **OPTIONS).skipped
    with pytest.warns(InputWarning, match=r"other settings \(intensity range none then, 0 to 1000 now\); overwriting"):
        predict_files(model, tmp_path / "a.tif", tmp_path / "out", **OPTIONS, intensity_range=(0, 1000))
    with pytest.raises(InputError, match="the lower first"):
        predict_files(model, tmp_path / "a.tif", tmp_path / "out2", **OPTIONS, intensity_range=(10, 1))
    assert not (tmp_path / "out2").exists()
