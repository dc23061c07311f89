"""PredictionSettings: checked once when made, settled once for a model, recorded in outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_unet.core.bundle import Model
from napari_unet.core.errors import InputError, InputWarning
from napari_unet.core.model import NetworkConfig
from napari_unet.core.predict import settled_for, smallest_tile
from napari_unet.core.prediction_settings import DEFAULT_SETTINGS, PredictionSettings


@pytest.mark.parametrize(("wrong", "said"), [
    ({"tile_size": 0}, "tile size and batch size must be positive"),
    ({"batch_size": 2.5}, "tile size and batch size must be positive"),
    ({"min_size": -1}, "smallest object size"),
    ({"min_size": "ten"}, "smallest object size"),
    ({"threshold": 1.5}, "threshold is a probability"),
    ({"threshold": "high"}, "threshold is a probability"),
    ({"intensity_range": (500, 100)}, "intensity range"),
    ({"intensity_range": "0 500"}, "intensity range"),
    ({"views": "xz"}, "views are 'auto', 'xy', 'xyz', not 'xz'"),
])
def test_a_wrong_setting_is_refused_when_the_settings_are_made(wrong, said):
    with pytest.raises(InputError, match=said):
        PredictionSettings(**wrong)
    with pytest.raises(InputError, match=said):  # a change is checked as well
        DEFAULT_SETTINGS.replace(**wrong)


def test_settings_take_numbers_as_users_give_them():
    settings = PredictionSettings.of(tile_size=np.int64(512), min_size=12.0, threshold=np.float32(0.25),
                                     intensity_range=[100, 2600], test_time_augmentation=1)
    assert (settings.tile_size, settings.min_size, settings.threshold) == (512, 12, 0.25)
    assert settings.test_time_augmentation is True
    assert type(settings.tile_size) is int and type(settings.threshold) is float
    assert settings.intensity_range == (100.0, 2600.0)
    assert PredictionSettings.of(settings, threshold=0.5).tile_size == 512  # the others are kept


def test_an_unknown_option_is_a_type_error_that_lists_the_options():
    with pytest.raises(TypeError, match="unknown prediction option.*'treshold'.*threshold"):
        PredictionSettings.of(treshold=0.5)


def test_what_outputs_record_is_what_decides_their_labels_in_json_types():
    settings = PredictionSettings(tile_size=256, device="cpu", threshold=0.6, min_size=4,
                                  test_time_augmentation=True, intensity_range=(1, 9))
    recorded = settings.recorded()
    assert recorded == {"threshold": 0.6, "min_size": 4, "test_time_augmentation": True, "intensity_range": [1.0, 9.0],
                        "views": "auto"}
    assert json.loads(json.dumps(recorded)) == recorded  # no tiling or device: they give the same labels


def test_settling_for_a_model_fills_in_its_threshold_and_raises_a_small_tile_once():
    model = Model.new(NetworkConfig(depth=2, base_width=4, num_classes=2), threshold=0.7)
    smallest = smallest_tile(model.network)
    with pytest.warns(InputWarning, match=f"tile size 8 is raised to {smallest}"):
        settled = settled_for(model, PredictionSettings(tile_size=8))
    assert (settled.tile_size, settled.threshold) == (smallest, 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert settled_for(model, settled) == settled  # settled settings stay as they are, silently
        assert settled_for(model, PredictionSettings(threshold=0.2)).threshold == 0.2  # given: kept
