"""Model files: round trip, atomic save, damaged files, no unpickling; the registry."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet.core import registry
from napari_unet.core.bundle import Model
from napari_unet.core.errors import ModelFileError, WriteError
from napari_unet.core.model import NetworkConfig
from napari_unet.core.modelfile import (
    FORMAT_NAME,
    FORMAT_VERSION,
    load_model_file,
    read_metadata,
    save_model,
)
from napari_unet.core.normalize import Normalization
from napari_unet.core.predict import predict
from napari_unet.core.registry import embedded_models, load_model

# Tiny convolutions run faster on one thread than on several competing ones.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(base_width=4, seed=0, **config) -> Model:
    torch.manual_seed(seed)
    model = Model.new(
        NetworkConfig(depth=2, base_width=base_width, **config),
        normalization=Normalization(2.0, 99.0),
        gap=2,
        threshold=0.65,
        name="tiny",
        description="a tiny test model",
        pixel_size=(0.5, 0.25),
        pixel_unit="um",
        object_diameter=12.5,
        history=[{"step": 10, "loss": 0.5, "ap50": 0.25}, {"step": 20, "loss": 0.25, "ap50": 0.5}],
        training={"steps": 20, "learning_rate": 0.001, "augment": {"strength": 1.0}},
    )
    return with_moved_batch_norm(model, seed)


def with_moved_batch_norm(model: Model, seed: int = 0) -> Model:
    """``model`` with its batch-norm statistics moved away from their defaults, so that they must be saved too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.num_batches_tracked.fill_(7)
    return model


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


# --- round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{}, {"padding": "valid", "num_classes": 3, "batch_norm": False}])
def test_round_trip_keeps_weights_metadata_and_predictions(tmp_path, nuclei, settings):
    model = _model(**settings)
    path = save_model(model, tmp_path / "model.safetensors")
    assert path == tmp_path / "model.safetensors" and path.is_file()
    loaded = load_model_file(path)

    original_state, loaded_state = model.network.state_dict(), loaded.network.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key in original_state:
        assert torch.equal(original_state[key], loaded_state[key]), key
    assert loaded.config == model.config
    assert loaded.normalization == model.normalization
    assert loaded.gap == 2 and loaded.threshold == 0.65
    assert loaded.name == "tiny" and loaded.description == "a tiny test model"
    assert loaded.pixel_size == (0.5, 0.25) and loaded.pixel_unit == "um"
    assert loaded.object_diameter == 12.5
    assert loaded.history == model.history
    assert loaded.training == model.training

    image, _ = nuclei
    before = predict(model, image, tile_size=64, device="cpu")
    after = predict(loaded, image, tile_size=64, device="cpu")
    np.testing.assert_array_equal(after.probability, before.probability)
    np.testing.assert_array_equal(after.labels, before.labels)
    assert _files(tmp_path) == ["model.safetensors"]  # no temporary file left


def test_the_separation_travels_with_the_model_and_is_written_only_when_not_the_default(tmp_path):
    model = Model.new(NetworkConfig(depth=1, base_width=2))
    assert "separation" not in read_metadata(save_model(model, tmp_path / "seeds.safetensors"))
    model.separation = "peaks"
    path = save_model(model, tmp_path / "peaks.safetensors")
    assert read_metadata(path)["separation"] == "peaks" and load_model_file(path).separation == "peaks"


def test_round_trip_without_optional_metadata(tmp_path):
    model = Model.new(NetworkConfig(depth=1, base_width=2))
    loaded = load_model_file(save_model(model, tmp_path / "plain.safetensors"))
    assert loaded.pixel_size is None and loaded.object_diameter is None
    assert loaded.history == [] and loaded.training == {} and loaded.gap == 1 and loaded.threshold == 0.5
    assert loaded.normalization == Normalization()


def test_model_save_method_and_suffix(tmp_path):
    model = _model()
    path = model.save(tmp_path / "sub" / "folder" / "model")
    assert path == tmp_path / "sub" / "folder" / "model.safetensors" and path.is_file()
    assert load_model_file(path).name == "tiny"


def test_metadata_can_be_read_without_the_weights(tmp_path):
    path = save_model(_model(), tmp_path / "m.safetensors")
    metadata = read_metadata(path)
    assert metadata["format"] == FORMAT_NAME and metadata["format_version"] == FORMAT_VERSION
    assert metadata["network"] == NetworkConfig(depth=2, base_width=4).to_dict()
    assert metadata["pixel_size"] == [0.5, 0.25]
    assert metadata["gap"] == 2
    assert metadata["normalization"] == {"low_percentile": 2.0, "high_percentile": 99.0, "colour": "luminance"}
    assert isinstance(metadata["package_version"], str) and metadata["package_version"]


def test_saving_over_a_model_replaces_it(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(_model(seed=1), path)
    second = _model(seed=2)
    second.name = "second"
    save_model(second, path)
    loaded = load_model_file(path)
    assert loaded.name == "second"
    assert torch.equal(loaded.network.head.weight, second.network.head.weight)
    assert _files(tmp_path) == ["m.safetensors"]


# --- atomic save ---------------------------------------------------------------------


@pytest.mark.parametrize(("error", "raised"), [(OSError("disk full"), WriteError), (KeyboardInterrupt(), KeyboardInterrupt)])
def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, error, raised):
    path = tmp_path / "model.safetensors"
    save_model(_model(seed=1), path)
    before = path.read_bytes()

    def failing_sync(descriptor):  # the new weights are written, not yet on disk
        raise error

    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(raised):
        save_model(_model(seed=2), path)
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["model.safetensors"]
    monkeypatch.undo()
    assert load_model_file(path).name == "tiny"


def test_a_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_sync(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'new.safetensors'}: disk full"):
        save_model(_model(), tmp_path / "new.safetensors")
    assert _files(tmp_path) == []


# --- damaged and foreign files -------------------------------------------------------


def _assert_model_file_error(path, match=None):
    with pytest.raises(ModelFileError) as raised:
        load_model_file(path)
    assert str(path) in str(raised.value)
    if match:
        assert match in str(raised.value)
    return raised.value


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_truncated_file(tmp_path, keep):
    path = save_model(_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    _assert_model_file_error(path)


@pytest.mark.parametrize("size", [0, 7, 100, 5000])
def test_random_bytes(tmp_path, size):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    _assert_model_file_error(path)


def test_plain_safetensors_file_without_our_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    _assert_model_file_error(path, "not a napari-unet model")
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(other), metadata={"framework": "something else"})
    _assert_model_file_error(other, "not a napari-unet model")


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        json.dumps([1, 2, 3]),
        json.dumps({"format": "another format", "network": {}}),
    ],
)
def test_our_header_key_with_bad_content(tmp_path, header):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"napari_unet": header})
    _assert_model_file_error(path, "not a napari-unet model")


def test_file_from_a_newer_format_version(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_model(_model(), tmp_path / "m.safetensors")
    metadata = read_metadata(path)
    metadata["format_version"] = FORMAT_VERSION + 1
    save_file(load_file(str(path)), str(path), metadata={"napari_unet": json.dumps(metadata)})
    _assert_model_file_error(path, "newer")


def _rewrite(path, tensors, metadata):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"napari_unet": json.dumps(metadata)})


def test_tensors_that_do_not_fit_the_architecture(tmp_path):
    from safetensors.torch import load_file

    small = save_model(_model(base_width=4), tmp_path / "small.safetensors")
    large = save_model(_model(base_width=8), tmp_path / "large.safetensors")
    small_tensors = load_file(str(small))

    wrong_shapes = tmp_path / "wrong_shapes.safetensors"
    _rewrite(wrong_shapes, small_tensors, read_metadata(large))
    _assert_model_file_error(wrong_shapes, "do not match")

    missing = tmp_path / "missing.safetensors"
    _rewrite(missing, {k: v for k, v in small_tensors.items() if not k.startswith("head.")},
             read_metadata(small))
    _assert_model_file_error(missing, "do not match")

    extra = tmp_path / "extra.safetensors"
    _rewrite(extra, {**small_tensors, "unexpected.weight": torch.zeros(1)}, read_metadata(small))
    _assert_model_file_error(extra, "do not match")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["network"].update(depth=0),
        lambda m: m["network"].update(colour="blue"),
        lambda m: m.pop("network"),
        lambda m: m["normalization"].update(low_percentile=99.9),
        lambda m: m.update(threshold=1.5),
        lambda m: m.update(threshold="high"),
    ],
    ids=["bad-depth", "unknown-setting", "no-network", "bad-normalization", "threshold-above-1", "threshold-text"],
)
def test_bad_architecture_or_normalization_in_the_metadata(tmp_path, change):
    from safetensors.torch import load_file

    path = save_model(_model(), tmp_path / "m.safetensors")
    metadata = read_metadata(path)
    change(metadata)
    _rewrite(path, load_file(str(path)), metadata)
    _assert_model_file_error(path)


def test_files_from_before_thresholds_were_recorded_use_0_5(tmp_path):
    from safetensors.torch import load_file

    path = save_model(_model(), tmp_path / "m.safetensors")
    metadata = read_metadata(path)
    del metadata["threshold"]
    _rewrite(path, load_file(str(path)), metadata)
    assert load_model_file(path).threshold == 0.5


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "model.safetensors"
    error = _assert_model_file_error(path, "not found")
    with pytest.raises(ModelFileError, match="not found"):
        read_metadata(path)
    assert isinstance(error, ValueError)  # NapariUnetError is a ValueError


def test_a_folder_is_not_a_model_file(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    _assert_model_file_error(folder)


# --- no unpickling -------------------------------------------------------------------


class _Exploit:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.pkl"])
def test_a_pickle_is_never_unpickled(tmp_path, name):
    marker = tmp_path / "marker_created_by_unpickling"
    payload = pickle.dumps({"state_dict": _Exploit(marker)})
    path = tmp_path / name
    path.write_bytes(payload)
    _assert_model_file_error(path)
    with pytest.raises(ModelFileError):
        load_model(path)
    with pytest.raises(ModelFileError):
        read_metadata(path)
    assert not marker.exists()
    # The payload is armed: unpickling it does create the marker.
    pickle.loads(payload)
    assert marker.exists()


def test_a_torch_save_file_is_never_unpickled(tmp_path):
    marker = tmp_path / "marker_created_by_unpickling"
    path = tmp_path / "evil.safetensors"
    torch.save({"weights": torch.zeros(2), "trap": _Exploit(marker)}, path)
    _assert_model_file_error(path)
    assert not marker.exists()


# --- registry ------------------------------------------------------------------------


def test_load_model_by_path(tmp_path):
    path = save_model(_model(), tmp_path / "m.safetensors")
    assert load_model(path).name == "tiny"
    assert load_model(str(path)).name == "tiny"


@pytest.mark.parametrize("name", ["no-such-name", "no/such/path.safetensors", ""])
def test_unknown_name_is_a_model_file_error(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError) as raised:
        load_model(name)
    assert repr(name) in str(raised.value)


def test_a_path_to_something_else_is_a_model_file_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelFileError, match="notes.txt"):
        load_model(path)


def test_embedded_models_are_found_by_name(tmp_path, monkeypatch):
    embedded = tmp_path / "models"
    embedded.mkdir()
    save_model(_model(), embedded / "demo.safetensors")
    monkeypatch.setattr(registry, "_EMBEDDED", embedded)
    assert list(embedded_models()) == ["demo"]
    assert embedded_models()["demo"]["name"] == "tiny"
    assert load_model("demo").name == "tiny"
    with pytest.raises(ModelFileError, match="demo"):  # the message lists what exists
        load_model("demo2")


def test_no_embedded_folder_means_no_embedded_models(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_EMBEDDED", tmp_path / "absent")
    assert embedded_models() == {}
    with pytest.raises(ModelFileError, match="none yet"):
        load_model("anything")


def test_shipped_models_are_valid():
    shipped = embedded_models()
    if not shipped:
        pytest.skip("no model is shipped with the package yet")
    for name, metadata in shipped.items():
        assert metadata["format"] == FORMAT_NAME
        assert isinstance(load_model(name), Model)


@pytest.mark.parametrize(("key", "value"), [
    ("object_diameter", "big"), ("object_diameter", -3), ("gap", "x"), ("gap", True), ("training", [1, 2]),
    ("pixel_size", "abc"), ("pixel_size", [0.5]), ("name", 7), ("evaluation", "good"), ("network", {"depth": "4"}),
    ("separation", "flood"), ("separation", 2),
])
def test_a_hand_edited_header_is_one_plain_error(tmp_path, key, value):
    from safetensors.torch import load_file

    path = save_model(_model(), tmp_path / "m.safetensors")
    metadata = read_metadata(path)
    metadata[key] = value
    _rewrite(path, load_file(str(path)), metadata)
    with pytest.raises(ModelFileError, match="damaged header") as raised:
        load_model_file(path)
    assert len(str(raised.value).splitlines()) == 1 and len(str(raised.value)) < 300


def test_a_model_is_saved_only_under_a_model_files_name_and_found_without_its_suffix(tmp_path, monkeypatch):
    model = Model.new(NetworkConfig(depth=1, base_width=4))
    image = tmp_path / "cells.tif"
    image.write_bytes(b"an image")
    for wrong in (image, tmp_path):  # would replace an image; a folder is not a file name
        with pytest.raises(ModelFileError):
            save_model(model, wrong)
    assert image.read_bytes() == b"an image" and sorted(p.name for p in tmp_path.iterdir()) == ["cells.tif"]
    saved = save_model(model, tmp_path / "run")
    assert saved.name == "run.safetensors"
    monkeypatch.chdir(tmp_path)
    assert registry.load_model("run").config == model.config  # found as save_model named it


def test_a_model_is_saved_by_its_name_too(tmp_path):
    from napari_unet.core.registry import load_model

    path = save_model("nuclei", tmp_path / "mine.safetensors")  # as everywhere a model is taken
    assert load_model_file(path).config == load_model("nuclei").config
