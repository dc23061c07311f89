"""Models addressed by name: those shipped inside the package.

A name resolves to ``napari_unet/models/<name>.safetensors``; anything else is read as a
path to a model file, or to a bioimage.io package that napari-unet exported
(:mod:`~napari_unet.core.bioimageio`). An embedded model may hand colour images to another
(:data:`COLOUR_MODELS`): ``nuclei`` segments fluorescence itself and H&E-stained tissue
with ``nuclei-he``, so that one name serves both.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .bundle import Model
from .errors import InputError, ModelFileError
from .modelfile import MODEL_SUFFIX, load_model_file, read_metadata

__all__ = ["DEFAULT_MODEL", "as_model", "embedded_models", "load_model", "model_source"]

_EMBEDDED = Path(__file__).resolve().parent.parent / "models"


#: The embedded model offered first: what most users fine-tune.
DEFAULT_MODEL = "nuclei"

#: Embedded models that segment colour (RGB) images with another embedded model.
COLOUR_MODELS = {"nuclei": "nuclei-he"}


def embedded_models() -> dict[str, dict]:
    """Metadata of every model shipped with the package, by name, the default model first."""
    if not _EMBEDDED.is_dir():
        return {}
    names = sorted((path.name[: -len(MODEL_SUFFIX)] for path in _EMBEDDED.glob(f"*{MODEL_SUFFIX}")),
                   key=lambda name: (name != DEFAULT_MODEL, name))
    return {name: read_metadata(_EMBEDDED / f"{name}{MODEL_SUFFIX}") for name in names}


def model_source(name_or_path: str | os.PathLike) -> Path | None:
    """The file :func:`load_model` reads for ``name_or_path`` (an embedded model's own file), or None where there is none."""
    text = str(name_or_path)
    embedded = _EMBEDDED / f"{text}{MODEL_SUFFIX}"
    if os.sep not in text and "/" not in text and embedded.is_file():
        return embedded
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.name and not path.suffix and path.with_suffix(MODEL_SUFFIX).is_file():  # as save_model names it
        return path.with_suffix(MODEL_SUFFIX)
    return None


def load_model(name_or_path: str | os.PathLike) -> Model:
    """Load an embedded model by name, or a model file by path (``.safetensors`` may be left out).

    A bioimage.io package (``.zip``) that napari-unet exported loads as the model it was
    exported from (:func:`~napari_unet.core.bioimageio.load_package`).

    Raises:
        ModelFileError: If there is no such embedded model or file, or the file is not a
            usable model (a zip file that napari-unet did not export, for one).
    """
    source = model_source(name_or_path)
    if source is not None and _is_zip(source):
        from .bioimageio import load_package

        return load_package(source)
    if source is not None:
        model = load_model_file(source)
        colour_source = model_source(COLOUR_MODELS.get(str(name_or_path), ""))
        if source.parent == _EMBEDDED and colour_source is not None and colour_source.parent == _EMBEDDED:
            model.colour_model = load_model_file(colour_source)
        return model
    text = str(name_or_path)
    if text and Path(name_or_path).expanduser().is_dir():
        raise ModelFileError(f"{text} is a folder, not a model file; choose the {MODEL_SUFFIX} file in it")
    names = ", ".join(embedded_models()) or "none yet"
    raise ModelFileError(f"no model file {text!r} and no embedded model of that name (embedded: {names})")


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip file (a bioimage.io package is one), by its suffix or, without it, its contents."""
    suffix = path.suffix.lower()
    # A model file's header is never read as a zip: its bytes could look like one's end by chance.
    return suffix == ".zip" or (suffix != MODEL_SUFFIX and zipfile.is_zipfile(path))


def as_model(model: Model | str | os.PathLike) -> Model:
    """``model`` itself, or the model that a name or path stands for (see :func:`load_model`).

    Raises:
        InputError: If ``model`` is neither a model nor a name or path.
        ModelFileError: If the name or path leads to no usable model.
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, str | os.PathLike):
        return load_model(model)
    raise InputError(f"a model is a Model, an embedded model's name or a model file's path, not {type(model).__name__}")
