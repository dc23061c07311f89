"""Tests of the choice of the embedded model closest to a user's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core.model_choice import CLOSEST, ModelChoice, closest_embedded_model
from napari_unet.core.progress import run_to_end
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import TrainingConfig, TrainingSample, train_iter

SPLITS = Path(__file__).resolve().parents[2] / "scripts" / "splits"


def _held_out(shared_data, folder: str, split: str, count: int) -> list[tuple]:
    """``(image, labels, None)`` of the first ``count`` images of a fixed validation split."""
    names = (SPLITS / split).read_text().split()[:count]
    return [(tifffile.imread(shared_data / folder / "images" / name),
             tifffile.imread(shared_data / folder / "labels" / name), None) for name in names]


@pytest.mark.slow
def test_each_kind_of_image_gets_the_model_made_for_it(shared_data):
    # Images from the fixed validation splits, which no embedded model trained on.
    assert closest_embedded_model(_held_out(shared_data, "usiigaci", "usiigaci-validation.txt", 2),
                                  device="cpu") == ModelChoice("cells")
    assert closest_embedded_model(_held_out(shared_data, "dsb2018_color", "dsb2018-color-validation.txt", 2),
                                  device="cpu") == ModelChoice("nuclei")  # which reads them through nuclei-he
    nuclei = _held_out(shared_data, "dsb2018", "dsb2018-validation.txt", 2)
    assert closest_embedded_model(nuclei, device="cpu") == ModelChoice("nuclei")
    # Dark nuclei on a bright background, as in brightfield: nuclei reads them inverted.
    dark = [(np.iinfo(image.dtype).max - image, labels, mask) for image, labels, mask in nuclei]
    assert closest_embedded_model(dark, device="cpu") == ModelChoice("nuclei", inverted=True)
    volume = tifffile.imread(shared_data / "isbi2012" / "volume.tif")
    labels = tifffile.imread(shared_data / "isbi2012" / "labels.tif")
    # A stack with one annotated plane, as a user paints one: that plane is judged.
    sparse = np.zeros_like(labels[16:20])
    sparse[2] = labels[18]
    assert closest_embedded_model([(volume[16:20], sparse, None)], device="cpu") == ModelChoice("em-neurites")


def test_a_small_image_of_nuclei_is_given_to_nuclei():
    # em-neurites is sure of itself on such an image, and finds cells that are not there.
    image, labels = synthetic_nuclei((64, 64), count=5, seed=1)
    assert closest_embedded_model([(image, labels, None)], device="cpu") == ModelChoice("nuclei")


def test_dark_nuclei_on_a_bright_background_are_read_inverted():
    image, labels = synthetic_nuclei((64, 64), count=5, seed=1)
    choice = closest_embedded_model([(image.max() - image, labels, None)], device="cpu")
    assert choice == ModelChoice("nuclei", inverted=True)
    assert "inverted" in str(choice)
    assert choice.model().normalization.invert


def test_training_from_the_closest_model_says_which_it_started_from():
    image, labels = synthetic_nuclei((96, 96), count=8, seed=3)
    config = TrainingConfig(epochs=1, steps_per_epoch=1, patch_size=64, batch_size=1, device="cpu", val_fraction=0)
    result = run_to_end(train_iter([TrainingSample(image, labels)], model=CLOSEST, config=config))
    assert result.model.training_data.startswith("fine-tuned from nuclei on 1 image(s)")
    assert not result.model.normalization.invert
    # Started inverted, the new model reads its images inverted too.
    result = run_to_end(train_iter([TrainingSample(image.max() - image, labels)], model=CLOSEST, config=config))
    assert result.model.normalization.invert


def test_planes_without_an_annotated_object_are_not_judged():
    from napari_unet.core.model_choice import _annotated_plane

    image, labels = synthetic_nuclei((64, 64), count=5, seed=1)
    assert _annotated_plane(image, np.zeros_like(labels), None) is None  # it would favour finding nothing
    region = np.zeros(labels.shape, bool)
    region[:8, :8] = labels[:8, :8] == 0  # a rectangle of background only
    assert _annotated_plane(image, labels, region) is None
    stack, stack_labels = np.stack([image, image]), np.stack([np.zeros_like(labels), labels])
    plane, plane_labels, mask = _annotated_plane(stack, stack_labels, None)
    assert plane_labels.max() > 0 and mask.all()  # the second plane, the one painted
