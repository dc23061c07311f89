"""Object-size normalization in the widgets: the diameter field, its estimate, and layer pixel size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig
from napari_unet.core.predict import estimate_diameter, predict
from napari_unet.core.synthetic import synthetic_nuclei

pytestmark = pytest.mark.slow


def _predict_widget(viewer, model):
    from napari_unet.widgets import PredictWidget
    from napari_unet.widgets._common import session_models

    session_models(viewer).set_latest(model)
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    widget.threshold.value = 0.3
    return widget


def _model(num_classes: int = 2, **fields) -> Model:
    torch.manual_seed(0)
    return Model.new(NetworkConfig(depth=2, base_width=4, num_classes=num_classes), **fields)


def test_diameter_field_gives_the_core_result(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 80), count=6, seed=4)
    viewer.add_image(image, name="nuclei")
    model = _model(object_diameter=10.0)
    widget = _predict_widget(viewer, model)
    widget.diameter.value = 20.0
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    expected = predict(model, image, diameter=20.0, threshold=0.3, device="cpu")
    assert expected.scale == pytest.approx(0.5)
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data, expected.labels)


def test_layer_pixel_size_rescales_for_a_model_that_records_one(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=6, seed=5)
    viewer.add_image(image, name="fine", scale=(0.25, 0.25))
    model = _model(object_diameter=10.0, pixel_size=(0.5, 0.5), pixel_unit="um")
    widget = _predict_widget(viewer, model)
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=30_000)
    expected = predict(model, image, pixel_size=(0.25, 0.25), threshold=0.3, device="cpu")
    assert expected.scale == pytest.approx(0.5)
    np.testing.assert_array_equal(viewer.layers["fine prediction"].data, expected.labels)


def test_estimate_button_fills_in_the_diameter(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = synthetic_nuclei((64, 64), count=6, seed=6)
    viewer.add_image(image, name="nuclei")
    # An untrained model: three classes and a low threshold, to be sure objects are found.
    model = _model(num_classes=3, object_diameter=12.0)
    widget = _predict_widget(viewer, model)
    widget.threshold.value = 0.01
    widget.estimate_diameter()
    qtbot.waitUntil(lambda: widget.estimate.enabled, timeout=30_000)
    expected = estimate_diameter(model, image, threshold=0.01, device="cpu")
    assert expected is not None
    assert widget.diameter.value == pytest.approx(round(expected, 1))


def test_a_diameter_the_model_cannot_use_is_a_notification_and_adds_no_layer(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="image")
    widget = _predict_widget(viewer, _model())  # records no object size
    widget.diameter.value = 25.0
    widget.start()
    assert any(severity == "error" and "object size" in text for severity, text in notifications)
    assert widget.run.enabled and len(viewer.layers) == 1


def test_estimate_button_in_3d_measures_the_volume_on_screen(make_napari_viewer, qtbot):
    from scipy import ndimage

    from napari_unet.core.registry import load_model

    viewer = make_napari_viewer()
    image, truth = synthetic_nuclei((64, 64), count=6, seed=6)
    # Nuclei twice the model's size through 6 planes, at a z step of 2 pixels, narrower in the end planes,
    # beside an empty time point.
    end = image.copy()
    end[(truth > 0) & ~ndimage.binary_erosion(truth > 0, iterations=3)] = np.median(image[truth == 0])
    volume = ndimage.zoom(np.stack([end] + [image] * 4 + [end]), (1, 2, 2), order=1)
    stack = np.stack([np.full_like(volume, np.median(volume)), volume])
    viewer.add_image(stack, name="nuclei", scale=(1, 2, 1, 1))
    viewer.dims.set_point(0, 1)  # the second time point, and its first plane, on screen
    viewer.dims.set_point(1, 0)
    model = load_model("nuclei")
    widget = _predict_widget(viewer, model)
    widget.threshold.value = model.threshold
    widget.volume.value = True
    widget.estimate_diameter()
    qtbot.waitUntil(lambda: widget.estimate.enabled, timeout=60_000)
    expected = estimate_diameter(model, volume, threshold=model.threshold, device="cpu", volume=True, z_scale=2.0)
    true_diameter = 2 * np.sqrt(np.bincount(ndimage.zoom(truth, 2, order=0).ravel())[1:].mean() / np.pi)
    assert expected == pytest.approx(true_diameter, rel=0.25)
    assert widget.diameter.value == pytest.approx(round(expected, 1))
    # The plane on screen alone has narrower nuclei.
    assert estimate_diameter(model, volume[0], threshold=model.threshold, device="cpu") < 0.8 * expected
