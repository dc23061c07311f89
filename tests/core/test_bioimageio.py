"""bioimage.io packages: written as the spec wants, passing bioimageio.core's test, read back as the same model."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest
import torch

import napari_unet
from napari_unet.core.bioimageio_network import UNetProbabilities
from napari_unet.core.bundle import Model
from napari_unet.core.errors import InputError, ModelFileError
from napari_unet.core.model import NetworkConfig, UNet
from napari_unet.core.normalize import Normalization
from napari_unet.core.predict import predict
from napari_unet.core.registry import load_model
from napari_unet.core.synthetic import synthetic_nuclei

from .test_modelfile import with_moved_batch_norm

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # The spec's torchscript weights are TorchScript, which torch now deprecates.
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
]


def _tiny(seed=0, **config) -> Model:
    """A tiny model whose batch-norm statistics and metadata are not the defaults, so that all must travel."""
    torch.manual_seed(seed)
    model = Model.new(NetworkConfig(depth=2, base_width=4, **config), normalization=Normalization(2.0, 99.5),
                      gap=2, threshold=0.55, name="tiny", description="a tiny test model", pixel_size=(0.5, 0.25),
                      pixel_unit="um", object_diameter=12.5, training_data="generated nuclei (CC0)",
                      history=[{"step": 10, "loss": 0.5, "score": 0.25}], training={"steps": 10})
    return with_moved_batch_norm(model, seed)


def _passed(summary) -> str:
    """What bioimageio.core's test found wrong, in a few lines ("" when it passed)."""
    if summary.status == "passed":
        return ""
    return "\n".join(f"{detail.name}: {[error.msg[:300] for error in detail.errors]}"
                     for detail in summary.details if detail.status != "passed")


def _same_model(loaded: Model, model: Model) -> None:
    assert loaded.config == model.config and loaded.normalization == model.normalization
    assert (loaded.gap, loaded.threshold, loaded.separation, loaded.name, loaded.description) == (
        model.gap, model.threshold, model.separation, model.name, model.description)
    assert (loaded.pixel_size, loaded.pixel_unit, loaded.object_diameter) == (
        model.pixel_size, model.pixel_unit, model.object_diameter)
    assert (loaded.history, loaded.training, loaded.training_data) == (model.history, model.training, model.training_data)
    state, loaded_state = model.network.state_dict(), loaded.network.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[key], loaded_state[key]) for key in state)


def _same_predictions(loaded: Model, model: Model, image: np.ndarray) -> None:
    expected = predict(model, image, device="cpu")
    found = predict(loaded, image, device="cpu")
    assert np.array_equal(found.labels, expected.labels)
    np.testing.assert_array_equal(found.probability, expected.probability)


def _rewritten(package, target, change) -> None:
    """``package`` copied to ``target`` with its files changed by ``change(files)`` (a dict of name to bytes)."""
    with zipfile.ZipFile(package) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    change(files)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


# -- the architecture written into every package ----------------------------------------


@pytest.mark.parametrize("settings", [
    {},
    {"padding": "valid", "num_classes": 3, "batch_norm": False, "dropout": 0.3, "in_channels": 2},
])
def test_the_packages_network_computes_our_networks_probabilities(settings):
    ours = UNet(NetworkConfig(depth=2, base_width=4, **settings)).eval()
    theirs = UNetProbabilities(**ours.config.to_dict()).eval()
    theirs.load_state_dict(ours.state_dict())  # the same parameter names: our weights load as they are
    scripted = torch.jit.script(theirs)
    for size in (ours.valid_input_size(40), ours.valid_input_size(72)):
        image = torch.randn(2, ours.config.in_channels, size, size)
        with torch.no_grad():
            expected = torch.softmax(ours(image), dim=1)
            assert torch.equal(theirs(image), expected)
            assert torch.allclose(scripted(image), expected, atol=1e-6)


# -- export ------------------------------------------------------------------------------


def test_a_tiny_model_passes_bioimageio_test_and_loads_back_as_the_same_model(tmp_path, nuclei):
    core = pytest.importorskip("bioimageio.core")
    import yaml

    model = _tiny()
    given = model.copy()
    given.network.train()
    written = napari_unet.export_bioimageio(given, tmp_path / "tiny")  # the public API; ".zip" appended
    assert written == tmp_path / "tiny.zip"
    assert given.network.training  # the model given is left as it was
    summary = core.test_description(written)
    assert summary.status == "passed", _passed(summary)
    # Both weight formats ran the test input and matched the test output.
    tested = " ".join(detail.name for detail in summary.details)
    assert "(pytorch_state_dict)" in tested and "(torchscript)" in tested

    with zipfile.ZipFile(written) as archive:
        names = set(archive.namelist())
        description = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
        test_input = np.load(io.BytesIO(archive.read("test_input.npy")))
        test_output = np.load(io.BytesIO(archive.read("test_output.npy")))
    assert {"weights.pt", "weights_torchscript.pt", "unet_probabilities.py", "test_input.npy", "test_output.npy",
            "README.md", "cover.png"} <= names
    assert description["format_version"].startswith("0.5") and description["license"] == "MIT"
    assert description["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert description["authors"] == [{"name": "napari-unet contributors"}]
    preprocessing = description["inputs"][0]["preprocessing"]
    scale_range = next(step["kwargs"] for step in preprocessing if step["id"] == "scale_range")
    assert (scale_range["min_percentile"], scale_range["max_percentile"], scale_range["axes"]) == (2.0, 99.5, ["y", "x"])
    assert description["outputs"][0]["axes"][1]["channel_names"] == ["background", "foreground"]
    assert description["config"]["napari_unet"]["network"] == model.config.to_dict()
    # The output is probabilities: the classes sum to 1.
    assert test_input.shape == (1, 1, 256, 256) and test_output.shape == (1, 2, 256, 256)
    np.testing.assert_allclose(test_output.sum(axis=1), 1.0, atol=1e-5)
    for words in ("0.55", "12.5 pixels", "0.5 x 0.25 um", "generated nuclei (CC0)", "outside the spec", "MIT"):
        assert words in readme, words

    loaded = load_model(written)
    _same_model(loaded, model)
    _same_predictions(loaded, model, nuclei[0])


def test_a_valid_padding_three_class_model_of_two_channels_passes_bioimageio_test(tmp_path):
    core = pytest.importorskip("bioimageio.core")
    from napari_unet.core.bioimageio import export_bioimageio

    model = _tiny(padding="valid", num_classes=3, in_channels=2)
    written = export_bioimageio(model, tmp_path / "valid.zip")
    summary = core.test_description(written)
    assert summary.status == "passed", _passed(summary)
    loaded = load_model(written)
    _same_model(loaded, model)
    image = synthetic_nuclei((64, 64), count=6, seed=0)[0]
    image = np.stack([image, image[::-1]])  # two channels
    _same_predictions(loaded, model, image)


def test_a_model_that_reads_images_inverted_and_parts_objects_at_peaks_says_so_in_its_package(tmp_path):
    core = pytest.importorskip("bioimageio.core")
    import yaml

    from napari_unet.core.bioimageio import export_bioimageio

    model = _tiny()
    model.normalization = Normalization(2.0, 99.5, invert=True)
    model.separation = "peaks"
    written = export_bioimageio(model, tmp_path / "inverted.zip")
    # bioimageio.core runs the spec's preprocessing on the test input: it must give our output.
    summary = core.test_description(written)
    assert summary.status == "passed", _passed(summary)
    with zipfile.ZipFile(written) as archive:
        description = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    steps = [step for step in description["inputs"][0]["preprocessing"] if step["id"] != "ensure_dtype"]
    assert [step["id"] for step in steps] == ["scale_range", "scale_linear"]  # in this order
    assert (steps[1]["kwargs"]["gain"], steps[1]["kwargs"]["offset"]) == (-1.0, 1.0)
    assert "inverted" in readme and "h-maxima" in readme
    loaded = load_model(written)
    _same_model(loaded, model)
    _same_predictions(loaded, model, synthetic_nuclei((64, 64), count=6, seed=0)[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nuclei", "nuclei-he"])
def test_embedded_models_pass_bioimageio_test_and_load_back(tmp_path, name):
    core = pytest.importorskip("bioimageio.core")
    from napari_unet.core.bioimageio import export_bioimageio

    written = export_bioimageio(name, tmp_path / f"{name}.zip")
    summary = core.test_description(written)
    assert summary.status == "passed", _passed(summary)
    model, loaded = load_model(name), load_model(written)
    _same_model(loaded, model)
    with zipfile.ZipFile(written) as archive:
        readme = archive.read("README.md").decode()
    assert "CC0" in readme and f"{model.threshold:g}" in readme
    image = synthetic_nuclei((128, 128), count=14, seed=1)[0]
    if name == "nuclei-he":
        # Stained tissue: the package's input is its haematoxylin, which the README explains.
        assert "colour deconvolution" in readme and "haematoxylin" in readme
        dark = 255 - (200 * (image / image.max())).astype(np.uint8)  # nuclei dark on bright, as in tissue
        image = np.stack([dark] * 3, axis=-1)
    else:
        assert "nuclei-he" in readme  # colour images go to another model, not in this package
    _same_predictions(loaded, model, image)


def test_an_existing_package_is_replaced_only_when_asked(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_unet.core.bioimageio import export_bioimageio

    target = tmp_path / "model.zip"
    target.write_bytes(b"a colleague's package")
    with pytest.raises(InputError, match="exists"):
        export_bioimageio(_tiny(), target)
    assert target.read_bytes() == b"a colleague's package"
    assert export_bioimageio(_tiny(), target, overwrite=True) == target
    assert zipfile.is_zipfile(target)
    assert sorted(os.listdir(tmp_path)) == ["model.zip"]  # no temporary file left beside it


@pytest.mark.parametrize("name, message", [("model.safetensors", "ending in .zip"), ("folder", "is a folder")])
def test_a_package_is_written_to_a_zip_file_only(tmp_path, name, message):
    from napari_unet.core.bioimageio import export_bioimageio

    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=message):
        export_bioimageio(_tiny(), tmp_path / name)


def test_without_bioimageio_the_core_imports_and_says_what_to_install(tmp_path, monkeypatch):
    from napari_unet.core.bioimageio import export_bioimageio

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # as if not installed
    with pytest.raises(InputError, match=r"pip install 'napari-unet-loop\[bioimageio\]'"):
        export_bioimageio(_tiny(), tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


# -- import ------------------------------------------------------------------------------


@pytest.fixture
def tiny_package(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_unet.core.bioimageio import export_bioimageio

    return export_bioimageio(_tiny(), tmp_path / "tiny.zip")


def test_a_zip_that_is_no_package_is_refused(tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.tif", b"not a model")
    with pytest.raises(ModelFileError, match="not a bioimage.io model package") as error:
        load_model(path)
    assert str(path) in str(error.value) and "napari-unet" in str(error.value)


def test_a_package_of_another_tool_is_refused(tiny_package, tmp_path):
    import yaml

    def without_our_config(files):
        description = yaml.safe_load(files["rdf.yaml"])
        del description["config"]["napari_unet"]
        files["rdf.yaml"] = yaml.safe_dump(description).encode()

    foreign = tmp_path / "foreign.zip"
    _rewritten(tiny_package, foreign, without_our_config)
    with pytest.raises(ModelFileError, match="only packages that napari-unet exported can be loaded"):
        load_model(foreign)


def test_altered_weights_are_refused(tiny_package, tmp_path):
    altered = tmp_path / "altered.zip"
    _rewritten(tiny_package, altered, lambda files: files.update({"weights.pt": files["weights.pt"][:-10]}))
    with pytest.raises(ModelFileError, match="not a valid bioimage.io model package"):
        load_model(altered)


class _Payload:
    """A pickled object that would run code when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo unpickled > /dev/null",))


def test_weights_are_read_as_tensors_only_never_unpickled(tiny_package, tmp_path, monkeypatch):
    import hashlib

    import yaml

    def with_code_in_the_weights(files):
        buffer = io.BytesIO()
        torch.save({"down.0.0.weight": _Payload()}, buffer)
        files["weights.pt"] = buffer.getvalue()
        # With the checksum to match, as someone who meant it would write it.
        description = yaml.safe_load(files["rdf.yaml"])
        description["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(files["weights.pt"]).hexdigest()
        files["rdf.yaml"] = yaml.safe_dump(description).encode()

    path = tmp_path / "malicious.zip"
    _rewritten(tiny_package, path, with_code_in_the_weights)
    ran = []
    monkeypatch.setattr(os, "system", ran.append)  # what unpickling would call: recorded, not run
    with pytest.raises(ModelFileError, match="cannot be read as tensors alone"):
        load_model(path)
    assert not ran


def test_the_package_metadata_is_the_model_files(tiny_package):
    """The package's config holds what a model file's header holds: the same reader takes both."""
    import yaml

    from napari_unet.core.modelfile import model_metadata

    with zipfile.ZipFile(tiny_package) as archive:
        config = yaml.safe_load(archive.read("rdf.yaml"))["config"]["napari_unet"]
    assert json.loads(json.dumps(config)) == json.loads(json.dumps(model_metadata(_tiny())))
