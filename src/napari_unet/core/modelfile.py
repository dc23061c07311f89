"""Model files: one safetensors file with the weights and JSON metadata in its header.

safetensors holds only named tensors and a string-to-string header, so loading a model
file never unpickles anything: a file from a colleague or a forum cannot run code. The
header's ``napari_unet`` entry is JSON with the architecture, normalization, pixel size,
object diameter, training settings and history, and the package version that wrote it.

Saving writes a temporary file beside the target and renames it over the target only when
it is complete, so an interrupted save never destroys the previous model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .atomic import made_folder, replaced_atomically
from .bundle import Model
from .errors import ModelFileError
from .model import NetworkConfig, UNet
from .normalize import Normalization
from .postprocess import SEPARATIONS

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MODEL_SUFFIX", "check_metadata", "load_model_file", "model_file_path",
           "model_from_metadata", "model_metadata", "read_metadata", "recorded_threshold", "save_model"]

FORMAT_NAME = "napari-unet model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
_HEADER_KEY = "napari_unet"


def _package_version() -> str:
    from .. import __version__

    return __version__


def model_metadata(model: Model) -> dict:
    """Everything about ``model`` but its weights, as the JSON a model file's header holds.

    A bioimage.io package carries the same (:mod:`~napari_unet.core.bioimageio`), so that
    either is read back into the same :class:`Model` by :func:`model_from_metadata`.
    """
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "name": model.name,
        "description": model.description,
        "network": model.config.to_dict(),
        "normalization": model.normalization.to_dict(),
        "gap": model.gap,
        "threshold": model.threshold,
        # Only when not the default, so that earlier versions still read the others.
        **({"separation": model.separation} if model.separation != "seeds" else {}),
        "pixel_size": list(model.pixel_size) if model.pixel_size else None,
        "pixel_unit": model.pixel_unit,
        "object_diameter": model.object_diameter,
        "training": model.training,
        "history": model.history,
        "training_data": model.training_data,
        "evaluation": model.evaluation,
    }


def model_file_path(path: str | os.PathLike) -> Path:
    """The file a model given ``path`` is written to: ``.safetensors`` appended when it has no suffix.

    Raises:
        ModelFileError: If ``path`` (or that file) is a folder, or ends in another suffix:
            a model written under another name could replace an image or a label file.
    """
    path = Path(path).expanduser()
    if path.name.lower() == MODEL_SUFFIX:  # a hidden file, not a name with the suffix
        raise ModelFileError(f"give the model file a name before {MODEL_SUFFIX}, as in model{MODEL_SUFFIX}")
    if path.suffix and path.suffix.lower() != MODEL_SUFFIX:
        raise ModelFileError(f"a model file needs a name ending in {MODEL_SUFFIX}, not {path.name}")
    if path.is_dir() or path.with_suffix(MODEL_SUFFIX).is_dir():
        raise ModelFileError(f"{path} is a folder; give the model file's name")
    return path if path.suffix else path.with_suffix(MODEL_SUFFIX)


def save_model(model: Model | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: The model to save, or an embedded model's name or a model file's path.
        path: Target file, ending in ``.safetensors`` (appended when it has no suffix).

    Raises:
        ModelFileError: If ``path`` is a folder or ends in another suffix.

    Returns:
        The path written.
    """
    from safetensors.torch import save

    from .registry import as_model  # imports this module: imported here

    model = as_model(model)  # a model by name too, as everywhere a model is taken
    path = model_file_path(path)
    made_folder(path.parent)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.network.state_dict().items()}
    header = {_HEADER_KEY: json.dumps(model_metadata(model))}
    # Written through a file opened here: safetensors' own save_file makes a file that
    # only its owner may read.
    with replaced_atomically(path) as temporary, open(temporary, "wb") as file:
        file.write(save(tensors, metadata=header))
        file.flush()
        os.fsync(file.fileno())
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a model file, without reading its weights.

    Raises:
        ModelFileError: If the file is missing, unreadable or not a napari-unet model.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors reports corruption with several types
        raise ModelFileError(f"{path} is not a readable model file (corrupt, truncated or another format)") from error
    try:
        metadata = json.loads(header[_HEADER_KEY])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path} is a safetensors file but not a napari-unet model") from error
    return check_metadata(metadata, path, "a safetensors file")


def check_metadata(metadata, source: str | os.PathLike, container: str) -> dict:
    """``metadata`` itself, once it is known to be a napari-unet model's that this version reads.

    Args:
        metadata: What a model file's header or a package's configuration holds.
        source: The file it came from, for the messages.
        container: What that file is ("a safetensors file"), for the message that it
            holds no napari-unet model.

    Raises:
        ModelFileError: If it is not a napari-unet model's, or a newer napari-unet's.
    """
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{source} is {container} but not a napari-unet model")
    if not isinstance(metadata.get("format_version"), int):
        raise ModelFileError(f"{source} has a damaged header (no format version)")
    if metadata["format_version"] > FORMAT_VERSION:
        raise ModelFileError(
            f"{source} was written by a newer napari-unet ({metadata.get('package_version')}); please upgrade"
        )
    return metadata


def recorded_threshold(metadata: dict, path: str | os.PathLike = "the model file") -> float:
    """The post-processing threshold in a model file's metadata (0.5 in files that predate it).

    Raises:
        ModelFileError: If the recorded value is not a probability.
    """
    threshold = metadata.get("threshold", 0.5)
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise ModelFileError(f"{path} has a damaged header (post-processing threshold {threshold!r})")
    return float(threshold)


def load_model_file(path: str | os.PathLike) -> Model:
    """Load a model file written by :func:`save_model`.

    Raises:
        ModelFileError: If the file is missing, corrupt, truncated, not a napari-unet
            model, or its weights do not fit its architecture.
    """
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as error:  # safetensors reports corruption with several types
        raise ModelFileError(f"{path} is damaged: its weights cannot be read") from error
    return model_from_metadata(metadata, tensors, path)


def model_from_metadata(metadata: dict, tensors: dict, path: str | os.PathLike) -> Model:
    """The :class:`Model` that ``metadata`` (see :func:`model_metadata`) and the weights ``tensors`` describe.

    Args:
        metadata: The model's metadata, checked by :func:`check_metadata`.
        tensors: The network's state dict: parameter names to CPU tensors.
        path: The file both came from, for the messages.

    Raises:
        ModelFileError: If a value is missing, mistyped or impossible, or the weights do
            not fit the architecture.
    """
    try:
        config = NetworkConfig.from_dict(metadata["network"])
        normalization = Normalization.from_dict(metadata["normalization"])
    except Exception as error:  # missing, mistyped or impossible values
        raise ModelFileError(f"{path} has a damaged header (its network or normalization: {error})") from error
    network = UNet(config)
    # Compared here rather than by a strict load, whose error lists every tensor name.
    expected = network.state_dict()
    missing = [key for key in expected if key not in tensors]
    unexpected = [key for key in tensors if key not in expected]
    reshaped = [key for key, value in expected.items() if key in tensors and tensors[key].shape != value.shape]
    if missing or unexpected or reshaped:
        raise ModelFileError(f"{path} is damaged: its weights do not match its architecture ({len(missing)} "
                             f"missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape)")
    network.load_state_dict(tensors)
    pixel_size = _field(metadata, "pixel_size", (list, type(None)), path)
    if pixel_size is not None and not (len(pixel_size) == 2 and all(_is_number(v) and v > 0 for v in pixel_size)):
        raise ModelFileError(f"{path} has a damaged header (pixel size {pixel_size!r})")
    diameter = _field(metadata, "object_diameter", (int, float, type(None)), path)
    if diameter is not None and not (_is_number(diameter) and diameter > 0):
        raise ModelFileError(f"{path} has a damaged header (object diameter {diameter!r})")
    gap = _field(metadata, "gap", int, path, 1)
    if isinstance(gap, bool) or gap < 0:
        raise ModelFileError(f"{path} has a damaged header (gap {gap!r})")
    separation = _field(metadata, "separation", str, path, "seeds")
    if separation not in SEPARATIONS:
        raise ModelFileError(f"{path} has a damaged header (separation {separation!r}: napari-unet knows "
                             f"{', '.join(SEPARATIONS)}; a newer version may have written it)")
    return Model(
        network=network,
        normalization=normalization,
        gap=gap,
        threshold=recorded_threshold(metadata, path),
        separation=separation,
        name=_field(metadata, "name", str, path, ""),
        description=_field(metadata, "description", str, path, ""),
        pixel_size=tuple(float(v) for v in pixel_size) if pixel_size else None,
        pixel_unit=_field(metadata, "pixel_unit", str, path, ""),
        object_diameter=float(diameter) if diameter is not None else None,
        history=list(_field(metadata, "history", list, path, [])),
        training=dict(_field(metadata, "training", dict, path, {})),
        training_data=_field(metadata, "training_data", str, path, ""),
        evaluation=dict(_field(metadata, "evaluation", dict, path, {})),
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(metadata: dict, key: str, kind, path: str | os.PathLike, default=None):
    """``metadata[key]`` (``default`` when absent), which must be of ``kind``.

    Raises:
        ModelFileError: If the value has another type (a damaged or hand-edited header).
    """
    value = metadata.get(key, default)
    if not isinstance(value, kind):
        raise ModelFileError(f"{path} has a damaged header ({key} {value!r})")
    return value
