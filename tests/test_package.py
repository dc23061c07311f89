"""Packaging: the core stays free of Qt and napari, importing is cheap, the manifest is valid."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import napari_unet

MANIFEST = Path(napari_unet.__file__).parent / "napari.yaml"
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def _imported_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(output.strip().splitlines()[-1]))


def test_core_and_cli_import_no_gui_toolkit():
    core = [m.name for m in pkgutil.iter_modules(importlib.import_module("napari_unet.core").__path__)]
    assert {"model", "targets", "augment", "train", "predict", "modelfile", "metrics", "io"} <= set(core)
    code = "\n".join(f"import napari_unet.core.{name}" for name in core) + "\nimport napari_unet.cli"
    modules = _imported_after(code)
    assert "torch" in modules  # the imports really happened
    leaked = {m for m in modules if m.split(".")[0] in GUI_MODULES}
    assert not leaked, f"the core imported GUI modules: {sorted(leaked)}"


def test_importing_the_package_does_not_import_torch():
    modules = _imported_after("import napari_unet")
    assert "torch" not in modules
    modules = _imported_after("import napari_unet\nnapari_unet.load_model")
    assert "torch" in modules


def test_public_api_names_resolve():
    for name in napari_unet.__all__:
        assert getattr(napari_unet, name) is not None


def test_every_python_name_in_the_manifest_imports():
    manifest = yaml.safe_load(MANIFEST.read_text())
    names = [c["python_name"] for c in manifest["contributions"]["commands"]]
    assert names
    for python_name in names:
        module, attribute = python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_npe2_validates_the_manifest():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-unet-loop"
    # The installed package registers the manifest through its entry point.
    found = npe2.PluginManifest.from_distribution("napari-unet-loop")
    assert found.name == "napari-unet-loop"


def test_sample_data_are_image_and_matching_labels():
    from napari_unet._sample_data import sample_nuclei

    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = sample_nuclei()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (512, 512)
    assert labels.max() > 50
