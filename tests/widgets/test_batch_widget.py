"""The Batch widget end to end in a real viewer (pytest-qt, under Xvfb), on tiny files."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import tifffile

from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig
from napari_unet.core.synthetic import synthetic_nuclei

pytestmark = pytest.mark.slow


@pytest.fixture
def batch_widget(make_napari_viewer, one_torch_thread):
    """A docked Batch widget whose model is a tiny network trained "in this session"."""
    from napari_unet.widgets import BatchWidget
    from napari_unet.widgets._common import session_models

    viewer = make_napari_viewer()
    session_models(viewer).set_latest(Model.new(NetworkConfig(depth=1, base_width=4)))
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    return widget


def _settings_given_to_the_batch(monkeypatch) -> dict:
    """The keywords the widget gives ``predict_files_iter``, as they are given (the batch still runs)."""
    from napari_unet.core import batch

    seen = {}
    real = batch.predict_files_iter

    def spy(*args, **kwargs):
        seen.update(kwargs)
        seen.update(dataclasses.asdict(kwargs["settings"]))  # each setting by its name
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(batch, "predict_files_iter", spy)
    return seen


def _inputs(folder):
    folder.mkdir()
    planes = np.stack([synthetic_nuclei((40, 32), count=3, seed=seed)[0] for seed in range(4)])
    tifffile.imwrite(folder / "a_hyper.tif", planes.reshape(2, 2, 40, 32), imagej=True,
                     resolution=(1 / 0.25, 1 / 0.25), metadata={"axes": "TZYX", "unit": "um"})
    tifffile.imwrite(folder / "b_single.tif", planes[0])
    (folder / "c_broken.tif").write_bytes(b"II*\x00broken")


def test_batch_segments_a_folder_into_labels_beside_it_and_opens_a_result(batch_widget, qtbot, tmp_path,
                                                                          notifications, monkeypatch):

    _inputs(tmp_path / "in")
    widget = batch_widget
    widget.inputs.value = str(tmp_path / "in")
    assert widget.out_dir.value == tmp_path / "in" / "labels"  # the default follows the inputs
    widget.threshold.value, widget.min_size.value = 0.55, 3
    widget.intensity_range.value = "0, 5000"
    seen = _settings_given_to_the_batch(monkeypatch)
    widget.start()
    assert not widget.run.enabled and widget.cancel.enabled
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None, timeout=60_000)
    # The tile size field reads 0, "auto": the core's default.
    assert widget.tile_size.value == 0 and "auto" in widget.tile_size.label
    assert (seen["threshold"], seen["min_size"], seen["tile_size"], seen["device"]) == (0.55, 3, None, "cpu")
    assert seen["compile_network"] is False and seen["test_time_augmentation"] is False and seen["amp"] is True
    assert seen["diameter"] is None and seen["probability"] is False and seen["channel"] is None
    assert seen["intensity_range"] == (0.0, 5000.0)
    out = tmp_path / "in" / "labels"
    assert sorted(p.name for p in out.iterdir()) == ["a_hyper.tif", "b_single.tif"]
    assert [item.path.name for item in widget.result.failed] == ["c_broken.tif"]
    assert any(severity == "error" and "c_broken.tif" in text for severity, text in notifications)
    assert widget.progress.value == 1000 and "2 of 3 file(s) segmented" in widget.status.value

    # A rerun keeps what is there and says so.
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None and bool(widget.result.skipped), timeout=60_000)
    assert "0 of 3 file(s) segmented, 2 skipped (their outputs exist)" in widget.status.value
    widget.overwrite.value = True  # unless asked to make them again
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None and not widget.result.skipped,
                    timeout=60_000)
    assert seen["overwrite"] is True and "2 of 3 file(s) segmented" in widget.status.value

    widget.results.value = str(out / "a_hyper.tif")
    layer = widget.open_selected()
    assert layer.data.shape == (2, 2, 40, 32) and tuple(layer.scale) == pytest.approx((1, 1, 0.25, 0.25))
    assert layer.name == "a_hyper" and layer in widget._viewer.layers
    # Adding that layer must not forget the other results.
    widget.results.value = str(out / "b_single.tif")
    assert widget.open_selected().data.shape == (40, 32)


def test_cancel_discards_the_file_being_segmented_and_a_rerun_completes(batch_widget, qtbot, tmp_path, monkeypatch):
    from napari_unet.core import batch

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(folder / name, np.stack([synthetic_nuclei((24, 24), count=2, seed=s)[0] for s in range(6)]),
                         photometric="minisblack")
    real = batch._only_plane

    def slow(*args, **kwargs):
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_only_plane", slow)
    widget = batch_widget
    widget.inputs.value = str(folder)
    widget.out_dir.value = tmp_path / "out"  # a folder of the user's choice stays
    widget.inputs.value = str(folder / "*.tif")
    assert widget.out_dir.value == tmp_path / "out"
    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30_000)
    widget.stop()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    assert widget.result.cancelled and widget.status.value.startswith("cancelled")
    finished = [item.path.name for item in widget.result.files]
    # Only whole files are there: no partial file of the one that was stopped.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(finished)
    assert len(finished) < 2

    monkeypatch.setattr(batch, "_only_plane", real)
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and not widget.result.cancelled, timeout=60_000)
    assert [item.skipped for item in widget.result.files] == [name in finished for name in ("a.tif", "b.tif")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "b.tif"]
    assert tifffile.imread(tmp_path / "out" / "b.tif").shape == (6, 24, 24)


def test_each_files_diameter_can_be_estimated_and_probabilities_written(batch_widget, qtbot, tmp_path, notifications,
                                                                       monkeypatch):
    from napari_unet.core import batch
    from napari_unet.widgets._common import session_models

    _inputs(tmp_path / "in")
    widget = batch_widget
    widget.inputs.value = str(tmp_path / "in")
    widget.estimate_diameter.value = True
    assert not widget.diameter.enabled  # the estimate replaces it
    widget.start()  # the session's model does not record the object size it learnt
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    assert any(severity == "error" and "cannot estimate diameters" in text for severity, text in notifications)
    assert not (tmp_path / "in" / "labels").exists()

    session_models(widget._viewer).set_latest(Model.new(NetworkConfig(depth=1, base_width=4), object_diameter=12.0))
    # An untrained network's objects are noise: stand in for its estimate.
    monkeypatch.setattr(batch, "estimate_diameter", lambda *args, **kwargs: 24.0)
    widget.probability.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None, timeout=60_000)
    segmented = [item for item in widget.result.files if item.output is not None]
    assert [(item.diameter, item.scale) for item in segmented] == [(24.0, 0.5), (24.0, 0.5)]
    assert "estimated diameters 24.0 px" in widget.status.value
    assert sorted(p.name for p in (tmp_path / "in" / "labels").iterdir()) == [
        "a_hyper.tif", "a_hyper_probability.tif", "b_single.tif", "b_single_probability.tif"]
    assert tifffile.imread(tmp_path / "in" / "labels" / "b_single.tif").shape == (40, 32)  # back on the file's grid


def test_batch_mistakes_are_notifications(batch_widget, tmp_path, notifications):
    widget = batch_widget
    widget.start()
    assert any("enter a folder" in text for _, text in notifications)
    _inputs(tmp_path / "in")
    widget.inputs.value = str(tmp_path / "in")
    for text, said in (("100", "two numbers"), ("3000 100", "the lower first")):
        widget.intensity_range.value = text
        widget.start()
        assert any(severity == "error" and said in message for severity, message in notifications)
        assert widget.run.enabled and not (tmp_path / "in" / "labels").exists()
    widget.intensity_range.value = ""
    widget.inputs.value = str(tmp_path / "nothing-here")
    widget.start()
    assert any(severity == "error" and "no such file or folder" in text for severity, text in notifications)
    widget.open_selected()
    assert any("run a batch first" in text for _, text in notifications)
    assert widget.run.enabled and not widget.cancel.enabled


def test_compiling_where_it_is_not_possible_says_so_and_still_segments(batch_widget, qtbot, tmp_path, notifications,
                                                                       monkeypatch):
    import torch

    def compiler_missing(network, **options):
        def run(x):
            raise RuntimeError("InductorError: CppCompileError: no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", compiler_missing)
    _inputs(tmp_path / "in")
    widget = batch_widget
    widget.inputs.value = str(tmp_path / "in")
    widget.compile.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None, timeout=60_000)
    assert sorted(p.name for p in (tmp_path / "in" / "labels").iterdir()) == ["a_hyper.tif", "b_single.tif"]
    assert any(severity == "warning" and "could not compile the network" in text for severity, text in notifications)


def test_an_output_folder_that_cannot_be_made_is_said_plainly_in_the_status(batch_widget, qtbot, tmp_path, notifications):
    widget = batch_widget
    _inputs(tmp_path / "in")
    (tmp_path / "out").write_text("a file where the folder should be")
    widget.inputs.value, widget.out_dir.value = str(tmp_path / "in"), tmp_path / "out"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    said = f"cannot write into {tmp_path / 'out'}: it is a file, not a folder"
    assert widget.status.value == said
    assert [text for severity, text in notifications if severity == "error"] == [said]
    assert (tmp_path / "out").read_text() == "a file where the folder should be"


def test_batch_labels_z_stacks_in_3d_when_asked(batch_widget, qtbot, tmp_path, monkeypatch):

    from ..core.test_predict_3d import _column, _one_label_per_object_through_the_planes

    folder = tmp_path / "in"
    folder.mkdir()
    stack, truth = _column()
    tifffile.imwrite(folder / "zstack.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.5})
    seen = _settings_given_to_the_batch(monkeypatch)
    widget = batch_widget
    widget.model.source.value = "embedded: nuclei"
    widget.inputs.value = str(folder)
    widget.volume.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None, timeout=60_000)
    assert seen["volume"] is True and not widget.result.failed
    _one_label_per_object_through_the_planes(tifffile.imread(folder / "labels" / "zstack.tif"), truth)
    assert "1 of 1 file(s) segmented" in widget.status.value
