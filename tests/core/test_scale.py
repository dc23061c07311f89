"""Object-size normalization: scale factors, resizing, and prediction and training at another scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_unet.core.bundle import Model
from napari_unet.core.errors import InputError, InputWarning
from napari_unet.core.model import NetworkConfig, UNet
from napari_unet.core.predict import estimate_diameter, predict, predict_probabilities
from napari_unet.core.progress import run_to_end
from napari_unet.core.scale import (
    equivalent_diameters,
    object_diameter,
    resize_labels,
    resize_plane,
    scale_factor,
    scaled_shape,
    usable_diameter,
)
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import TrainingConfig, TrainingSample, train_iter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(object_diameter=None, pixel_size=None) -> Model:
    torch.manual_seed(0)
    network = UNet(NetworkConfig(depth=2, base_width=4)).eval()
    return Model(network=network, object_diameter=object_diameter, pixel_size=pixel_size, pixel_unit="um")


def test_scale_factor_brings_objects_to_the_models_diameter():
    model = _model(object_diameter=20.0)
    assert scale_factor(model) == 1.0
    assert scale_factor(model, diameter=40.0) == pytest.approx(0.5)
    assert scale_factor(model, diameter=10.0) == pytest.approx(2.0)
    # Within 5% the image is left alone: resampling would only blur it.
    assert scale_factor(model, diameter=20.5) == 1.0


def test_scale_factor_from_pixel_size_and_diameter_wins():
    model = _model(object_diameter=20.0, pixel_size=(0.5, 0.5))
    # Pixels half as large: objects span twice as many pixels, so the image is halved.
    assert scale_factor(model, pixel_size=(0.25, 0.25)) == pytest.approx(0.5)
    assert scale_factor(model, diameter=10.0, pixel_size=(0.25, 0.25)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "model, arguments, message",
    [
        (_model(), {"diameter": 30.0}, "does not record the object size"),
        (_model(object_diameter=20.0), {"pixel_size": (0.3, 0.3)}, "pixel size"),
        (_model(object_diameter=20.0), {"diameter": 0.0}, "positive"),
        (_model(object_diameter=20.0), {"diameter": -5.0}, "positive"),
        (_model(object_diameter=20.0, pixel_size=(1.0, 1.0)), {"pixel_size": (0.0, 0.0)}, "positive"),
        (_model(object_diameter=20.0), {"diameter": 400.0}, "resized"),
        (_model(object_diameter=20.0), {"diameter": 1.0}, "resized"),
    ],
)
def test_scale_factor_refuses_what_it_cannot_compare(model, arguments, message):
    with pytest.raises(InputError, match=message):
        scale_factor(model, **arguments)


def test_scaled_shape_rounds_and_keeps_a_pixel():
    assert scaled_shape((100, 51), 0.5) == (50, 26)
    assert scaled_shape((3, 3), 0.1) == (1, 1)


def test_resize_plane_keeps_constants_and_shape():
    plane = np.full((1, 40, 60), 0.7, np.float32)
    for shape in ((20, 30), (80, 120), (40, 60)):
        resized = resize_plane(plane, shape)
        assert resized.shape == (1, *shape)
        np.testing.assert_allclose(resized, 0.7, atol=1e-6)


def test_resize_labels_never_invents_labels_and_round_trips_integer_factors():
    _, labels = synthetic_nuclei((64, 64), count=8, seed=3)
    larger = resize_labels(labels, (128, 128))
    assert larger.dtype == labels.dtype
    assert set(np.unique(larger)) == set(np.unique(labels))
    np.testing.assert_array_equal(resize_labels(larger, (64, 64)), labels)


def test_equivalent_diameter_of_disks():
    labels = np.zeros((200, 200), np.int32)
    for index, (center, radius) in enumerate((((50, 50), 10), ((120, 120), 30), ((50, 150), 20)), start=1):
        labels[disk(center, radius)] = index
    np.testing.assert_allclose(sorted(equivalent_diameters(labels)), [20, 40, 60], rtol=0.03)
    assert object_diameter(labels) == pytest.approx(40, rel=0.03)
    assert object_diameter(np.zeros((5, 5), np.int32)) is None


def test_prediction_with_a_diameter_runs_the_network_on_the_resized_image():
    model = _model(object_diameter=10.0)
    image = np.random.default_rng(0).normal(100, 20, (64, 96)).astype(np.float32)
    prediction = predict(model, image, diameter=20.0, device="cpu", min_size=0)
    assert prediction.scale == pytest.approx(0.5)
    assert prediction.diameter == 20.0
    assert prediction.labels.shape == image.shape and prediction.probability.shape == image.shape

    # The same computation by hand: normalize, halve, predict, bring back to the image's grid.
    small = resize_plane(model.normalization(image[None]), (32, 48))
    probabilities = run_to_end(predict_probabilities(model.network, small, 1024, 4, "cpu", False))
    expected = resize_plane(probabilities, (64, 96))[1]
    np.testing.assert_allclose(prediction.probability, expected, atol=1e-5)


def test_prediction_without_a_diameter_is_not_resized():
    model = _model(object_diameter=10.0)
    image = np.random.default_rng(1).normal(100, 20, (48, 48)).astype(np.float32)
    assert predict(model, image, device="cpu").scale == 1.0


def test_an_unusable_diameter_is_an_input_error():
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="'auto'"):
        predict(_model(object_diameter=10.0), image, diameter="large", device="cpu")
    with pytest.raises(InputError, match="does not record"):
        predict(_model(), image, diameter=12.0, device="cpu")


@pytest.fixture(scope="module")
def small_nuclei_model() -> Model:
    """A tiny model trained for a few seconds on generated nuclei of about 17 px."""
    torch.set_num_threads(1)
    samples = [TrainingSample(*synthetic_nuclei((128, 128), count=14, seed=seed)) for seed in range(4)]
    config = TrainingConfig(epochs=1, steps_per_epoch=120, patch_size=64, batch_size=4, device="cpu",
                            val_fraction=0.0, learning_rate=3e-3, seed=0)
    result = run_to_end(train_iter(samples, config=config, network_config=NetworkConfig(depth=2, base_width=8)))
    return result.model


def test_estimated_diameter_follows_the_magnification(small_nuclei_model):
    # A model this small is no judge of the true size (the embedded one is, see
    # test_embedded_models), but its estimate must scale with the image.
    image, _ = synthetic_nuclei((128, 128), count=14, seed=11)
    upscaled = resize_plane(image[None].astype(np.float32), (256, 256))[0]
    original = estimate_diameter(small_nuclei_model, image, device="cpu")
    estimate = estimate_diameter(small_nuclei_model, upscaled, device="cpu")
    assert estimate == pytest.approx(2 * original, rel=0.2)
    prediction = predict(small_nuclei_model, upscaled, diameter="auto", device="cpu")
    assert prediction.diameter == pytest.approx(estimate)
    assert prediction.scale == pytest.approx(small_nuclei_model.object_diameter / estimate)


def test_the_estimate_predicts_each_scale_once(small_nuclei_model, monkeypatch):
    from napari_unet.core import predict as core_predict

    widths = []
    original = core_predict._stitched_probabilities

    def recording(network, plane, *args, **kwargs):
        widths.append(plane.shape[-1])
        return original(network, plane, *args, **kwargs)

    monkeypatch.setattr(core_predict, "_stitched_probabilities", recording)
    image, _ = synthetic_nuclei((128, 128), count=14, seed=11)  # objects of about the model's size
    assert estimate_diameter(small_nuclei_model, image, device="cpu") is not None
    assert widths[:2] == [128, 64]  # the model's scale and half of it
    # Checks at a scale within 10 % of one already predicted reuse that prediction.
    assert all(abs(a / b - 1) >= 0.1 for i, a in enumerate(widths) for b in widths[:i]), widths


def test_estimating_needs_a_model_that_knows_its_object_size():
    with pytest.raises(InputError, match="object size"):
        estimate_diameter(_model(), np.zeros((32, 32), np.float32), device="cpu")


def test_fine_tuning_resizes_the_new_images_to_the_models_object_size(small_nuclei_model):
    image, labels = synthetic_nuclei((96, 96), count=8, seed=21)
    upscaled = resize_plane(image[None].astype(np.float32), (192, 192))[0]
    upscaled_labels = resize_labels(labels, (192, 192))
    config = TrainingConfig(epochs=1, steps_per_epoch=2, patch_size=32, batch_size=2, device="cpu", val_fraction=0.0)
    diameter = object_diameter(upscaled_labels)
    result = run_to_end(train_iter([TrainingSample(upscaled, upscaled_labels)], model=small_nuclei_model,
                                   config=config, diameter=diameter))
    # The images were brought to the model's scale, so it keeps the object size it knows.
    assert result.model.object_diameter == pytest.approx(small_nuclei_model.object_diameter, rel=0.15)
    with pytest.raises(InputError, match="resized"):
        run_to_end(train_iter([TrainingSample(upscaled, upscaled_labels)], model=small_nuclei_model,
                              config=config, diameter=1000.0))


def test_an_estimate_too_far_from_the_models_size_is_no_estimate(small_nuclei_model, monkeypatch):
    # An empty field's specks of noise, measured as objects of about 2 px: not a size to rescale to.
    from napari_unet.core import predict as core_predict

    image, _ = synthetic_nuclei((128, 128), count=14, seed=11)
    monkeypatch.setattr(core_predict, "object_diameter", lambda labels: 1.5)
    assert not usable_diameter(small_nuclei_model, 1.5)
    assert estimate_diameter(small_nuclei_model, image, device="cpu") is None
    with pytest.warns(InputWarning, match="not rescaled"):
        prediction = predict(small_nuclei_model, image, diameter="auto", device="cpu")
    assert prediction.scale == 1.0


def test_an_unusable_scale_says_which_diameters_or_pixel_sizes_the_model_takes():
    model = _model(object_diameter=16.66031874701878, pixel_size=(4.0, 4.0))
    model.pixel_unit = "nm"
    with pytest.raises(InputError, match=r"model's 16.7 px objects; it takes object diameters from 2.08 to 133 px"):
        scale_factor(model, diameter=1.0)
    with pytest.raises(InputError, match=r"model's 4 nm pixels; it takes pixel sizes from 0.5 to 32 nm"):
        scale_factor(model, pixel_size=(100.0, 100.0))
