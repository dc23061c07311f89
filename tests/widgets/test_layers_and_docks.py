"""Widgets and the layers they read and write, and their docks: regressions of a review.

Each test is one defect a review found in the napari widgets, in a real viewer
(pytest-qt, under Xvfb): which layer a prediction goes into, pixel sizes in other units
than the model's, rotated layers, multiscale and lazily read layers, stopping or closing
a Train dock or napari early, one job at a time, training pairs of different pixel
sizes, the spacing of a batch result, and the files a widget writes. Images are tiny and networks untrained, so that each test takes seconds on a CPU.
"""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest
import tifffile

from napari_unet.core.synthetic import synthetic_nuclei

from .helpers import docked, fast_settings, tiny_model, tiny_model_in_session

pytestmark = pytest.mark.slow


def _nuclei(viewer, name="nuclei", seed=1, **placement):
    """A 64 x 64 image of nuclei and its labels, added to the viewer as ``name`` and ``name labels``."""
    image, labels = synthetic_nuclei((64, 64), count=5, seed=seed)
    return (viewer.add_image(image, name=name, **placement),
            viewer.add_labels(labels, name=f"{name} labels", **placement))


def _train_widget(viewer, image, labels, minutes=0.05):
    """A docked Train widget set to fine-tune the session's tiny model on ``image`` and ``labels``, fast."""
    from napari_unet.widgets import TrainWidget
    from napari_unet.widgets._common import SESSION

    widget = docked(viewer, TrainWidget)
    widget.image.value, widget.labels_layer.value = image, labels
    widget.start_from.source.value = SESSION
    fast_settings(widget, minutes)
    return widget


def _finish_training(widget, qtbot):
    """Stop a training the test left running (a test failing on a defect must not leave it running for minutes)."""
    widget.stop_training()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)


def _errors(notifications):
    return [text for severity, text in notifications if severity == "error"]


def _predict(widget, qtbot):
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)


# -- Predict widget ---------------------------------------------------------------------


def test_current_plane_of_another_image_goes_into_a_new_layer_not_the_last_images(make_napari_viewer, qtbot,
                                                                                 one_torch_thread):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    # Two stacks of one shape: the last prediction layer "fits" the second image too.
    for name, seed in (("A", 1), ("B", 2)):
        image, _ = synthetic_nuclei((64, 64), count=5, seed=seed)
        viewer.add_image(np.stack([image, image[::-1]]), name=name)
    tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    widget.threshold.value = 0.01  # an untrained model: make sure something is found
    widget.image.value = viewer.layers["A"]
    _predict(widget, qtbot)
    a_prediction = viewer.layers["A prediction"]
    before = a_prediction.data.copy()

    widget.image.value = viewer.layers["B"]
    widget.current_plane_only.value = True
    viewer.dims.set_current_step(0, 1)
    _predict(widget, qtbot)
    # B's plane has its own layer; A's labels are not overwritten with B's.
    assert "B prediction" in viewer.layers
    b_prediction = viewer.layers["B prediction"]
    assert widget.output is b_prediction
    np.testing.assert_array_equal(a_prediction.data, before)
    assert b_prediction.data[1].any() and not b_prediction.data[0].any()

    # The same image again: its plane goes into its last prediction layer, no third layer.
    viewer.dims.set_current_step(0, 0)
    _predict(widget, qtbot)
    assert widget.output is b_prediction
    assert [layer.name for layer in viewer.layers] == ["A", "B", "A prediction", "B prediction"]
    assert b_prediction.data[0].any() and b_prediction.data[1].any()


def test_pixel_size_in_nanometers_is_converted_to_the_models_micrometers(make_napari_viewer, qtbot,
                                                                        one_torch_thread, notifications):
    from napari_unet.core.predict import predict
    from napari_unet.widgets import PredictWidget
    from napari_unet.widgets._common import pixel_size

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=5, seed=1)
    # Twice the model's pixel size (8 nm): the image must be resized by 1/2, which a widget
    # that ignores the pixel size would not do (and one that ignores the unit refuses:
    # 4 nm read as 4 um is a 500x resize).
    layer = viewer.add_image(image, name="em", scale=(4.0, 4.0), units=("nanometer", "nanometer"))
    model = tiny_model_in_session(viewer, pixel_size=(0.008, 0.008), pixel_unit="um")
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    widget.probability.value = True
    _predict(widget, qtbot)
    assert not _errors(notifications)
    expected = predict(model, image, pixel_size=(0.004, 0.004), threshold=widget.threshold.value, device="cpu")
    unscaled = predict(model, image, device="cpu")
    assert np.abs(expected.probability - unscaled.probability).max() > 1e-3  # the resize shows
    np.testing.assert_array_equal(viewer.layers["em probability"].data, expected.probability)
    np.testing.assert_array_equal(viewer.layers["em prediction"].data, expected.labels)
    # napari names the unit "nanometer"; models and files write "nm", and the two must compare equal.
    assert pixel_size(layer) == ((4.0, 4.0), "nm")


def test_pixel_size_in_a_unit_that_is_no_length_is_an_error_and_adds_no_layer(make_napari_viewer, notifications):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=5, seed=1)
    # The model's number, in a unit it cannot be converted from.
    viewer.add_image(image, name="timed", scale=(0.008, 0.008), units=("second", "second"))
    tiny_model_in_session(viewer, pixel_size=(0.008, 0.008), pixel_unit="um")
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    widget.start()
    assert any("second" in text and "um" in text for text in _errors(notifications)), notifications
    assert [layer.name for layer in viewer.layers] == ["timed"]
    assert widget.run.enabled and widget._worker is None


def test_a_multiscale_layer_is_predicted_at_full_resolution(make_napari_viewer, qtbot, one_torch_thread,
                                                             notifications):
    from napari_unet.core.predict import predict
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=5, seed=1)
    viewer.add_image([image, image[::2, ::2]], name="pyramid", multiscale=True)
    model = tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    widget.threshold.value = 0.3  # an untrained model: make sure something is found
    _predict(widget, qtbot)
    assert not _errors(notifications)
    labels = viewer.layers["pyramid prediction"].data
    expected = predict(model, image, threshold=0.3, device="cpu").labels
    assert labels.shape == (64, 64) and expected.any()
    np.testing.assert_array_equal(labels, expected)


def test_cancelling_a_prediction_says_so(make_napari_viewer, qtbot, one_torch_thread, notifications):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=5, seed=1)
    viewer.add_image(np.stack([image] * 4), name="stack")
    tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    widget.start()
    widget.cancel.clicked.emit()  # as the user clicking Cancel
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    # Without a word, half-empty labels would look like the model's result.
    infos = [text for severity, text in notifications if severity == "info"]
    assert any("cancelled" in text and "stack prediction" in text for text in infos), notifications
    assert not widget.cancel.enabled


def test_a_rotated_and_sheared_image_gets_its_prediction_and_new_labels_in_place(make_napari_viewer, qtbot,
                                                                                 one_torch_thread):
    from napari_unet.widgets import PredictWidget, TrainWidget

    viewer = make_napari_viewer()
    image, _ = _nuclei(viewer, scale=(0.5, 0.5), translate=(10.0, 0.0), rotate=30, shear=[0.2])
    tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    _predict(widget, qtbot)
    train = docked(viewer, TrainWidget)
    train.image.value = image
    train.new_labels.clicked.emit()
    corner = (63, 63)
    for layer in (viewer.layers["nuclei prediction"], viewer.layers["nuclei labels [1]"]):
        np.testing.assert_allclose(layer.data_to_world(corner), image.data_to_world(corner))


def test_a_lazily_read_image_is_read_by_the_worker_not_by_napari(make_napari_viewer, qtbot, one_torch_thread):
    dask = pytest.importorskip("dask")
    import dask.array as da

    from napari_unet.widgets import PredictWidget

    image, labels = synthetic_nuclei((64, 64), count=5, seed=1)
    readers = []

    def read(plane):  # as a reader plugin opening a large file lazily
        readers.append(threading.current_thread() is threading.main_thread())
        return image

    viewer = make_napari_viewer()
    lazy = da.stack([da.from_delayed(dask.delayed(read)(plane), image.shape, image.dtype) for plane in range(3)])
    layer = viewer.add_image(lazy, name="lazy", contrast_limits=(0, float(image.max())))
    tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    train = _train_widget(viewer, layer, viewer.add_labels(np.stack([labels] * 3), name="lazy labels"))
    train.predict_when_done.value = False
    readers.clear()  # napari read planes to show them
    with dask.config.set(scheduler="synchronous"):  # each read in the thread that asks for the pixels
        _predict(widget, qtbot)
        train.start_training()
        qtbot.waitUntil(lambda: train.start.enabled, timeout=60_000)
    # Reading a large file on napari's thread would freeze it for as long as the read takes.
    assert readers and not any(readers), readers
    assert train.model is not None and viewer.layers["lazy prediction"].data.shape == (3, 64, 64)


def test_estimate_waits_while_a_prediction_runs(make_napari_viewer, qtbot, one_torch_thread):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=5, seed=1)
    viewer.add_image(np.stack([image] * 6), name="stack")
    tiny_model_in_session(viewer, object_diameter=12.0)
    widget = docked(viewer, PredictWidget)
    widget.device.value = "cpu"
    widget.start()
    # Cancel and the end of a job act on the one running: a second job at once would take them over.
    assert not widget.estimate.enabled and not widget.run.enabled and widget.cancel.enabled
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    assert widget.estimate.enabled and not widget.cancel.enabled


def test_a_folder_chosen_as_the_model_file_is_called_a_folder(make_napari_viewer, tmp_path, notifications):
    from napari_unet.widgets import PredictWidget
    from napari_unet.widgets._common import FILE

    viewer = make_napari_viewer()
    _nuclei(viewer)
    widget = docked(viewer, PredictWidget)
    widget.model.source.value = FILE
    widget.start()
    assert any("choose a model file first" in text for text in _errors(notifications)), notifications
    folder = tmp_path / "models.safetensors"
    folder.mkdir()
    widget.model.path.value = folder
    widget.start()
    assert any(f"{folder} is a folder" in text for text in _errors(notifications)), notifications
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]


@pytest.mark.parametrize("job", ["training", "prediction"])
def test_closing_napari_while_a_job_runs_ends_it_quietly(make_napari_viewer, qtbot, one_torch_thread, job):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer)
    tiny_model_in_session(viewer)
    if job == "training":
        widget = _train_widget(viewer, image, labels, minutes=30)
        widget.start_training()
        qtbot.waitUntil(lambda: len(widget.plot.series["loss"]) >= 1, timeout=60_000)
    else:
        stack = viewer.add_image(np.stack([image.data] * 200), name="stack")
        widget = docked(viewer, PredictWidget)
        widget.image.value, widget.device.value = stack, "cpu"
        widget.start()
        qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30_000)
    worker = widget._worker
    assert worker is not None and worker.is_running
    viewer.close()
    # The worker's last signals must not reach widgets napari has destroyed (pytest-qt
    # fails the test on any exception raised in Qt's event loop).
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    qtbot.wait(200)


def test_a_training_that_fails_says_why_in_its_status(make_napari_viewer, qtbot, one_torch_thread, notifications):
    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer)
    labels.data = np.where(labels.data > 0, labels.data, -1)  # -1 outside the nuclei: refused by the core
    tiny_model_in_session(viewer)
    widget = _train_widget(viewer, image, labels)
    widget.start_training()
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=30_000)
    assert "must not be negative" in widget.status.value
    assert any("must not be negative" in text for text in _errors(notifications))


# -- Train widget -----------------------------------------------------------------------


def test_stop_before_the_first_step_keeps_the_sessions_model(make_napari_viewer, qtbot, one_torch_thread,
                                                            notifications):
    from napari_unet.widgets._common import SCRATCH, session_models

    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer)
    earlier = tiny_model_in_session(viewer)
    widget = _train_widget(viewer, image, labels, minutes=5)
    widget.model = earlier  # a model trained here before, still to be saved
    widget.start_from.source.value = SCRATCH
    widget.start_training()
    widget.stop.clicked.emit()  # at once: before the worker takes its first step
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=30_000)
    # An untrained network must not replace the model the user has, nor be predicted with.
    assert session_models(viewer).latest is earlier
    assert widget.model is earlier and widget.save.enabled
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]
    infos = [text for severity, text in notifications if severity == "info"]
    assert any("no new model" in text for text in infos), notifications
    assert not any("training finished" in text for text in infos)


def test_predict_when_done_predicts_the_trained_image_after_the_choice_changed(make_napari_viewer, qtbot,
                                                                              one_torch_thread):
    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer, "trained")
    _nuclei(viewer, "other", seed=2)
    tiny_model_in_session(viewer)
    widget = _train_widget(viewer, image, labels)
    widget.start_training()
    widget.image.value = viewer.layers["other"]  # the user looks at another image meanwhile
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=60_000)
    assert widget.model is not None and widget.model.training["steps"] > 0
    # The prediction layer is added when the result arrives, before the buttons are reset.
    assert "trained prediction" in viewer.layers and "other prediction" not in viewer.layers


def test_a_trained_image_removed_meanwhile_is_said_not_to_be_predicted(make_napari_viewer, qtbot, one_torch_thread,
                                                                        notifications):
    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer, "trained")
    tiny_model_in_session(viewer)
    widget = _train_widget(viewer, image, labels)
    widget.start_training()
    viewer.layers.remove(image)  # training goes on with its copy
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=60_000)
    assert widget.model is not None and "trained prediction" not in viewer.layers
    assert any("trained was removed during training" in text for _, text in notifications), notifications


def test_regions_without_any_labelled_object_are_refused(make_napari_viewer, qtbot, one_torch_thread, notifications):
    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=5, seed=1)
    viewer.add_image(image, name="image")
    viewer.add_labels(np.zeros((64, 64), np.int32), name="empty")
    # A rectangle annotates its pixels as background; with no object in any of them the
    # model could learn nothing else, and the user should hear why before any training.
    viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 50.0], [50.0, 50.0], [50.0, 0.0]])], shape_type="rectangle",
                      name="regions")
    tiny_model_in_session(viewer)
    widget = _train_widget(viewer, viewer.layers["image"], viewer.layers["empty"])
    widget.regions.value = viewer.layers["regions"]
    widget.predict_when_done.value = False
    widget.start_training()
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=60_000)
    errors = [text for severity, text in notifications if severity == "error"]
    assert any("the annotations contain no object" in text for text in errors), notifications
    assert widget.model is None  # nothing trained


def test_closing_the_train_dock_ends_its_training(make_napari_viewer, qtbot, one_torch_thread):
    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer)
    tiny_model_in_session(viewer)
    widget = _train_widget(viewer, image, labels, minutes=30)
    widget.predict_when_done.value = False
    widget.start_training()
    try:
        qtbot.waitUntil(lambda: len(widget.plot.series["loss"]) >= 1, timeout=60_000)
        viewer.window.remove_dock_widget(widget.native)  # what the dock's close button does
        # napari only takes the widget out of the dock (nothing is destroyed): a training
        # nobody can see or stop any more would hold the CPU or GPU for half an hour.
        qtbot.waitUntil(lambda: widget._worker is None, timeout=5_000)
        assert widget.start.enabled
    finally:
        _finish_training(widget, qtbot)


def test_pairs_of_different_pixel_sizes_are_refused(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer()
    pairs = [_nuclei(viewer, "fine", seed=1, scale=(0.25, 0.25)), _nuclei(viewer, "coarse", seed=2, scale=(0.5, 0.5))]
    tiny_model_in_session(viewer)
    widget = _train_widget(viewer, *pairs[0])
    widget.predict_when_done.value = False
    for image, labels in pairs:
        widget.image.value, widget.labels_layer.value = image, labels
        widget.add_pair.clicked.emit()
    widget.start_training()
    try:
        # The model records one pixel size: objects at two scales would be learned as one.
        assert any("different pixel sizes" in text for text in _errors(notifications)), notifications
        assert widget._worker is None and widget.start.enabled
    finally:
        if widget._worker is not None:
            _finish_training(widget, qtbot)


def test_saved_models_are_readable_as_the_umask_allows_and_a_folder_is_an_error(make_napari_viewer, tmp_path,
                                                                              notifications):
    from napari_unet.core.modelfile import load_model_file
    from napari_unet.widgets import TrainWidget

    widget = docked(make_napari_viewer(), TrainWidget)
    widget.model = tiny_model()
    previous = os.umask(0o022)
    try:
        written = widget.save_model(tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    # A model saved to share (a lab folder) must be readable by the others, as any new file.
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o644
    assert load_model_file(written).config == widget.model.config

    folder = tmp_path / "models.safetensors"  # a folder chosen by mistake in the file dialog
    folder.mkdir()
    assert widget.save_model(folder) is None
    assert any(str(folder) in text and "folder" in text for text in _errors(notifications)), notifications
    # Nothing written or left behind: the folder stays a folder, no partial file beside it.
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "models.safetensors"]


# -- Batch widget -----------------------------------------------------------------------


def test_opened_batch_result_keeps_the_z_spacing_and_units(make_napari_viewer, qtbot, tmp_path, one_torch_thread):
    from napari_unet.widgets import BatchWidget
    from napari_unet.widgets._common import FILE

    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = synthetic_nuclei((48, 48), count=3, seed=1)
    tifffile.imwrite(folder / "stack.tif", np.stack([image, image[::-1]]), imagej=True,
                     resolution=(1 / 0.3, 1 / 0.3), metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    model_file = tiny_model().save(tmp_path / "tiny.safetensors")
    viewer = make_napari_viewer()
    widget = docked(viewer, BatchWidget)
    widget.model.source.value = FILE
    widget.model.path.value = model_file
    widget.inputs.value = str(folder)
    widget.out_dir.value = tmp_path / "out"
    widget.device.value = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None, timeout=60_000)
    widget.results.value = str(tmp_path / "out" / "stack.tif")
    layer = widget.open_selected()
    # Over its image (opened by the plugin's reader with Z spacing), the labels must be as deep.
    assert layer.data.shape == (2, 48, 48)
    assert tuple(layer.scale) == pytest.approx((2.0, 0.3, 0.3))
    assert [str(unit) for unit in layer.units] == ["micrometer"] * 3


@pytest.mark.parametrize(("scale", "units", "expected"), [
    ((1.0, 1.0), ("micrometer", "micrometer"), ((1.0, 1.0), "um")),  # calibrated at 1 um
    ((1.0, 1.0), None, (None, "")),  # napari's default: nobody calibrated it
    ((0.5, 0.5), None, ((0.5, 0.5), "")),
])
def test_a_layer_of_one_micrometer_pixels_has_a_pixel_size(make_napari_viewer, scale, units, expected):
    from napari_unet.widgets._common import pixel_size

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((8, 8), np.float32), scale=scale, **({"units": units} if units else {}))
    assert pixel_size(layer) == expected


def test_every_setting_explains_itself_on_hover(make_napari_viewer):
    from magicgui.widgets import Label, ProgressBar, PushButton

    from napari_unet.widgets import BatchWidget, PredictWidget, TrainWidget

    viewer = make_napari_viewer()
    for widget_class in (TrainWidget, PredictWidget, BatchWidget):
        widget = docked(viewer, widget_class)
        silent = [item.label or getattr(item, "text", "") for item in widget.contents
                  if not item.tooltip and not isinstance(item, (PushButton, Label, ProgressBar))]
        assert silent == [], f"{widget_class.__name__}: settings without a tooltip"


def test_the_three_docks_open_as_tabs_of_one_dock_in_a_laptop_window(make_napari_viewer, qtbot):
    # Stacked one above the other in a 1280x800 window, Predict and Batch were 89 pixels tall.
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    docks = {}
    for name in ("Train", "Predict", "Batch"):  # opened one after the other, as from the Plugins menu
        docks[name], _ = viewer.window.add_plugin_dock_widget("napari-unet-loop", name)
        qtbot.wait(50)
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(docks["Train"])) == 2, timeout=5000)
    assert set(window.tabifiedDockWidgets(docks["Train"])) == {docks["Predict"], docks["Batch"]}
    # The dock opened last is the one shown, with the window's height; the canvas keeps its width.
    qtbot.waitUntil(lambda: docks["Batch"].height() > 500, timeout=5000)
    assert not docks["Batch"].visibleRegion().isEmpty()
    assert viewer.window._qt_viewer.canvas.native.width() > 400


def test_training_starts_by_default_from_the_embedded_model_closest_to_the_images(make_napari_viewer, qtbot,
                                                                                  one_torch_thread):
    from napari_unet.widgets import TrainWidget
    from napari_unet.widgets._common import CLOSEST

    viewer = make_napari_viewer()
    image, labels = _nuclei(viewer)
    widget = docked(viewer, TrainWidget)
    assert widget.start_from.source.value == CLOSEST  # the default of a fresh session
    widget.image.value, widget.labels_layer.value = image, labels
    fast_settings(widget, 0.05)
    assert widget.start_from.recorded_threshold() is None  # no model chosen before training starts
    widget.start_training()
    qtbot.waitUntil(lambda: widget.start.enabled and widget.model is not None, timeout=60000)
    # Started from nuclei: given back as it was (it segments these nuclei without an error), or fine-tuned.
    assert widget.model.name == "nuclei" or widget.model.training_data.startswith("fine-tuned from nuclei")
    assert "from nuclei, the embedded model closest to the images" in widget.status.value  # the user is told
