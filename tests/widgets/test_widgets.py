"""The napari widgets in a real viewer (pytest-qt, under Xvfb), on small generated data."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.widgets._common import SCRATCH

from .helpers import docked, fast_settings, tiny_model_in_session

pytestmark = pytest.mark.slow


@pytest.fixture
def viewer_with_nuclei(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = synthetic_nuclei((96, 96), count=10, seed=0)
    viewer.add_image(image, name="nuclei", scale=(0.5, 0.5), translate=(3.0, 4.0))
    viewer.add_labels(labels, name="truth", scale=(0.5, 0.5), translate=(3.0, 4.0))
    return viewer


def test_train_then_predict_when_done(viewer_with_nuclei, qtbot, notifications):
    from napari_unet.widgets import TrainWidget

    viewer = viewer_with_nuclei
    widget = docked(viewer, TrainWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.labels_layer.value = viewer.layers["truth"]
    widget.start_from.source.value = SCRATCH  # a new model records the layer's pixel size
    fast_settings(widget)
    widget.start_training()
    assert not widget.start.enabled and widget.stop.enabled
    qtbot.waitUntil(lambda: widget.model is not None and widget.start.enabled, timeout=60_000)
    assert widget.save.enabled and widget.export.enabled and not widget.stop.enabled
    assert widget.model.pixel_size == (0.5, 0.5)
    assert len(widget.plot.series["loss"]) == widget.model.training["steps"] > 0
    assert any("training finished" in text for _, text in notifications)
    # "predict when done" adds a Labels layer with the image's geometry.
    qtbot.waitUntil(lambda: "nuclei prediction" in viewer.layers
                    and viewer.layers["nuclei prediction"].data.any(), timeout=30_000)
    prediction = viewer.layers["nuclei prediction"]
    assert prediction.data.shape == (96, 96) and prediction.data.dtype == np.int32
    assert tuple(prediction.scale) == (0.5, 0.5) and tuple(prediction.translate) == (3.0, 4.0)
    assert viewer.layers["truth"].data.max() > 0  # the user's layers are untouched


def test_training_by_the_contrast_limits_scales_the_images_and_their_prediction_by_them(viewer_with_nuclei, qtbot,
                                                                                         monkeypatch):
    from napari_unet.core import train as core_train
    from napari_unet.core.predict import predict
    from napari_unet.widgets import TrainWidget

    samples = []
    real = core_train.train_iter

    def noting(training, *args, **kwargs):  # a generator function, as the worker needs
        samples.extend(training)
        return (yield from real(training, *args, **kwargs))

    monkeypatch.setattr(core_train, "train_iter", noting)
    viewer = viewer_with_nuclei
    layer = viewer.layers["nuclei"]
    layer.contrast_limits = (0.0, 3.0 * float(layer.data.max()))
    widget = docked(viewer, TrainWidget)
    widget.image.value, widget.labels_layer.value = layer, viewer.layers["truth"]
    fast_settings(widget)
    widget.contrast_limits.value = True
    widget.start_training()
    qtbot.waitUntil(lambda: widget.model is not None and "nuclei prediction" in viewer.layers, timeout=60_000)
    assert [sample.intensity_range for sample in samples] == [tuple(layer.contrast_limits)]
    expected = predict(widget.model, layer.data, device="cpu", intensity_range=layer.contrast_limits).labels
    assert not np.array_equal(expected, predict(widget.model, layer.data, device="cpu").labels)
    qtbot.waitUntil(lambda: np.array_equal(viewer.layers["nuclei prediction"].data, expected), timeout=30_000)


def test_stop_ends_training_within_two_seconds_and_keeps_a_model(viewer_with_nuclei, qtbot):
    from napari_unet.widgets import TrainWidget

    viewer = viewer_with_nuclei
    widget = docked(viewer, TrainWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.labels_layer.value = viewer.layers["truth"]
    fast_settings(widget, minutes=30)
    widget.start_training()
    qtbot.waitUntil(lambda: len(widget.plot.series["loss"]) >= 3, timeout=60_000)
    pressed = time.monotonic()
    widget.stop.clicked.emit()  # as the user clicking Stop
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=5_000)
    assert time.monotonic() - pressed < 2.0
    assert widget.model is not None and widget.model.training["stop_reason"] == "stopped"


def test_ui_stays_responsive_while_training(viewer_with_nuclei, qtbot):
    from qtpy.QtCore import QTimer

    from napari_unet.widgets import TrainWidget

    viewer = viewer_with_nuclei
    widget = docked(viewer, TrainWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.labels_layer.value = viewer.layers["truth"]
    widget.predict_when_done.value = False
    fast_settings(widget, minutes=0.1)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(10)
    widget.start_training()
    qtbot.waitUntil(lambda: len(widget.plot.series["loss"]) >= 1, timeout=60_000)
    ticks.clear()  # measure during training steps, not the one-off start-up
    qtbot.waitUntil(lambda: widget.start.enabled, timeout=60_000)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(gaps) > 50
    assert gaps.max() < 0.1, f"the event loop stalled for {gaps.max() * 1000:.0f} ms"


def test_new_labels_layer_matches_the_image(make_napari_viewer):
    from napari_unet.widgets import TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 40, 50), np.uint16), name="stack", scale=(2.0, 0.3, 0.3))
    widget = docked(viewer, TrainWidget)
    widget.new_labels.clicked.emit()
    layer = viewer.layers["stack labels"]
    assert layer.data.shape == (3, 40, 50)
    assert tuple(layer.scale) == (2.0, 0.3, 0.3)
    assert widget.labels_layer.value is layer


def test_learning_rate_is_the_cores_choice_until_the_user_sets_one(make_napari_viewer):
    from napari_unet.widgets import TrainWidget

    widget = docked(make_napari_viewer(), TrainWidget)
    assert widget.learning_rate.value == 0 and widget.learning_rate.native.text() == "auto"
    assert widget._config().learning_rate is None  # the core chooses (test_train)
    widget.learning_rate.value = 0.003
    assert widget._config().learning_rate == pytest.approx(0.003)


def test_the_object_diameter_is_offered_only_to_fine_tune(make_napari_viewer):
    from napari_unet.widgets import TrainWidget
    from napari_unet.widgets._common import EMBEDDED_PREFIX

    widget = docked(make_napari_viewer(), TrainWidget)
    widget.start_from.source.value = SCRATCH  # a new model has no object size to rescale the images to
    assert not widget.diameter.enabled
    widget.start_from.source.value = EMBEDDED_PREFIX + "nuclei"
    assert widget.diameter.enabled


@pytest.mark.parametrize("widget_name", ["PredictWidget", "BatchWidget"])
def test_threshold_follows_the_model_unless_the_user_chose_one(make_napari_viewer, tmp_path, widget_name):
    import napari_unet.widgets as widgets
    from napari_unet.widgets._common import SESSION, session_models

    files = {}
    for threshold in (0.35, 0.65):
        model = Model.new(NetworkConfig(depth=1, base_width=2), threshold=threshold)
        files[threshold] = model.save(tmp_path / f"model-{threshold}.safetensors")
    viewer = make_napari_viewer()
    widget = docked(viewer, getattr(widgets, widget_name))
    widget.model.source.value = "model file..."
    widget.model.path.value = files[0.35]
    assert widget.threshold.value == pytest.approx(0.35)
    session_models(viewer).set_latest(Model.new(NetworkConfig(depth=1, base_width=2), threshold=0.6))
    widget.model.source.value = SESSION  # a picked file stays selected when a model is trained
    assert widget.threshold.value == pytest.approx(0.6)
    widget.threshold.value = 0.42
    widget.model.source.value = "model file..."
    widget.model.path.value = files[0.65]
    assert widget.threshold.value == pytest.approx(0.42)


def test_training_pairs_can_be_added_cleared_and_follow_deleted_layers(make_napari_viewer):
    from napari_unet.widgets import TrainWidget

    viewer = make_napari_viewer()
    layers = []
    for seed in (1, 2):
        image, labels = synthetic_nuclei((48, 48), count=4, seed=seed)
        layers.append((viewer.add_image(image, name=f"image {seed}"), viewer.add_labels(labels, name=f"labels {seed}")))
    widget = docked(viewer, TrainWidget)
    for image, labels in layers:
        widget.image.value, widget.labels_layer.value = image, labels
        widget.add_pair.clicked.emit()
    assert widget._training_pairs() == layers
    assert "image 1 + labels 1, image 2 + labels 2" in widget.pairs_label.value

    viewer.layers.remove(layers[0][1])  # deleting a layer drops its pair
    assert widget._training_pairs() == [layers[1]]
    assert "image 1" not in widget.pairs_label.value

    widget.clear_pairs.clicked.emit()
    assert widget.pairs_label.value == "training on: the image and labels above"
    assert widget._training_pairs() == [(widget.image.value, widget.labels_layer.value)]


def test_training_mistakes_are_notifications_and_change_nothing(make_napari_viewer, notifications):
    from napari_unet.widgets import TrainWidget

    viewer = make_napari_viewer()
    widget = docked(viewer, TrainWidget)
    widget.start_training()  # no layers at all
    image, labels = synthetic_nuclei((64, 64), count=5, seed=1)
    viewer.add_image(image, name="image")
    viewer.add_labels(labels[:32], name="wrong shape")
    widget.image.value = viewer.layers["image"]
    widget.labels_layer.value = viewer.layers["wrong shape"]
    widget.start_training()
    viewer.add_labels(np.zeros_like(labels), name="empty")
    widget.labels_layer.value = viewer.layers["empty"]
    widget.start_training()
    errors = [text for severity, text in notifications if severity == "error"]
    assert any("choose an image layer" in text for text in errors)
    assert any("does not match" in text for text in errors)
    assert any("nothing is annotated" in text for text in errors)
    assert widget.start.enabled and widget.model is None
    assert viewer.layers["wrong shape"].data.shape == (32, 64)


def test_regions_layer_limits_training_to_rectangles(viewer_with_nuclei, qtbot):
    from napari_unet.widgets import TrainWidget

    viewer = viewer_with_nuclei
    # A rectangle in world coordinates over the upper left of the image.
    viewer.add_shapes([np.array([[3.0, 4.0], [3.0, 28.0], [27.0, 28.0], [27.0, 4.0]])], shape_type="rectangle",
                      name="annotated")
    widget = docked(viewer, TrainWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.labels_layer.value = viewer.layers["truth"]
    widget.regions.value = viewer.layers["annotated"]
    samples = widget._samples()
    mask = samples[0].mask
    assert mask[:48, :48].all() and not mask[48:, :].any() and not mask[:, 48:].any()


def test_a_2d_rectangle_over_a_stack_annotates_every_plane(make_napari_viewer):
    from napari_unet.widgets import TrainWidget

    viewer = make_napari_viewer()
    image, labels = synthetic_nuclei((64, 64), count=6, seed=1)
    viewer.add_image(np.stack([image] * 3), name="stack")
    viewer.add_labels(np.stack([labels] * 3), name="labels")
    viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 20.0], [20.0, 20.0], [20.0, 0.0]])], shape_type="rectangle",
                      name="annotated", ndim=2)
    widget = docked(viewer, TrainWidget)
    widget.image.value = viewer.layers["stack"]
    widget.labels_layer.value = viewer.layers["labels"]
    widget.regions.value = viewer.layers["annotated"]
    mask = widget._samples()[0].mask
    assert mask[:, :20, :20].all() and mask.sum() == 3 * 20 * 20


def test_save_model_writes_a_loadable_file(viewer_with_nuclei, tmp_path):
    from napari_unet.core.modelfile import load_model_file
    from napari_unet.widgets import TrainWidget

    widget = docked(viewer_with_nuclei, TrainWidget)
    assert widget.save_model(tmp_path / "none.safetensors") is None
    widget.model = Model.new(NetworkConfig(depth=2, base_width=4), pixel_size=(0.5, 0.5))
    written = widget.save_model(tmp_path / "model.safetensors")
    assert load_model_file(written).pixel_size == (0.5, 0.5)


def test_export_writes_a_bioimageio_package_napari_unet_loads(viewer_with_nuclei, tmp_path, monkeypatch,
                                                               notifications):
    pytest.importorskip("bioimageio.spec")
    from qtpy.QtWidgets import QFileDialog

    from napari_unet.core.registry import load_model
    from napari_unet.widgets import TrainWidget

    widget = docked(viewer_with_nuclei, TrainWidget)
    assert not widget.export.enabled and widget.export_package(tmp_path / "none.zip") is None  # nothing trained
    widget.model = Model.new(NetworkConfig(depth=2, base_width=4), name="tiny", pixel_size=(0.5, 0.5))
    # The button's file dialog offers the model's name; the package is written where the user chose.
    offered = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda parent, title, name, kinds: offered.append(name) or (str(tmp_path / "tiny.zip"), kinds))
    widget._export_dialog()
    assert offered == ["tiny.zip"]
    assert load_model(tmp_path / "tiny.zip").pixel_size == (0.5, 0.5)
    assert any("bioimage.io package written to" in text for _, text in notifications), notifications
    # A mistake is a notification, not an exception.
    assert widget.export_package(tmp_path / "tiny.tif") is None
    assert any("zip file" in text for severity, text in notifications if "error" in severity.lower()), notifications


def test_predict_a_stack_plane_by_plane_and_the_current_plane(make_napari_viewer, qtbot):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 72), count=6, seed=2)
    viewer.add_image(np.stack([image] * 3), name="stack", scale=(1.0, 0.4, 0.4))
    tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    assert widget.model.source.value == "model trained in this session"
    widget.image.value = viewer.layers["stack"]
    widget.probability.value = True
    widget.device.value = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    labels = viewer.layers["stack prediction"]
    assert labels.data.shape == (3, 64, 72) and labels.data.dtype == np.int32
    assert tuple(labels.scale) == (1.0, 0.4, 0.4)
    probability = viewer.layers["stack probability"]
    assert probability.data.dtype == np.float32 and probability.data.max() > 0
    assert widget.progress.value == 1000

    # Only the plane on screen, written into the same prediction layer.
    labels.data[:] = 0
    viewer.dims.set_current_step(0, 1)
    widget.current_plane_only.value = True
    widget.probability.value = False
    widget.threshold.value = 0.01  # an untrained model: make sure something is found
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    assert widget.output is labels
    assert labels.data[1].any() and not labels.data[0].any() and not labels.data[2].any()


def _predicted_in_3d(viewer, qtbot, layer: str):
    """The Predict widget, docked, once it has labelled ``layer`` in 3D with embedded nuclei on the CPU."""
    from napari_unet.widgets import PredictWidget

    widget = docked(viewer, PredictWidget)
    widget.image.value = viewer.layers[layer]
    widget.model.source.value = "embedded: nuclei"
    widget.device.value = "cpu"
    widget.volume.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=60_000)
    return widget


def test_predict_a_z_stack_in_3d_gives_the_cores_volume_labels(make_napari_viewer, qtbot):
    from napari_unet.core.predict import predict
    from napari_unet.core.registry import load_model

    viewer = make_napari_viewer()
    image, truth = synthetic_nuclei((96, 96), count=10, seed=3)
    stack = np.stack([image] * 6)
    stack[0][truth % 2 == 1] = np.median(image[truth == 0])  # odd nuclei start at the second plane
    # z step 1.0, pixels 0.5: planes lie 2 pixels apart, as the layer's scale says.
    viewer.add_image(stack, name="zstack", scale=(1.0, 0.5, 0.5))
    widget = _predicted_in_3d(viewer, qtbot, "zstack")
    expected = predict(load_model("nuclei"), stack, device="cpu", volume=True, z_scale=2.0).labels
    labels = viewer.layers["zstack prediction"]
    np.testing.assert_array_equal(labels.data, expected)  # the volume's labels, not the planes' own
    assert tuple(labels.scale) == (1.0, 0.5, 0.5)
    assert not np.array_equal(expected, predict(load_model("nuclei"), stack, device="cpu").labels)
    # Through its planes alone, as the command line's --views xy.
    assert widget.views.value == "auto"
    widget.views.value = "xy"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=60_000)
    planes_alone = predict(load_model("nuclei"), stack, device="cpu", volume=True, z_scale=2.0, views="xy").labels
    np.testing.assert_array_equal(widget.output.data, planes_alone)
    assert not np.array_equal(planes_alone, expected)


def test_predict_reads_a_lazily_opened_z_stack_a_plane_at_a_time(make_napari_viewer, qtbot, monkeypatch):
    import dask.array as da

    from napari_unet.core import planes as planes_module
    from napari_unet.core.predict import predict
    from napari_unet.core.registry import load_model

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((96, 96), count=10, seed=3)
    stack = np.stack([image] * 6)
    viewer.add_image(da.from_array(stack, chunks=(1, 96, 96)), name="lazy", scale=(1.0, 0.5, 0.5))
    read = []
    real_read = planes_module.ArrayPlanes._read
    monkeypatch.setattr(planes_module.ArrayPlanes, "_read", lambda planes, index: read.append(index) or
                        real_read(planes, index))
    _predicted_in_3d(viewer, qtbot, "lazy")
    expected = predict(load_model("nuclei"), stack, device="cpu", volume=True, z_scale=2.0).labels
    np.testing.assert_array_equal(viewer.layers["lazy prediction"].data, expected)
    assert set(read) == set(range(len(stack)))  # each plane read on its own


def test_predict_with_eight_orientations_gives_the_cores_averaged_labels(make_napari_viewer, qtbot):
    from napari_unet.core.predict import predict
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 72), count=6, seed=2)
    viewer.add_image(image, name="nuclei")
    model = tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.device.value = "cpu"
    widget.orientations.value = widget.probability.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    expected = predict(model, image, threshold=widget.threshold.value, device="cpu", test_time_augmentation=True)
    plain = predict(model, image, device="cpu").probability
    assert np.abs(expected.probability - plain).max() > 1e-3  # an untrained network is not symmetric
    np.testing.assert_array_equal(viewer.layers["nuclei probability"].data, expected.probability)
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data, expected.labels)
    assert widget.progress.value == 1000


def test_predict_by_the_layers_contrast_limits_gives_the_cores_labels_for_that_range(make_napari_viewer, qtbot):
    from napari_unet.core.predict import predict
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 72), count=6, seed=2)
    layer = viewer.add_image(image, name="nuclei")
    layer.contrast_limits = (0.0, 4.0 * float(image.max()))  # dimmer than the plane's own percentiles
    model = tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.image.value = layer
    widget.device.value = "cpu"
    widget.threshold.value = 0.01  # an untrained model: make sure something is found
    widget.contrast_limits.value = widget.probability.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    expected = predict(model, image, threshold=0.01, device="cpu", intensity_range=layer.contrast_limits)
    plain = predict(model, image, threshold=0.01, device="cpu").probability
    assert np.abs(expected.probability - plain).max() > 1e-3  # the range changes what the network sees
    np.testing.assert_array_equal(viewer.layers["nuclei probability"].data, expected.probability)
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data, expected.labels)


def _recording_amp(monkeypatch, module, name: str, seen: list) -> None:
    """Replace ``module.name`` by a wrapper that notes the ``amp`` it is called with."""
    real = getattr(module, name)

    def noting(*args, **kwargs):
        # Given as a keyword, or in the settings (the third argument, or a keyword).
        settings = kwargs.get("settings", args[2] if len(args) > 2 else None)
        seen.append((name, kwargs["amp"] if "amp" in kwargs else getattr(settings, "amp", None)))
        return real(*args, **kwargs)

    def noting_generator(*args, **kwargs):  # napari's worker runs generator functions as such
        return (yield from noting(*args, **kwargs))

    monkeypatch.setattr(module, name, noting_generator if inspect.isgeneratorfunction(real) else noting)


def test_float32_reaches_the_prediction_and_the_diameter_estimate(make_napari_viewer, qtbot, monkeypatch):
    from napari_unet.core import predict as core_predict
    from napari_unet.widgets import PredictWidget

    seen = []
    _recording_amp(monkeypatch, core_predict, "predict_iter", seen)
    _recording_amp(monkeypatch, core_predict, "estimate_diameter", seen)
    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 72), count=6, seed=2)
    viewer.add_image(image, name="nuclei")
    model = tiny_model_in_session(viewer, object_diameter=12.0)
    widget = docked(viewer, PredictWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.device.value = "cpu"
    widget.threshold.value = 0.01  # an untrained model: make sure something is found
    assert not widget.float32.value  # mixed precision unless asked
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    widget.float32.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    widget.estimate_diameter()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    assert seen == [("predict_iter", True), ("predict_iter", False), ("estimate_diameter", False)]
    expected = core_predict.predict(model, image, threshold=0.01, device="cpu", amp=False).labels
    np.testing.assert_array_equal(widget.output.data, expected)  # the float32 prediction's layer


def test_training_in_float32_predicts_the_trained_image_in_float32(viewer_with_nuclei, qtbot, monkeypatch):
    from napari_unet.core import predict as core_predict
    from napari_unet.core import train as core_train
    from napari_unet.widgets import TrainWidget

    configs, seen = [], []
    real = core_train.train_iter

    def noting(training, *args, **kwargs):  # a generator function, as the worker needs
        configs.append(kwargs["config"])
        return (yield from real(training, *args, **kwargs))

    monkeypatch.setattr(core_train, "train_iter", noting)
    _recording_amp(monkeypatch, core_predict, "predict_iter", seen)
    viewer = viewer_with_nuclei
    widget = docked(viewer, TrainWidget)
    widget.image.value, widget.labels_layer.value = viewer.layers["nuclei"], viewer.layers["truth"]
    fast_settings(widget)
    widget.float32.value = True
    widget.start_training()
    qtbot.waitUntil(lambda: widget.model is not None and "nuclei prediction" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: bool(seen), timeout=30_000)
    assert [config.amp for config in configs] == [False]
    # The embedded models judged for the closest one, then the trained image: all in float32.
    assert seen and set(seen) == {("predict_iter", False)}


def test_predict_rgb_with_a_one_channel_model_warns_and_works(make_napari_viewer, qtbot, notifications):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((48, 48), count=4, seed=3, dtype=np.uint8)
    viewer.add_image(np.stack([image, image, image], axis=-1), name="rgb", rgb=True)
    tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.image.value = viewer.layers["rgb"]
    widget.device.value = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    assert viewer.layers["rgb prediction"].data.shape == (48, 48)
    assert any(severity == "warning" and "gray" in text for severity, text in notifications)


def test_predict_stained_tissue_with_nuclei_hands_it_to_nuclei_he(make_napari_viewer, qtbot, notifications):
    from napari_unet.core.predict import predict
    from napari_unet.core.registry import load_model
    from napari_unet.widgets import PredictWidget
    from napari_unet.widgets._common import EMBEDDED_PREFIX

    _, labels = synthetic_nuclei((128, 128), count=10, seed=3)
    rgb = np.full(labels.shape + (3,), (235, 170, 200), np.uint8)  # eosin pink
    rgb[labels > 0] = (90, 60, 150)  # haematoxylin purple
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="tissue", rgb=True)
    widget = docked(viewer, PredictWidget)
    widget.image.value = viewer.layers["tissue"]
    widget.model.source.value = EMBEDDED_PREFIX + "nuclei"
    widget.device.value = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=60_000)
    # nuclei-he's own threshold, not the nuclei threshold the field shows.
    expected = predict(load_model("nuclei-he"), rgb, device="cpu").labels
    np.testing.assert_array_equal(viewer.layers["tissue prediction"].data, expected)
    assert expected.max() > 0
    assert not any("gray" in text for _, text in notifications)  # read through its stain, not made gray


def test_unreadable_model_file_is_a_notification(make_napari_viewer, tmp_path, notifications):
    from napari_unet.widgets import PredictWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="image")
    fake = tmp_path / "broken.safetensors"
    fake.write_bytes(b"definitely not a model")
    widget = docked(viewer, PredictWidget)
    widget.model.source.value = "model file..."
    widget.model.path.value = fake
    widget.start()
    assert any(severity == "error" and str(fake) in text for severity, text in notifications)
    assert widget.run.enabled and len(viewer.layers) == 1


def test_batch_widget_segments_a_folder_and_reports_failures(make_napari_viewer, qtbot, tmp_path, notifications):
    from napari_unet.widgets import BatchWidget

    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = synthetic_nuclei((40, 40), count=3, seed=4)
    tifffile.imwrite(folder / "a.tif", image, resolution=(1 / 0.25, 1 / 0.25), imagej=True, metadata={"unit": "um"})
    tifffile.imwrite(folder / "b.tif", np.stack([image, image]))
    (folder / "c.tif").write_bytes(b"II*\x00broken")
    viewer = make_napari_viewer()
    model = tiny_model_in_session(viewer)
    model.save(tmp_path / "tiny.safetensors")
    widget = docked(viewer, BatchWidget)
    widget.inputs.value = str(folder)
    widget.out_dir.value = tmp_path / "out"
    widget.device.value = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled and widget.result is not None, timeout=60_000)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "b.tif"]
    assert [item.path.name for item in widget.result.failed] == ["c.tif"]
    assert any(severity == "error" and "c.tif" in text for severity, text in notifications)
    widget.results.value = str(tmp_path / "out" / "a.tif")
    layer = widget.open_selected()
    assert layer.data.shape == (40, 40) and tuple(layer.scale) == pytest.approx((0.25, 0.25))
    # Adding that layer must not forget the other results.
    widget.results.value = str(tmp_path / "out" / "b.tif")
    assert widget.open_selected().data.shape == (2, 40, 40)


def test_widgets_are_found_through_the_manifest_and_share_the_session(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = {}
    for name in ("Train", "Predict", "Batch"):
        _, widgets[name] = viewer.window.add_plugin_dock_widget("napari-unet-loop", name)
        assert type(widgets[name]).__name__ == f"{name}Widget"
    # A model trained in the Train widget is offered by the Predict widget of the same viewer.
    from napari_unet.core.train import TrainingResult

    widgets["Train"]._on_trained(
        TrainingResult(Model.new(NetworkConfig(depth=2, base_width=4), training={"steps": 1}), [], "stopped")
    )
    assert widgets["Predict"].model.source.value == "model trained in this session"


def test_docks_scroll_in_a_window_lower_than_their_settings(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 560)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Train")
    area = widget.native.findChild(QScrollArea)
    assert area is not None  # the scroll area is inside what napari docked
    contents = widget.contents.native
    qtbot.waitUntil(lambda: area.viewport().height() > 0 and contents.height() > area.viewport().height(), timeout=5000)
    # The settings scroll instead of stretching the window past the screen...
    assert viewer.window._qt_window.height() < contents.minimumSizeHint().height()
    assert area.verticalScrollBar().isVisible() and area.verticalScrollBar().maximum() > 0
    # ... and the dock is wide enough for them once napari has styled them (nothing cut off at the right).
    qtbot.waitUntil(lambda: area.viewport().width() >= contents.minimumSizeHint().width(), timeout=5000)
    # napari still refreshes the layer choices of the docked widget.
    layer = viewer.add_image(np.zeros((32, 32), np.float32), name="late image")
    assert layer in widget.image.choices


def test_importing_the_widgets_does_not_import_torch():
    script = "import sys, json, napari_unet.widgets; print(json.dumps('torch' in sys.modules))"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(output.strip().splitlines()[-1]) is False


def test_out_of_memory_during_prediction_is_a_plain_message(make_napari_viewer, qtbot, monkeypatch, notifications):
    import napari_unet.core.predict as core_predict
    from napari_unet.widgets import PredictWidget

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, like the real one

    monkeypatch.setattr(core_predict, "predict_iter", out_of_memory)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="image")
    model = tiny_model_in_session(viewer)
    widget = docked(viewer, PredictWidget)
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=10_000)
    errors = [text for severity, text in notifications if severity == "error"]
    assert any("ran out of memory" in text and "tile size" in text for text in errors)
    assert "image" in viewer.layers and viewer.layers["image"].data.shape == (32, 32)
    from napari_unet.widgets._common import session_models

    assert session_models(viewer).latest is model
