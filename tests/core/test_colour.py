"""Colour images: the haematoxylin stain, models that hand colour images to another, and
the check that says when an image is unlike a model's training data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

from napari_unet.core.batch import predict_array, predict_files
from napari_unet.core.bundle import Model
from napari_unet.core.errors import ImageWarning, InputError
from napari_unet.core.familiarity import HESITATION, diffuse_uncertainty, unfamiliar_image_message
from napari_unet.core.modelfile import load_model_file, save_model
from napari_unet.core.normalize import Normalization, as_planes, haematoxylin, is_colour
from napari_unet.core.predict import predict
from napari_unet.core.progress import run_to_end
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import TrainingConfig, TrainingSample, train_iter


def stained(labels: np.ndarray) -> np.ndarray:
    """An H&E-like RGB image of ``labels``: purple nuclei on pink, light where nothing is."""
    rgb = np.empty(labels.shape + (3,), np.uint8)
    rgb[...] = (235, 170, 200)  # eosin pink
    rgb[labels > 0] = (90, 60, 150)  # haematoxylin purple
    return rgb


def test_haematoxylin_makes_stained_nuclei_bright_on_dark():
    _, labels = synthetic_nuclei((64, 64), count=5, seed=3)
    stain = haematoxylin(np.moveaxis(stained(labels), -1, 0))[0]
    assert stain.dtype == np.float32
    assert stain[labels > 0].min() > 2 * stain[labels == 0].max()


def test_haematoxylin_reads_16_bit_and_float_images_against_their_white():
    _, labels = synthetic_nuclei((32, 32), count=3, seed=4)
    eight_bit = np.moveaxis(stained(labels), -1, 0)
    sixteen = haematoxylin(eight_bit.astype(np.uint16) * 257)
    unit_float = haematoxylin(eight_bit / 255.0)
    np.testing.assert_allclose(sixteen, haematoxylin(eight_bit), atol=1e-4)
    np.testing.assert_allclose(unit_float, haematoxylin(eight_bit), atol=1e-4)


def test_a_haematoxylin_model_reads_colour_without_a_warning_and_a_luminance_one_warns():
    rgb = stained(synthetic_nuclei((32, 32), count=3, seed=4)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        planes, _ = as_planes(rgb, 1, colour="haematoxylin")
    np.testing.assert_array_equal(planes[0], haematoxylin(np.moveaxis(rgb, -1, 0)))
    with pytest.warns(ImageWarning, match="converted to gray"):
        as_planes(rgb, 1)


def test_the_colour_conversion_is_saved_with_the_model(tmp_path, tiny_config):
    model = Model.new(tiny_config, normalization=Normalization(colour="haematoxylin"))
    assert load_model_file(save_model(model, tmp_path / "m.safetensors")).normalization.colour == "haematoxylin"
    with pytest.raises(ValueError, match="colour"):
        Normalization(colour="hue")


def test_is_colour_follows_the_shape_or_the_channel_axis():
    assert is_colour(np.zeros((64, 64, 3)), 1)
    assert not is_colour(np.zeros((3, 64, 64)), 1)  # three planes of a stack
    assert is_colour(np.zeros((3, 64, 64)), 1, channel_axis=0)
    assert not is_colour(np.zeros((64, 64, 3)), 3)  # a three-channel model takes them as channels


@pytest.fixture
def gray_and_colour(tiny_config):
    """A gray model that hands colour images to a colour model (made different by its threshold)."""
    colour = Model.new(tiny_config, normalization=Normalization(colour="haematoxylin"), name="colour", threshold=0.3)
    gray = Model.new(tiny_config, name="gray", colour_model=colour)
    return gray, colour


def test_a_colour_image_is_segmented_by_the_colour_model(gray_and_colour, nuclei):
    gray, colour = gray_and_colour
    image, labels = nuclei
    rgb = stained(labels)
    handed = predict(gray, rgb, device="cpu")
    direct = predict(colour, rgb, device="cpu")
    np.testing.assert_array_equal(handed.probability, direct.probability)
    np.testing.assert_array_equal(handed.labels, direct.labels)
    assert not np.array_equal(predict(gray, image, device="cpu").probability,
                              predict(colour, image, device="cpu").probability)


def test_a_batch_of_colour_files_goes_to_the_colour_model_and_a_mixed_one_is_refused(gray_and_colour, nuclei,
                                                                                      tmp_path):
    gray, colour = gray_and_colour
    image, labels = nuclei
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", stained(labels), photometric="rgb")
    predict_files(gray, folder, tmp_path / "handed", device="cpu")
    predict_files(colour, folder, tmp_path / "direct", device="cpu")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "handed" / "a.tif"),
                                  tifffile.imread(tmp_path / "direct" / "a.tif"))
    tifffile.imwrite(folder / "b.tif", image)
    with pytest.raises(InputError, match="colour and gray images apart"):
        predict_files(gray, folder, tmp_path / "mixed", device="cpu")
    assert not (tmp_path / "mixed").exists() or not any((tmp_path / "mixed").iterdir())


def test_an_array_with_colour_channels_goes_to_the_colour_model(gray_and_colour, nuclei):
    gray, colour = gray_and_colour
    rgb = np.moveaxis(stained(nuclei[1]), -1, 0)
    np.testing.assert_array_equal(predict_array(gray, rgb, channel_axis=0, device="cpu"),
                                  predict_array(colour, rgb, channel_axis=0, device="cpu"))


def test_fine_tuning_on_colour_images_trains_the_colour_model(gray_and_colour, nuclei):
    gray, colour = gray_and_colour
    rgb = stained(nuclei[1])
    config = TrainingConfig(epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2, val_fraction=0, device="cpu")
    result = run_to_end(train_iter([TrainingSample(rgb, nuclei[1])], model=gray, config=config))
    assert result.model.normalization.colour == "haematoxylin"
    assert result.model.colour_model is None  # a model file is one network
    with pytest.raises(InputError, match="apart"):
        run_to_end(train_iter([TrainingSample(rgb, nuclei[1]), TrainingSample(nuclei[0], nuclei[1])],
                              model=gray, config=config))


def _trained(model: Model, diameter: float = 16.0, hesitation: float = 0.002) -> Model:
    """``model`` as training leaves it: its objects' size and its hesitation on its validation images."""
    model.evaluation, model.object_diameter = {HESITATION: hesitation}, diameter
    return model


def test_a_sure_output_with_objects_of_the_model_size_is_familiar(tiny_config):
    _, labels = synthetic_nuclei((128, 128), count=12, radius=(7, 9), seed=5)
    probability = (labels > 0).astype(np.float32)
    assert unfamiliar_image_message(_trained(Model.new(tiny_config)), labels, probability) is None


def test_hesitating_over_wide_areas_is_unfamiliar(tiny_config):
    _, labels = synthetic_nuclei((128, 128), count=12, radius=(7, 9), seed=5)
    probability = np.where(labels > 0, 0.9, 0.5).astype(np.float32)
    assert diffuse_uncertainty(probability, 3) > 0.5
    message = unfamiliar_image_message(_trained(Model.new(tiny_config, name="nuclei")), labels, probability)
    assert message.startswith("the image looks unlike the images nuclei was trained on")
    # A model never measured on images of its kind has nothing to compare with.
    assert unfamiliar_image_message(Model.new(tiny_config), labels, probability) is None
    # One that hesitated as much over its own kind is not surprised.
    assert unfamiliar_image_message(_trained(Model.new(tiny_config), hesitation=0.6), labels, probability) is None


def test_specks_far_smaller_than_the_model_objects_are_texture(tiny_config):
    _, labels = synthetic_nuclei((256, 256), count=60, radius=(2, 3), seed=6)
    probability = (labels > 0).astype(np.float32)
    # A little hesitation, scattered: 0.6 % of the plane.
    probability[np.random.default_rng(0).random(probability.shape) < 0.006] = 0.5
    message = unfamiliar_image_message(_trained(Model.new(tiny_config), diameter=30), labels, probability)
    assert "texture" in message
    # The same specks are objects to a model of their size.
    assert unfamiliar_image_message(_trained(Model.new(tiny_config), diameter=6), labels, probability) is None


def test_training_records_how_unsure_the_model_is_of_its_validation_images(tiny_config, nuclei):
    image, labels = nuclei
    samples = [TrainingSample(image, labels), TrainingSample(image[:, ::-1].copy(), labels[:, ::-1].copy())]
    config = TrainingConfig(epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2, device="cpu")
    result = run_to_end(train_iter(samples, network_config=tiny_config, config=config))
    assert 0.0 <= result.model.evaluation[HESITATION] <= 1.0
    # Fine-tuning without validation images leaves nothing measured, and nothing judged.
    config = TrainingConfig(epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2, val_fraction=0, device="cpu")
    tuned = run_to_end(train_iter(samples[:1], model=result.model, config=config)).model
    assert HESITATION not in tuned.evaluation
